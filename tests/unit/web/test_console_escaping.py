"""Attacker-controlled text in the console's pages: element text, attribute values, URLs and
the JSON blocks scripts read all carry it as data, never as markup."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from streamscore.config import load_settings
from streamscore.web.console.app import Console, lead_url, script_json
from streamscore.web.console.queue import QueueRow, TierQueue
from tests.conftest import RULES_FILE

HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "</script><script>alert(3)</script>",
    "<!--",
    "' onmouseover='alert(4)",
    "a&b=c#d?e/f%2F+g",
    "javascript:alert(5)",
]
TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)


class Page(HTMLParser):
    """The tags, attributes and text of a page, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.script_bodies: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        (self.script_bodies if self._in_script else self.text).append(data)


@given(st.one_of(st.sampled_from(HOSTILE), TEXT))
def test_json_for_scripts_cannot_end_its_block(value: str) -> None:
    block = script_json(json.dumps({"lead": value}))
    assert "<" not in block and ">" not in block and "&" not in block
    assert json.loads(str(block)) == {"lead": value}


@given(st.one_of(st.sampled_from(HOSTILE), TEXT))
def test_a_lead_url_carries_any_id_back_unchanged(lead_id: str) -> None:
    url = lead_url(lead_id)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("", "", "/lead")
    assert parse_qs(parts.query, keep_blank_values=True)["id"] == [lead_id]


def test_the_queue_page_shows_hostile_ids_and_accounts_as_text() -> None:
    console = Console(load_settings(rules_file=RULES_FILE), require_token=False)
    rows = tuple(
        QueueRow(lead, 100.0 - i, 60.0, 40.0, "A", 2, lead, None, True, False)
        for i, lead in enumerate(HOSTILE)
    )
    response = console.render(
        make_mocked_request("GET", "/"),
        "queue.html",
        tiers=[TierQueue("hot", 90.0, rows)],
        refresh_s=30.0,
        live=False,
        handoff_tier="hot",
    )
    assert response.text is not None
    page = Page()
    page.feed(response.text)
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert scripts == [{"src": console.assets.console_js.url, "defer": None}]
    assert not any(tag in ("img", "svg", "iframe") for tag, _ in page.tags)
    assert [attrs["data-lead-id"] for tag, attrs in page.tags if "data-lead-id" in attrs] == HOSTILE
    links = [attrs["href"] for tag, attrs in page.tags if tag == "a" and "href" in attrs]
    assert [lead_url(lead) for lead in HOSTILE] == [h for h in links if h and h.startswith("/lead")]
    for lead in HOSTILE:
        assert page.text.count(lead) == 2  # the link's text and the account cell
    assert not any(" on" in name or name.startswith("on") for _, a in page.tags for name in a)
