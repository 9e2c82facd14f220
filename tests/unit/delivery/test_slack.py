"""The Slack message: every handoff value escaped as mrkdwn requires, within Slack's limits."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streamscore.delivery.slack import (
    ELLIPSIS,
    FIELD_TEXT_MAX,
    HEADER_TEXT_MAX,
    SECTION_TEXT_MAX,
    clip_escaped,
    escape_mrkdwn,
    slack_message,
    unescape_mrkdwn,
)
from streamscore.events import compile_schema

#: Slack's rule: in message text, exactly these three characters are control characters.
SLACK_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
#: Escaped text: no raw < or >, and every & opens one of the three entities.
WELL_ESCAPED = re.compile(r"^(?:[^&<>]|&amp;|&lt;|&gt;)*$", re.DOTALL)

HOSTILE = [
    "<!channel>",
    "<!here|here>",
    "<@U012AB3CD>",
    "<https://evil.example|click>",
    "&amp;",
    "&",
    "*b*",
    "_i_",
    "`c`",
    "\n",
]
hostile_text = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=12)), max_size=6).map(
    "".join
)
tier = hostile_text.filter(lambda s: 1 <= len(s) <= 64)


def reference_escape(text: str) -> str:
    """Character by character, from Slack's table."""
    return "".join(SLACK_ESCAPES.get(c, c) for c in text)


@st.composite
def handoffs(draw: st.DrawFn) -> dict[str, Any]:
    """Handoffs valid against schemas/handoff.v1, with hostile strings where strings go."""
    bant = {c: draw(st.booleans()) for c in ("budget", "authority", "need", "timeline")}
    number = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
    doc = {
        "handoff_id": draw(hostile_text.filter(lambda s: 1 <= len(s) <= 128)),
        "lead_id": draw(
            hostile_text.filter(lambda s: 1 <= len(s) <= 256) | st.text(min_size=256, max_size=256)
        ),
        "score": draw(number),
        "engagement": draw(number),
        "fit": draw(number),
        "grade": draw(st.sampled_from("ABCD")),
        "old_tier": draw(tier),
        "new_tier": draw(tier),
        "bant": bant,
        "bant_met": sum(bant.values()),
        "reasons": draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "rule": hostile_text.filter(bool) | st.text(min_size=300, max_size=400),
                        "points": number,
                    }
                ),
                max_size=3,
            )
        ),
        "triggering_event_id": None,
        "event_time": "2024-05-01T12:00:00Z",
        "scored_at": "2024-05-01T12:00:00.250Z",
        "rules_version": draw(hostile_text.filter(bool) | st.text(min_size=3000, max_size=3100)),
        "schema": "streamscore.handoff.v1",
    }
    compile_schema("handoff.v1.json")(doc)
    return doc


def mrkdwn_texts(message: dict[str, Any]) -> Iterator[tuple[str, int]]:
    """Every mrkdwn text of the message with Slack's limit on it."""
    yield message["text"], 40_000
    for block in message["blocks"]:
        if "text" in block and block["text"]["type"] == "mrkdwn":
            yield block["text"]["text"], SECTION_TEXT_MAX
        for item in block.get("fields", []):
            yield item["text"], FIELD_TEXT_MAX
        for element in block.get("elements", []):
            yield element["text"], SECTION_TEXT_MAX


@given(st.text())
def test_escape_matches_slacks_table(text: str) -> None:
    escaped = escape_mrkdwn(text)
    assert escaped == reference_escape(text)
    assert WELL_ESCAPED.match(escaped)
    assert unescape_mrkdwn(escaped) == text


@given(text=st.text(alphabet=st.sampled_from("a&<>;"), max_size=60), limit=st.integers(2, 70))
def test_clipping_never_splits_an_entity(text: str, limit: int) -> None:
    escaped = escape_mrkdwn(text)
    clipped = clip_escaped(escaped, limit)
    assert len(clipped) <= limit
    if len(escaped) <= limit:
        assert clipped == escaped
    else:
        assert clipped.endswith(ELLIPSIS)
        kept = clipped.removesuffix(ELLIPSIS)
        assert escaped.startswith(kept)
        assert WELL_ESCAPED.match(kept)
        assert text.startswith(unescape_mrkdwn(kept))


@given(handoffs())
def test_every_text_is_escaped_and_within_slacks_limits(handoff: dict[str, Any]) -> None:
    message = slack_message(handoff)
    json.dumps(message)  # the payload is plain JSON
    for text, limit in mrkdwn_texts(message):
        assert len(text) <= limit
        assert WELL_ESCAPED.match(text), text
    header = message["blocks"][0]["text"]
    assert header["type"] == "plain_text" and len(header["text"]) <= HEADER_TEXT_MAX
    fields = message["blocks"][1]["fields"]
    assert len(fields) <= 10  # Slack's limit on a section's fields


@given(handoffs())
def test_the_message_carries_what_sales_needs(handoff: dict[str, Any]) -> None:
    message = slack_message(handoff)
    fields = {
        f["text"].split("\n", 1)[0]: f["text"].split("\n", 1)[1]
        for f in message["blocks"][1]["fields"]
    }
    assert set(fields) == {
        "*Lead*",
        "*Score*",
        "*Tier*",
        "*Grade*",
        "*BANT met*",
        "*Rules version*",
    }
    lead = fields["*Lead*"]
    if not lead.endswith(ELLIPSIS):
        assert unescape_mrkdwn(lead) == handoff["lead_id"]
    assert fields["*Score*"].startswith(f"{handoff['score']:.1f} ")
    assert unescape_mrkdwn(fields["*Grade*"]) == handoff["grade"]
    assert fields["*BANT met*"].startswith(f"{handoff['bant_met']}/4")
    version = fields["*Rules version*"]
    assert handoff["rules_version"].startswith(unescape_mrkdwn(version.removesuffix(ELLIPSIS)))
    reasons = message["blocks"][2]["text"]["text"]
    for reason in handoff["reasons"]:
        assert f"{reason['points']:+.1f}" in reasons
        assert escape_mrkdwn(reason["rule"][:40]) in reasons
    assert escape_mrkdwn(handoff["handoff_id"]) in message["blocks"][3]["elements"][0]["text"]


def test_a_mention_or_link_in_a_lead_id_stays_text() -> None:
    doc = {
        "handoff_id": "h-1", "lead_id": "<!channel> & <https://evil.example|click>",
        "score": 90.0, "engagement": 60.0, "fit": 30.0, "grade": "A", "old_tier": "warm",
        "new_tier": "<hot>", "bant": {"budget": True, "authority": False, "need": True,
        "timeline": False}, "bant_met": 2, "reasons": [{"rule": "pricing<page>", "points": 20}],
        "triggering_event_id": "e1", "event_time": "2024-05-01T12:00:00Z",
        "scored_at": "2024-05-01T12:00:00Z", "rules_version": "v&1",
        "schema": "streamscore.handoff.v1",
    }  # fmt: skip
    text = json.dumps(slack_message(doc))
    for raw in ("<!channel>", "<https://evil.example|click>", "<hot>", "<page>", "v&1"):
        assert raw not in text
        assert reference_escape(raw) in text
