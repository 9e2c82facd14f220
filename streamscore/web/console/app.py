"""The console's aiohttp application: pages, access control, security headers, static files.

Pages are rendered on the server with Jinja2, autoescaping everything: lead ids, attribute
values and rule ids are attacker-controlled text. Data for scripts (chart figures) travels in
`<script type="application/json">` blocks with <, > and & escaped, read by console.js; no page
has an inline script or style, so the Content-Security-Policy allows scripts and styles from the
console's own origin only. Every page is read-only: the simulator and the rules check compute,
they write nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

import orjson
import plotly.graph_objects as go
import plotly.io as pio
from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from streamscore.config import Settings
from streamscore.errors import ConfigError, InvalidEvent
from streamscore.events.envelope import Limits
from streamscore.events.timefmt import format_time_ms
from streamscore.events.types import EventType
from streamscore.lab.diff import Diff
from streamscore.lab.errors import LabInputError
from streamscore.lab.promote import kept_versions, promotions
from streamscore.lab.report import (
    changes_table,
    diff_summary_html,
    quality_charts,
    quality_table,
    score_chart,
    transition_chart,
)
from streamscore.outcomes.kpi import compute_kpis
from streamscore.outcomes.report import (
    CHART_CONFIG,
    NONE,
    Chart,
    cohort_charts,
    cohort_title,
    duration_text,
    notes_html,
    ordered,
    summary_html,
)
from streamscore.runtime.clock import now_ms
from streamscore.scoring.rules import GRADES, CompiledRules, check_lines
from streamscore.store.client import open_settings_client
from streamscore.store.errors import classify
from streamscore.store.keys import KeySpace
from streamscore.store.store import RedisStore
from streamscore.web.console import auth
from streamscore.web.console.assets import PLOTLY_STYLE_ID, Asset, Assets
from streamscore.web.console.labdir import candidate_rules, diff_files, list_files, read_candidate
from streamscore.web.console.lead import lead_view
from streamscore.web.console.live import HandoffFeed
from streamscore.web.console.queue import read_queue
from streamscore.web.console.rulesfile import RulesWatch
from streamscore.web.console.simulate import Simulation, event_of, parse_pasted, simulate

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SECURITY_HEADERS: Final = MappingProxyType(
    {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        # Lead ids travel in URLs: never in a Referer to another site. (Not no-referrer: then a
        # browser sends "Origin: null" on the console's own form posts.)
        "Referrer-Policy": "same-origin",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
)


def content_security_policy(style_attribute_hashes: tuple[str, ...]) -> str:
    """No inline script or style anywhere (but the style attributes of these hashes, which
    plotly.js sets); data: URIs only for images (a heatmap's cells, plotly's PNG download)."""
    style_attr = " ".join(("'unsafe-hashes'", *style_attribute_hashes))
    if not style_attribute_hashes:
        style_attr = "'none'"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"style-src-attr {style_attr}; "
        "img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


PUBLIC_PATHS: Final = frozenset({"/login", "/healthz"})
HEARTBEAT_S: Final = 15.0
#: Characters a pasted rules file or event may have (a form post is bounded by aiohttp too).
MAX_PASTE_CHARS: Final = 256 * 1024
CANDIDATE_SOURCE: Final = {"yaml": "candidate.yaml", "toml": "candidate.toml"}
NAV: Final = (("/", "Queue"), ("/kpis", "KPIs"), ("/models", "Models"), ("/rules", "Rules"))
#: How the lead page names the moments of a story that are not events.
MOMENT_KINDS: Final = MappingProxyType(
    {
        "handoff": "handed off",
        "tier": "tier change",
        "decay": "tier drop by decay",
        "outcome": "sales outcome",
        "merge": "identity merge",
        "recycle": "recycled",
        "sla": "SLA breached",
    }
)
_JSON_ESCAPES: Final = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def lead_url(lead_id: str) -> str:
    """The URL of a lead's page: its id percent-encoded in the query (any character is safe)."""
    return "/lead?id=" + quote(lead_id.encode("utf-8", "surrogatepass"), safe="")


