"""The console's static files: its CSS and JavaScript, and plotly.js from the installed package.

Nothing is fetched from a CDN: plotly.js is served from the plotly package, under a URL that
names its version, so a browser may cache it for good. plotly.js injects its own stylesheet at
run time (a <style> element), which a strict Content-Security-Policy (style-src 'self') refuses;
plotly skips the injection when the page already has an element of that id marked
`no-inline-styles`, so the console extracts the same rules from the bundle once and serves them
as a stylesheet under that id (plotly_css). plotly.js also adds the stylesheet of its map
traces unless an element of that stylesheet's id exists: the console's pages hold an empty one
(style_guard_ids), since they draw no maps. And it draws a heatmap's cells as an image with one
fixed style attribute (pixelated scaling): the policy allows that one value by its hash
(style_attribute_hashes), and no other style attribute.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Final

import plotly
from plotly.offline import get_plotlyjs

from streamscore.outcomes.report import CSS as REPORT_CSS

#: The id plotly.js looks for before it injects its global stylesheet.
PLOTLY_STYLE_ID: Final = "plotly.js-style-global"
#: Where plotly's style table starts in the bundle: {"X,X div": ..., ...}.
_TABLE_START: Final = '{"X,X div":'
_STRING: Final = r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"""
_ENTRY: Final = re.compile(rf"\s*({_STRING}|[A-Za-z_$][\w$]*)\s*:\s*({_STRING})\s*([,}}])")
#: A stylesheet plotly.js adds on load unless an element of its id exists.
_GUARDED_STYLE: Final = re.compile(
    r'if\(!document\.getElementById\("([^"]+)"\)\)\{var [\w$]+=document\.createElement\("style"\)'
)


#: The image-rendering declarations plotly.js writes as a heatmap image's style attribute.
_PIXELATED: Final = re.compile(r"CSS_DECLARATIONS=(\[\[[^;]*?\]\]);")


class AssetError(Exception):
    """The installed plotly.js is not shaped as this module expects (a newer plotly?)."""


def _js_string(literal: str) -> str:
    """The value of a JavaScript string literal (or a bare identifier key)."""
    if literal[0] not in "\"'":
        return literal
    # As a JSON string: \' becomes ', other escapes stay, a bare " (single quotes) is escaped.
    body = re.sub(
        r'\\(.)|"',
        lambda m: ("'" if m[1] == "'" else m[0]) if m[1] is not None else '\\"',
        literal[1:-1],
    )
    value: str = json.loads(f'"{body}"')
    return value


def plotly_css(bundle: str) -> str:
    """The stylesheet plotly.js would inject (its `X`/`Y` selector table, expanded)."""
    start = bundle.find(_TABLE_START)
    if start < 0:
        raise AssetError("plotly.js: its style table was not found")
    rules = []
    at = start + 1
    while True:
        entry = _ENTRY.match(bundle, at)
        if entry is None:
            raise AssetError(f"plotly.js: unexpected style table entry at {at}")
        selector, declarations = _js_string(entry[1]), _js_string(entry[2])
        # The expansion plotly.js applies before addStyleRule (src/css/plotcss.js).
        selector = re.sub(r"^,", " ,", selector)
        selector = selector.replace("X", ".js-plotly-plot .plotly").replace("Y", ".plotly-notifier")
        rules.append(f"{selector}{{{declarations}}}")
        at = entry.end()
        if entry[3] == "}":
            return "\n".join(rules) + "\n"


def style_guard_ids(bundle: str) -> tuple[str, ...]:
    """Ids of the stylesheets plotly.js adds on load unless an element of that id exists."""
    return tuple(dict.fromkeys(_GUARDED_STYLE.findall(bundle)))


def style_attribute_hashes(bundle: str) -> tuple[str, ...]:
    """CSP hashes ('sha256-...') of the style attribute values plotly.js sets (heatmap cells)."""
    found = _PIXELATED.search(bundle)
    if found is None:
        return ()
    declarations = json.loads(found[1])
    # plotly.js: CSS_DECLARATIONS.map(d => d.join(": ") + "; ").join("")
    value = "".join(f"{name}: {setting}; " for name, setting in declarations)
    digest = base64.b64encode(hashlib.sha256(value.encode()).digest()).decode()
    return (f"'sha256-{digest}'",)


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file: its body, gzipped body, content type and versioned URL."""

    url: str
    content_type: str
    body: bytes
    gzipped: bytes


def _asset(name: str, content_type: str, body: bytes) -> Asset:
    stem, _, suffix = name.rpartition(".")
    digest = hashlib.sha256(body).hexdigest()[:12]
    # mtime=0: the same bytes every start, so an ETag-less cache stays valid.
    return Asset(
        f"/static/{stem}.{digest}.{suffix}",
        content_type,
        body,
        gzip.compress(body, compresslevel=6, mtime=0),
    )


class Assets:
    """Every static file of the console, built once per process (plotly.js is ~5 MB)."""

    @cached_property
    def _bundle(self) -> str:
        bundle: str = get_plotlyjs()
        return bundle

    @cached_property
    def plotly_js(self) -> Asset:
        """plotly.min.js of the installed plotly package."""
        return _asset(
            f"plotly-{plotly.__version__}.js", "application/javascript", self._bundle.encode()
        )

    @cached_property
    def plotly_css(self) -> Asset:
        """plotly.js's own stylesheet, served instead of injected."""
        return _asset("plotly.css", "text/css", plotly_css(self._bundle).encode())

    @cached_property
    def guard_ids(self) -> tuple[str, ...]:
        """Ids of empty elements a page holds so that plotly.js injects no stylesheet."""
        return style_guard_ids(self._bundle)

    @cached_property
    def style_hashes(self) -> tuple[str, ...]:
        """CSP hashes of the style attribute values plotly.js sets."""
        return style_attribute_hashes(self._bundle)

    @cached_property
    def console_css(self) -> Asset:
        """The outcomes report's styles, then the console's own."""
        own = (resources.files(__package__) / "static" / "console.css").read_text("utf-8")
        return _asset("console.css", "text/css", (REPORT_CSS + own).encode())

    @cached_property
    def console_js(self) -> Asset:
        """The console's script: charts, the queue's live updates."""
        body = (resources.files(__package__) / "static" / "console.js").read_bytes()
        return _asset("console.js", "application/javascript", body)

    def all(self) -> list[Asset]:
        """Every asset (builds them all, and what is derived from plotly.js)."""
        _ = self.guard_ids, self.style_hashes
        return [self.plotly_js, self.plotly_css, self.console_css, self.console_js]
