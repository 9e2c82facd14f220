"""The stylesheet plotly.js would inject, served as a file instead (a strict CSP refuses it)."""

from __future__ import annotations

import pytest
from plotly.offline import get_plotlyjs

from streamscore.web.console.assets import AssetError, plotly_css, style_guard_ids

SNIPPET = (
    """var q={"X,X div":'font-family:"Open Sans",verdana;margin:0;',"X a:hover":"x:y;","""
    """Y:'right:20px;',"X .it\\'s":'content:\\'a\\';',",Y .z":"a:b;"};for(k in q)addStyleRule();"""
    """if(!document.getElementById("abc123")){var e=document.createElement("style")"""
)


def test_the_table_is_expanded_as_plotly_expands_it() -> None:
    assert plotly_css(SNIPPET).splitlines() == [
        '.js-plotly-plot .plotly,.js-plotly-plot .plotly div{font-family:"Open Sans",verdana;'
        "margin:0;}",
        ".js-plotly-plot .plotly a:hover{x:y;}",
        ".plotly-notifier{right:20px;}",
        ".js-plotly-plot .plotly .it's{content:'a';}",
        " ,.plotly-notifier .z{a:b;}",
    ]
    assert style_guard_ids(SNIPPET) == ("abc123",)


def test_a_bundle_without_the_table_fails_loudly() -> None:
    with pytest.raises(AssetError):
        plotly_css("var nothing = 1;")
    with pytest.raises(AssetError):
        plotly_css('{"X,X div": 12}')


def test_the_installed_plotly_yields_its_stylesheet() -> None:
    """The browser test compares it rule by rule with what plotly.js injects itself."""
    css = plotly_css(get_plotlyjs())
    assert ".js-plotly-plot .plotly .modebar{" in css
    assert ".js-plotly-plot .plotly .main-svg{" in css
    assert len(css.splitlines()) > 40
    assert "X" not in css.replace("X-", "").split("{")[0]  # the shorthand is gone