def script_json(value: bytes | str) -> Markup:
    """JSON text made safe inside <script type="application/json">: no </script>, no <!--."""
    text = value.decode() if isinstance(value, bytes) else value
    return Markup(text.translate(_JSON_ESCAPES))


def short_time(rfc3339: str | None) -> str:
    """2026-11-20T09:15:02.123Z as people read it in a table: 2026-11-20 09:15:02."""
    if not rfc3339:
        return NONE
    return rfc3339.replace("T", " ").split(".")[0].removesuffix("Z")


def trusted(html: str) -> Markup:
    """HTML built by the outcomes report's and the lab's helpers, which escape every value."""
    return Markup(html)


def diff_html(diff: Diff) -> dict[str, Markup]:
    """The lab's diff tables as HTML for the Models page."""
    tables = {
        "summary": diff_summary_html(diff),
        "appeared": changes_table("appeared", diff.appeared),
        "disappeared": changes_table("disappeared", diff.disappeared),
    }
    if diff.quality is not None:
        tables["quality"] = quality_table(diff.quality)
    return {name: trusted(html) for name, html in tables.items()}


@dataclass(frozen=True, slots=True)
class ChartBlock:
    """A chart for a page: its element id, the sentence saying what it shows, its figure JSON."""

    div_id: str
    what: str
    data: Markup


def chart_block(name: str, what: str, figure: go.Figure) -> ChartBlock:
    """A plotly figure as a chart block console.js draws, in the element `chart-<name>`.

    The prefix keeps the reports' chart names ("tiers", "summary"...) from colliding with the
    ids of a page's own elements.
    """
    figure_json = pio.to_json(figure, validate=False, pretty=False)
    payload = f'{{"figure":{figure_json},"config":{orjson.dumps(CHART_CONFIG).decode()}}}'
    return ChartBlock(f"chart-{name}", what, script_json(payload))


def from_chart(chart: Chart) -> ChartBlock:
    """A report Chart as a chart block."""
    return chart_block(chart.div_id, chart.what, chart.figure)


