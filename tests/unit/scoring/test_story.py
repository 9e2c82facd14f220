"""A lead's story keeps its latest moments, survives the codec, and reads back as it was told."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamscore.scoring.state import new_lead
from streamscore.scoring.story import STORY_KINDS, StoryItem, items, record
from streamscore.store.codec import decode_lead, encode_lead

MOMENTS = st.lists(
    st.tuples(
        st.integers(0, 2**41),
        st.sampled_from(STORY_KINDS),
        st.text(min_size=0, max_size=20),
        st.floats(-1000, 1000, allow_nan=False),
    ),
    max_size=40,
)


@given(moments=MOMENTS, keep=st.integers(0, 15))
def test_the_story_keeps_the_latest_moments_in_order(
    moments: list[tuple[int, str, str, float]], keep: int
) -> None:
    state = new_lead("x")
    for t, kind, label, score in moments:
        record(state, t, kind, label, score, keep)  # type: ignore[arg-type]
    expected = [
        StoryItem(t, kind, label, round(score * 10) / 10)  # type: ignore[arg-type]
        for t, kind, label, score in moments
    ][len(moments) - min(keep, len(moments)) :]
    assert items(state) == expected
    assert items(decode_lead(encode_lead(state))) == expected


def test_nothing_is_kept_when_the_story_is_off() -> None:
    state = new_lead("x")
    record(state, 1, "event", "page_view", 3.0, 0)
    assert state.story is None and items(state) == []
