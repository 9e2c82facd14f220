"""The Slack incoming-webhook message for a handoff: `text` for notifications plus `blocks`.

Every value taken from the handoff is escaped as Slack's mrkdwn requires (`&` -> `&amp;`,
`<` -> `&lt;`, `>` -> `&gt;`, and nothing else): a lead id such as `<!channel>` or
`<https://evil.example|click>` must show as text, not ping a channel or become a link. Slack has
no escape for its formatting characters (`*`, `_`, `~`, backtick), so a value containing them
may render emphasised; it cannot inject a mention or a link. Texts are clipped to Slack's
block limits, never inside an entity. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

#: Slack's limits on block texts (Block Kit reference): section text 3000, a field 2000,
#: header (plain_text) 150. The fallback `text` is kept well under its 40,000 as well.
SECTION_TEXT_MAX: Final = 3000
FIELD_TEXT_MAX: Final = 2000
HEADER_TEXT_MAX: Final = 150
FALLBACK_TEXT_MAX: Final = 3000
#: A reason's rule id is cut to this many characters before escaping, so three always fit.
RULE_ID_MAX: Final = 200
ELLIPSIS: Final = "…"

_ENTITIES: Final = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"))


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters Slack treats as control characters in message text."""
    # `&` first, or the `&` of the other entities would be escaped again.
    for raw, entity in _ENTITIES:
        text = text.replace(raw, entity)
    return text


def unescape_mrkdwn(text: str) -> str:
    """The inverse of escape_mrkdwn (for tests and receivers)."""
    for raw, entity in reversed(_ENTITIES):
        text = text.replace(entity, raw)
    return text


def clip_escaped(text: str, limit: int) -> str:
    """Cut escaped text to at most `limit` characters, ending with an ellipsis when cut, and
    never leaving half an entity (`&am`) at the cut."""
    if len(text) <= limit:
        return text
    cut = text[: limit - len(ELLIPSIS)]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + ELLIPSIS


def _number(value: Any) -> str:
    return f"{float(value):.1f}"


def _field(label: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": clip_escaped(f"*{label}*\n{value}", FIELD_TEXT_MAX)}


def slack_message(handoff: Mapping[str, Any]) -> dict[str, Any]:
    """The incoming-webhook payload for one handoff (a dict valid against schemas/handoff.v1)."""
    lead = escape_mrkdwn(str(handoff["lead_id"]))
    old_tier = escape_mrkdwn(str(handoff["old_tier"]))
    new_tier = escape_mrkdwn(str(handoff["new_tier"]))
    grade = escape_mrkdwn(str(handoff["grade"]))
    version = escape_mrkdwn(str(handoff["rules_version"]))
    bant: Mapping[str, bool] = handoff["bant"]
    met = [escape_mrkdwn(name) for name, ok in bant.items() if ok]
    bant_text = f"{int(handoff['bant_met'])}/{len(bant)}" + (f" ({', '.join(met)})" if met else "")
    reasons = [
        f"• {escape_mrkdwn(str(r['rule'])[:RULE_ID_MAX])} {float(r['points']):+.1f}"
        for r in handoff["reasons"]
    ]
    score = _number(handoff["score"])
    fallback = (
        f"Lead {lead} handed to sales: score {score}, tier {new_tier}, grade {grade}, "
        f"BANT {bant_text}"
    )
    context = (
        f"handoff {escape_mrkdwn(str(handoff['handoff_id']))} · "
        f"event {escape_mrkdwn(str(handoff['event_time']))} · "
        f"scored {escape_mrkdwn(str(handoff['scored_at']))}"
    )
    return {
        "text": clip_escaped(fallback, FALLBACK_TEXT_MAX),
        "blocks": [
            {
                "type": "header",
                # plain_text is shown as is: no mrkdwn, nothing from the handoff.
                "text": {"type": "plain_text", "text": "Lead handed to sales", "emoji": False},
            },
            {
                "type": "section",
                "fields": [
                    _field("Lead", lead),
                    _field(
                        "Score",
                        f"{score} (engagement {_number(handoff['engagement'])}, "
                        f"fit {_number(handoff['fit'])})",
                    ),
                    _field("Tier", f"{old_tier} → {new_tier}"),
                    _field("Grade", grade),
                    _field("BANT met", bant_text),
                    _field("Rules version", version),
                ],
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": clip_escaped(
                        "*Top reasons*\n" + ("\n".join(reasons) or "_none_"), SECTION_TEXT_MAX
                    ),
                },
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": clip_escaped(context, SECTION_TEXT_MAX)}],
            },
        ],
    }
