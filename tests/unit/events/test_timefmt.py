"""The one time format: format_time_ms and parse_time_ms against calendar arithmetic, and
parse_event's inline copy of the parser held to the same results."""

from __future__ import annotations

import re
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamscore.errors import InvalidEvent
from streamscore.events import RFC3339_PATTERN, Limits, format_time_ms, parse_time_ms
from streamscore.events.envelope import event_time_ms

MIN_MS = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write
DAY_MS = 86_400_000
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
PROPERTY = settings(max_examples=300, deadline=None, database=None)


def reference_text(ms: int, offset_min: int = 0, extra_digits: str = "") -> str:
    """The instant `ms` written in local time at `offset_min`, from day and clock arithmetic."""
    days, clock_ms = divmod(ms + offset_min * 60_000, DAY_MS)
    day = date.fromordinal(EPOCH_ORDINAL + days)
    hour, rest = divmod(clock_ms, 3_600_000)
    minute, rest = divmod(rest, 60_000)
    second, milli = divmod(rest, 1000)
    if offset_min:
        sign = "+" if offset_min > 0 else "-"
        zone = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    else:
        zone = "Z"
    return (
        f"{day.year:04d}-{day.month:02d}-{day.day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
        f".{milli:03d}{extra_digits}{zone}"
    )


@PROPERTY
@given(ms=st.integers(MIN_MS, MAX_MS))
def test_format_is_the_calendar_reference(ms: int) -> None:
    text = format_time_ms(ms)
    assert text == reference_text(ms)
    assert re.match(RFC3339_PATTERN, text)


@PROPERTY
@given(ms=st.integers(0, MAX_MS))
def test_parse_inverts_format(ms: int) -> None:
    assert parse_time_ms(format_time_ms(ms)) == ms


# Local times that stay within years 1..9999 whatever the offset.
@PROPERTY
@given(
    ms=st.integers(MIN_MS + DAY_MS, MAX_MS - DAY_MS),
    offset_min=st.integers(-(23 * 60 + 59), 23 * 60 + 59),
    extra_digits=st.text("0123456789", max_size=6),
)
def test_parse_applies_the_offset_and_floors_sub_milliseconds(
    ms: int, offset_min: int, extra_digits: str
) -> None:
    assert parse_time_ms(reference_text(ms, offset_min, extra_digits)) == ms


def test_examples() -> None:
    assert format_time_ms(0) == "1970-01-01T00:00:00.000Z"
    assert format_time_ms(1_760_000_000_123) == "2025-10-09T08:53:20.123Z"
    assert format_time_ms(-1) == "1969-12-31T23:59:59.999Z"
    assert parse_time_ms("2024-05-01T12:00:00Z") == 1_714_564_800_000
    assert parse_time_ms("2024-05-01T14:00:00.5+02:00") == 1_714_564_800_500


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2024-05-01T12:00:00", "no timezone"),
        ("2024-02-30T12:00:00Z", "day is out of range for month"),
        ("yesterday", "Invalid isoformat string"),
    ],
)
def test_parse_rejects_with_value_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_time_ms(text)


ANY_TIME = Limits(max_future_skew_ms=10**16, max_age_ms=10**16)
times = st.one_of(
    st.builds(
        reference_text,
        st.integers(MIN_MS + DAY_MS, MAX_MS - DAY_MS),
        st.integers(-(23 * 60 + 59), 23 * 60 + 59),
        st.text("0123456789", max_size=6),
    ),
    st.builds(lambda ms: reference_text(ms)[:-1], st.integers(0, MAX_MS)),  # no timezone
    st.text("0123456789-:T.Z+ ", max_size=32),
)


@PROPERTY
@given(text=times)
def test_parse_events_inline_parser_agrees_with_parse_time_ms(text: str) -> None:
    try:
        expected = parse_time_ms(text)
    except ValueError as exc:
        with pytest.raises(InvalidEvent) as info:
            event_time_ms(text, "time", 0, ANY_TIME)
        assert (info.value.reason, info.value.detail) == ("bad_time", f"time: {exc}")
    else:
        assert event_time_ms(text, "time", 0, ANY_TIME) == expected