class Console:
    """The handlers and what they share: settings, the store, the rules, templates, the feed."""

    def __init__(self, settings: Settings, require_token: bool = True) -> None:
        token = settings.console_token
        if token is None and require_token:
            raise ConfigError(
                "console_token is not set: the console shows personal data, so it needs a "
                "token (STREAMSCORE_CONSOLE_TOKEN, 16 characters or more). `streamscore dev` "
                "serves it without one, on 127.0.0.1 only."
            )
        self.settings = settings
        self.token = token.get_secret_value() if token is not None else None
        self.rules = RulesWatch(settings.rules_file)
        self.rules.get()  # fails fast on a rules file that was never valid
        self.assets = Assets()
        self.static: dict[str, Asset] = {}
        self.csp = content_security_policy(())
        self.feed = HandoffFeed(settings)
        self.limits = Limits.from_settings(settings)
        self._store: RedisStore | None = None
        self.templates = Environment(
            loader=PackageLoader("streamscore.web.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.globals.update(
            lead_url=lead_url,
            nav=NAV,
            grades=GRADES,
            kinds=MOMENT_KINDS,
            fit_rule_count=lambda rules: sum(len(a.fit_rules) for a in rules.attributes),
            duration=duration_text,
        )
        self.templates.filters["points"] = lambda x: f"{x:+.1f}"
        self.templates.filters["score"] = lambda x: f"{x:.1f}"
        self.templates.filters["time"] = lambda ms: short_time(format_time_ms(ms))
        self.templates.filters["short_time"] = short_time

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Open Redis, build the static files, start tailing the handoff topic."""
        s = self.settings
        # plotly.js is ~5 MB to read and gzip: off the event loop.
        assets = await asyncio.to_thread(self.assets.all)
        self.static = {a.url: a for a in assets}
        self.csp = content_security_policy(self.assets.style_hashes)
        client = await open_settings_client(s)
        self._store = RedisStore(client, KeySpace(s.redis_key_prefix, s.redis_key_groups))
        self.feed.start()

    async def stop(self) -> None:
        """End the live streams, stop the feed, close Redis."""
        await self.feed.stop()
        if self._store is not None:
            await self._store.close()
            self._store = None

    @property
    def store(self) -> RedisStore:
        """The Redis store (open between start and stop)."""
        if self._store is None:
            raise RuntimeError("the console has not started")
        return self._store

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        """Bound a page's Redis reads: a hung Redis is a 503, not a page that never loads."""
        async with asyncio.timeout(self.settings.redis_timeout_s * 2):
            yield

    # ------------------------------------------------------------ rendering

    def render(
        self, request: web.Request, template: str, status: int = 200, **values: Any
    ) -> web.Response:
        """A page from its template, with the layout's values."""
        rules_file = self.rules.get()
        values.setdefault("charts", False)
        values.setdefault("bare", False)
        page = self.templates.get_template(template).render(
            path=request.path,
            assets=self.assets_urls(),
            guard_ids=self.assets.guard_ids,
            plotly_style_id=PLOTLY_STYLE_ID,
            protected=self.token is not None,
            rules_version=rules_file.rules.version,
            rules_problems=rules_file.problems,
            **values,
        )
        response = web.Response(text=page, content_type="text/html", status=status)
        # Personal data: no shared cache keeps a copy, and the browser's back button refetches.
        response.headers["Cache-Control"] = "no-store"
        return response

    def assets_urls(self) -> dict[str, str]:
        """The versioned URL of each static file."""
        a = self.assets
        return {
            "plotly_js": a.plotly_js.url,
            "plotly_css": a.plotly_css.url,
            "console_css": a.console_css.url,
            "console_js": a.console_js.url,
        }

    # ------------------------------------------------------------ middleware

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Cross-site posts refused, the token enforced, Redis failures as a 503 page."""
        if request.method == "POST" and not same_origin(request):
            return web.Response(status=403, text="cross-site request refused")
        if not self.allowed(request):
            if request.method == "GET" and request.path != "/events":
                target = request.path_qs if request.path != "/" else "/"
                raise web.HTTPSeeOther("/login?" + urlencode({"next": target}))
            return web.Response(
                status=401,
                text="unauthorized: log in, or send the console token as a bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="streamscore console"'},
            )
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            # The one broad handler: a Redis failure is a 503 page and one log line; anything
            # else is a bug and goes up to aiohttp (a 500, with its traceback in the log).
            if not isinstance(exc, TimeoutError) and classify(exc) is None:
                raise
            log.warning("console %s %s: Redis failed: %r", request.method, request.path, exc)
            return self.render(
                request,
                "error.html",
                status=503,
                title="Redis unavailable",
                message="The console cannot read Redis right now. Try again in a moment.",
            )

    def allowed(self, request: web.Request) -> bool:
        """Whether the request may see the console (always, without a token: `dev`)."""
        if self.token is None or request.path in PUBLIC_PATHS:
            return True
        if request.path.startswith("/static/"):
            return True
        if auth.token_matches(self.token, auth.bearer(request.headers.get("Authorization"))):
            return True
        return auth.session_valid(self.token, request.cookies.get(auth.COOKIE), time.time())

    # ------------------------------------------------------------ access

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        """The login form (straight on to the queue when no token is needed)."""
        target = auth.local_path(request.query.get("next"))
        if self.token is None:
            raise web.HTTPSeeOther(target)
        return self.render(request, "login.html", next=target, failed=False, bare=True)

    async def login(self, request: web.Request) -> web.StreamResponse:
        """Check the token; on success set the session cookie and go on."""
        form = await request.post()
        target = auth.local_path(_text(form.get("next")))
        if self.token is None:
            raise web.HTTPSeeOther(target)
        if not auth.token_matches(self.token, _text(form.get("token"))):
            log.warning("console: a login with a wrong token from %s", request.remote)
            return self.render(
                request, "login.html", status=401, next=target, failed=True, bare=True
            )
        ttl = self.settings.console_session_s
        response = web.HTTPSeeOther(target)
        response.set_cookie(
            auth.COOKIE,
            auth.session_value(self.token, int(time.time()) + ttl),
            max_age=ttl,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=is_https(request),
        )
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """Forget the session cookie."""
        response = web.HTTPSeeOther("/login")
        response.del_cookie(auth.COOKIE, path="/")
        raise response

    # ------------------------------------------------------------ pages

    async def queue_page(self, request: web.Request) -> web.StreamResponse:
        """The leads of each tier above the first, by score now."""
        rules = self.rules.get().rules
        async with self.reading():
            tiers = await read_queue(self.store, rules, now_ms(), self.settings.console_queue_size)
        return self.render(
            request,
            "queue.html",
            tiers=tiers,
            refresh_s=self.settings.console_refresh_s,
            live=self.feed.connected,
            handoff_tier=rules.tiers[rules.handoff_tier].name,
        )

    async def lead_page(self, request: web.Request) -> web.StreamResponse:
        """One lead: chart, contributions, story, attributes, BANT."""
        lead_id = request.query.get("id", "")
        if not lead_id:
            raise web.HTTPSeeOther("/")
        rules = self.rules.get().rules
        async with self.reading():
            state = await self.store.lead_state(lead_id)
        if state is None:
            return self.render(
                request,
                "error.html",
                status=404,
                title="Unknown lead",
                message=f"No lead has the id {lead_id!r}.",
            )
        view = lead_view(state, rules, now_ms())
        chart = chart_block(
            "score",
            "The score after each moment of the lead's story (markers), its decay since the "
            "last one, engagement and fit where they are known, and the tier thresholds.",
            view.chart,
        )
        return self.render(request, "lead.html", lead=view, chart=chart, charts=True)

    async def kpis_page(self, request: web.Request) -> web.StreamResponse:
        """The outcomes KPIs and charts per model and rules version, from the stored counters."""
        rules = self.rules.get().rules
        async with self.reading():
            counters = await self.store.kpi_counters()
        kpis = compute_kpis(counters, [t.name for t in rules.tiers])
        cohorts = [
            (cohort_title(c), [from_chart(ch) for ch in cohort_charts(c, i)])
            for i, c in enumerate(ordered(kpis))
        ]
        return self.render(
            request,
            "kpis.html",
            summary=trusted(summary_html(kpis)),
            notes=trusted(notes_html(kpis)),
            cohorts=cohorts,
            charts=bool(cohorts),
        )

    async def models_page(self, request: web.Request) -> web.StreamResponse:
        """Live and candidate rules, a diff of two snapshots, the simulator."""
        return self._models(request, None, None, {})

    def _models(
        self,
        request: web.Request,
        simulation: Simulation | None,
        simulation_error: str | None,
        form: Mapping[str, str],
        status: int = 200,
    ) -> web.Response:
        rules_file = self.rules.get()
        lab_dir = self.settings.console_lab_dir
        files = list_files(lab_dir)
        candidates = [
            read_candidate(lab_dir, name, rules_file.text, str(rules_file.path))
            for name in files.rules
            if lab_dir is not None
        ]
        diff = diff_error = None
        diff_charts: list[ChartBlock] = []
        query = request.query
        chosen = {k: query.get(k, "") for k in ("live", "candidate", "outcomes")}
        if lab_dir is not None and chosen["live"] and chosen["candidate"]:
            try:
                diff = diff_files(
                    lab_dir,
                    chosen["live"],
                    chosen["candidate"],
                    chosen["outcomes"] or None,
                    files,
                )
            except LabInputError as exc:
                diff_error = str(exc)
            if diff is None and diff_error is None:
                diff_error = "Pick two snapshots of the list."
            if diff is not None:
                charts = [transition_chart(diff), score_chart(diff)]
                if diff.quality is not None:
                    charts += quality_charts(diff.quality)
                diff_charts = [from_chart(c) for c in charts]
        # The form's defaults: a snapshot named live* as live, the next one as the candidate.
        snapshots = files.snapshots
        live_default = next((n for n in snapshots if n.startswith("live")), "")
        live_default = chosen["live"] or live_default or (snapshots[0] if snapshots else "")
        preselect = {
            "live": live_default,
            "candidate": chosen["candidate"]
            or next((n for n in snapshots if n != live_default), ""),
            "outcomes": chosen["outcomes"],
        }
        return self.render(
            request,
            "models.html",
            status=status,
            preselect=preselect,
            live=rules_file,
            lab_dir=lab_dir,
            files=files,
            candidates=candidates,
            chosen=chosen,
            diff=diff,
            diff_error=diff_error,
            diff_html=diff_html(diff) if diff is not None else {},
            diff_charts=diff_charts,
            charts=bool(diff_charts),
            event_types=[t.value for t in EventType],
            simulation=simulation,
            simulation_error=simulation_error,
            form=form,
        )

    async def simulate(self, request: web.Request) -> web.StreamResponse:
        """What an event would do to a lead, under the live or a candidate's rules."""
        posted = await request.post()
        form = {k: _text(posted.get(k)) or "" for k in posted}
        rules_file = self.rules.get()
        rules: CompiledRules | None = rules_file.rules
        chosen_rules = form.get("rules", "")
        if chosen_rules:
            lab_dir = self.settings.console_lab_dir
            rules = candidate_rules(lab_dir, chosen_rules, list_files(lab_dir))
        if rules is None:
            return self._models(request, None, "Pick the live rules or a valid candidate.", form)
        now = now_ms()
        try:
            if form.get("mode") == "paste":
                text = form.get("event", "")
                if len(text) > MAX_PASTE_CHARS:
                    raise InvalidEvent("too_large", f"over {MAX_PASTE_CHARS} characters")
                event = parse_pasted(text, now, self.limits)
            else:
                event = event_of(
                    form.get("lead_id", ""),
                    form.get("type", ""),
                    form.get("properties", ""),
                    form.get("traits", ""),
                    now,
                    self.limits,
                )
        except InvalidEvent as exc:
            message = f"The worker would refuse this event ({exc.reason}): {exc.detail}"
            return self._models(request, None, message, form, status=422)
        async with self.reading():
            state = await self.store.lead_state(event.lead_id)
        result = simulate(state, event, rules, self.settings.dedup_window_s * 1000)
        return self._models(request, result, None, form)

    async def rules_page(self, request: web.Request) -> web.StreamResponse:
        """The rules file in force, its history, and the candidate check form."""
        return self._rules(request, None, {})

    def _rules(
        self,
        request: web.Request,
        check: tuple[bool, list[str]] | None,
        form: Mapping[str, str],
        status: int = 200,
    ) -> web.Response:
        rules_file = self.rules.get()
        history = list(reversed(promotions(rules_file.path)))
        return self.render(
            request,
            "rules.html",
            status=status,
            live=rules_file,
            history=history,
            kept=list(kept_versions(rules_file.path)),
            check=check,
            form=form,
        )

    async def check_rules(self, request: web.Request) -> web.StreamResponse:
        """Validate a pasted candidate: the very lines `streamscore rules check` prints."""
        posted = await request.post()
        form = {k: _text(posted.get(k)) or "" for k in posted}
        text = form.get("text", "")
        source = CANDIDATE_SOURCE.get(form.get("format", ""), CANDIDATE_SOURCE["yaml"])
        if len(text) > MAX_PASTE_CHARS:
            check = (False, [f"{source}: over {MAX_PASTE_CHARS} characters"])
        else:
            check = check_lines(text, source)
        return self._rules(request, check, form, status=200 if check[0] else 422)

    # ------------------------------------------------------------ live, static, health

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: one `handoff` event per handoff, a comment now and then."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        queue = self.feed.subscribe()
        try:
            await response.write(b"retry: 5000\n\n")
            while True:
                try:
                    handoff = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    # Also how a closed page is noticed: the write fails.
                    await response.write(b": keep-alive\n\n")
                    continue
                if handoff is None:  # the console is stopping
                    break
                await response.write(b"event: handoff\ndata: " + handoff.to_json() + b"\n\n")
        except ConnectionResetError:
            pass
        finally:
            self.feed.unsubscribe(queue)
        return response

    async def static_file(self, request: web.Request) -> web.StreamResponse:
        """A static file by its versioned URL, gzipped when the browser takes it."""
        asset = self.static.get(request.path)
        if asset is None:
            raise web.HTTPNotFound()
        gzip_ok = "gzip" in request.headers.get("Accept-Encoding", "")
        response = web.Response(
            body=asset.gzipped if gzip_ok else asset.body,
            content_type=asset.content_type,
            charset="utf-8",
            headers={
                "Cache-Control": "public, max-age=31536000, immutable",
                "Vary": "Accept-Encoding",
            },
        )
        if gzip_ok:
            response.headers["Content-Encoding"] = "gzip"
        return response

    async def healthz(self, _: web.Request) -> web.Response:
        """The process answers (for probes; no data)."""
        return web.json_response({"alive": True})


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def is_https(request: web.Request) -> bool:
    """Served over HTTPS, directly or behind a proxy that says so."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def same_origin(request: web.Request) -> bool:
    """False for a browser's request sent by another site's page (a cross-site form post).

    Browsers send Sec-Fetch-Site (older ones Origin, on posts); a client without either (curl
    with a bearer token) is not a browser tricked into posting. The session cookie is
    SameSite=Strict as well, so this is a second line.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.host


_CONSOLE_KEY = web.AppKey("console", Console)


def create_app(settings: Settings, require_token: bool = True) -> web.Application:
    """The console's application; Redis and the handoff feed start and stop with it."""
    console = Console(settings, require_token)
    app = web.Application(middlewares=[console.guard], client_max_size=2 * MAX_PASTE_CHARS)
    app[_CONSOLE_KEY] = console

    async def security_headers(_: web.Request, response: web.StreamResponse) -> None:
        # on_response_prepare: every response, streams and error pages included.
        response.headers.setdefault("Content-Security-Policy", console.csp)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)

    app.on_response_prepare.append(security_headers)
    r = app.router
    r.add_get("/", console.queue_page)
    r.add_get("/lead", console.lead_page)
    r.add_get("/kpis", console.kpis_page)
    r.add_get("/models", console.models_page)
    r.add_post("/models/simulate", console.simulate)
    r.add_get("/rules", console.rules_page)
    r.add_post("/rules/check", console.check_rules)
    r.add_get("/events", console.events)
    r.add_get("/login", console.login_page)
    r.add_post("/login", console.login)
    r.add_post("/logout", console.logout)
    r.add_get("/static/{name}", console.static_file)
    r.add_get("/healthz", console.healthz)

    async def start(_: web.Application) -> None:
        await console.start()

    async def shutdown(_: web.Application) -> None:
        # on_shutdown runs before the server waits for open requests: the live streams end.
        await console.feed.stop()

    async def cleanup(_: web.Application) -> None:
        await console.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)
    return app


def console_of(app: web.Application) -> Console:
    """The Console behind an app made by create_app."""
    return app[_CONSOLE_KEY]


def console_url(settings: Settings) -> str:
    """Where the console listens, for people to open."""
    host = settings.console_host
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{settings.console_port}/"


def run_console(settings: Settings) -> None:
    """Serve the console until SIGINT or SIGTERM (`streamscore console`)."""
    app = create_app(settings)  # first: a missing token is refused before anything is printed
    print(f"console url: {console_url(settings)}", flush=True)
    log.info("console listening on %s", console_url(settings))
    web.run_app(
        app,
        host=settings.console_host,
        port=settings.console_port,
        print=None,
        access_log=None,
        shutdown_timeout=5.0,
    )
