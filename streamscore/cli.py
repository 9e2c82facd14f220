"""The `streamscore` command: worker, collector, deliver, console, dev, lead, forget..."""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamscore import interrupts
from streamscore.connect import located_settings, open_store
from streamscore.errors import ConfigError, RulesError, StreamscoreError
from streamscore.lab.commands import add_lab_commands

if TYPE_CHECKING:
    from streamscore.config import Settings
    from streamscore.dev.state import ClientSettings
    from streamscore.outcomes.kpi import Kpis

# Imports that take time (pydantic, Faust, asyncio) happen inside the commands, after main() has
# installed its signal handlers: a Ctrl-C during them must stop the command, not be lost.

EXIT_USAGE = 2
#: The write key `streamscore dev` gives its collector when collector_write_keys is unset.
DEV_WRITE_KEY = "dev"


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    from streamscore.config import load_settings

    return load_settings(args.config, **overrides)


def _run_faust(settings: Settings, extra_services: list[Any]) -> None:
    import logging.config

    from streamscore.app import ScoringProcess, create_app
    from streamscore.logs import logging_config

    config = logging_config(settings.log_level, settings.log_json)
    logging.config.dictConfig(config)
    app, agent = create_app(settings)
    worker = ScoringProcess(
        app,
        agent,
        *extra_services,
        loglevel=settings.log_level.lower(),
        logging_config=config,
        quiet=True,
    )
    # Faust's start-up spinner (on at WARNING and above) writes cursor codes to stdout even when
    # it is a file or a pipe, and sets the root logger to DEBUG so that every record turns it.
    worker.spinner = None
    tune_gc()
    interrupts.raise_if_pending()
    interrupts.forward_to_loop(worker.loop)
    try:
        worker.execute_from_commandline()
    finally:
        # Closing its loop reset SIGINT and SIGTERM to Python's defaults; the servers still stop.
        interrupts.install()


def tune_gc() -> None:
    """Tune the garbage collector for the worker's allocation pattern (call once, at start)."""
    # Every event allocates a handful of short-lived objects, so the default gen-0 threshold
    # (700) runs a collection every few events; the modules and rules loaded so far live for
    # the whole process, so freezing them keeps them out of every later full collection.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the scoring worker against the configured Kafka and Redis."""
    _run_faust(_settings(args), [])
    return 0


def cmd_collector(args: argparse.Namespace) -> int:
    """Run the Segment/RudderStack-compatible HTTP collector (Tracking API in, Kafka out)."""
    import logging.config

    from streamscore.collector.app import run_collector
    from streamscore.logs import logging_config

    settings = _settings(args)
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_json))
    run_collector(settings)
    return 0


def cmd_deliver(args: argparse.Namespace) -> int:
    """Post each handoff to the configured webhooks, signed, at least once."""
    import logging.config

    from streamscore.config import ENV_PREFIX
    from streamscore.delivery.runner import serve
    from streamscore.logs import logging_config

    settings = _settings(args)
    if not settings.delivery_webhook_urls:
        raise ConfigError(
            f"no webhook to deliver to: set {ENV_PREFIX}DELIVERY_WEBHOOK_URLS "
            "(or delivery_webhook_urls in the settings file)"
        )
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_json))
    serve(settings)
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    """Serve the console (queue, leads, KPIs, models, rules) for sales and marketing ops."""
    import logging.config

    from streamscore.logs import logging_config
    from streamscore.web.console.app import run_console

    settings = located_settings(args.config).settings
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_json))
    run_console(settings)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    """Start the embedded broker and Valkey (unless given), then the worker; stop all on exit."""
    from streamscore.dev import DevStack, free_port
    from streamscore.dev.state import remove_state, without_password, write_state

    base = _settings(args)
    with DevStack(kafka_bootstrap=args.kafka, redis_url=args.redis) as stack:
        interrupts.raise_if_pending()  # a signal dropped while a server was forked
        web_port = args.web_port or free_port()
        settings = _settings(
            args,
            kafka_bootstrap=stack.kafka_bootstrap,
            redis_url=stack.redis_url,
            web_port=web_port,
            web_host="127.0.0.1",
            delivery_web_port=free_port(),
        )
        web_url = f"http://127.0.0.1:{web_port}"
        print(f"kafka bootstrap: {settings.kafka_bootstrap}", flush=True)
        print(f"redis url: {without_password(stack.redis_url)}", flush=True)
        print(f"metrics url: {web_url}/metrics", flush=True)
        print(f"rules: {base.rules_file} (lead state: {web_url}/leads/ID)")
        services: list[Any] = [
            _dev_collector(settings, args.collector_port, args.kafka is None),
            _dev_console(settings, args.console_port),
        ]
        if args.demo:
            from streamscore.dev.demo import DemoCrm, DemoTraffic, HandoffPrinter

            print("demo: producing synthetic traffic; handoffs appear below as they happen")
            print("demo: a CRM answers the handoffs; `streamscore report` draws its outcomes")
            traffic = DemoTraffic(settings, rate_per_s=args.rate)
            services += [HandoffPrinter(settings), traffic, DemoCrm(settings, traffic)]
        if settings.delivery_webhook_urls:
            from streamscore.delivery.runner import DeliveryAgent

            port = settings.delivery_web_port
            print(f"delivery metrics url: http://127.0.0.1:{port}/metrics", flush=True)
            services.append(DeliveryAgent(settings))
        state_path = None
        try:
            state_path = write_state(settings, web_url)
            if state_path is not None:
                print(
                    f"state: {state_path} (`streamscore lead` finds this stack through it)",
                    flush=True,
                )
            _run_faust(settings, services)
        except SystemExit as exc:
            return int(exc.code or 0)
        finally:
            if state_path is not None:
                remove_state(state_path)
    return 0


def _dev_collector(settings: Settings, port: int, tansu: bool) -> Any:
    """The collector as a service of the dev process; prints its URL (and the dev write key)."""
    from pydantic import SecretStr

    from streamscore.collector.service import CollectorService
    from streamscore.dev import free_port

    overrides: dict[str, Any] = {"collector_port": port or free_port()}
    key_note = "write key: your collector_write_keys"
    if not settings.collector_keys:
        overrides["collector_write_keys"] = SecretStr(DEV_WRITE_KEY)
        key_note = f"write key: {DEV_WRITE_KEY}"
    if tansu:  # Tansu 0.6 refuses aiokafka's idempotent-producer handshake (InitProducerId v0)
        overrides["collector_idempotent_producer"] = False
    collector = settings.model_copy(update=overrides)
    print(f"collector url: http://127.0.0.1:{collector.collector_port} ({key_note})", flush=True)
    return CollectorService(collector)


def _dev_console(settings: Settings, port: int) -> Any:
    """The console as a service of the dev process, on 127.0.0.1; prints its URL."""
    from streamscore.dev import free_port
    from streamscore.web.console.app import console_url
    from streamscore.web.console.service import ConsoleService

    console = settings.model_copy(
        update={"console_host": "127.0.0.1", "console_port": port or free_port()}
    )
    access = "token: your console_token" if console.console_token else "no login: 127.0.0.1 only"
    print(f"console url: {console_url(console)} ({access})", flush=True)
    return ConsoleService(console)


def cmd_rules_check(args: argparse.Namespace) -> int:
    """Validate rules files; print each error with its location."""
    from streamscore.scoring.rules import check_lines

    failed = False
    for path in args.files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            failed = True
            print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
            continue
        # The same lines as the console's validation of a pasted candidate.
        ok, lines = check_lines(text, path)
        failed = failed or not ok
        for line in lines:
            print(line, file=sys.stdout if ok else sys.stderr)
    return 1 if failed else 0


def cmd_lead(args: argparse.Namespace) -> int:
    """Print one lead's score, tier, grade, BANT and top contributing rules."""
    import asyncio

    located = located_settings(args.config)
    return asyncio.run(_show_lead(located, args.lead_id, args.json))


async def _show_lead(located: ClientSettings, lead_id: str, as_json: bool) -> int:
    import orjson

    from streamscore.runtime.clock import now_ms
    from streamscore.scoring.explain import describe_lead
    from streamscore.scoring.rules import load_rules

    async with open_store(located) as store:
        state = await store.lead_state(lead_id)
    if state is None:
        print(f"unknown lead: {lead_id}", file=sys.stderr)
        return 1
    info = describe_lead(state, load_rules(located.settings.rules_file), now_ms())
    if as_json:
        print(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode())
        return 0
    bant = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["bant"].items())
    print(f"lead {info['lead_id']}")
    print(f"  score {info['score']} (engagement {info['engagement']}, fit {info['fit']}, "
          f"penalties {info['penalties']}) as of {info['as_of']}")  # fmt: skip
    print(f"  tier {info['tier']}, grade {info['grade']}, disqualified: {info['disqualified']}")
    print(f"  BANT: {bant}")
    print(f"  rules version {info['rules_version']}; last event {info['last_event_time']}")
    print("  top contributing rules:")
    for c in info["contributions"][:5]:
        print(f"    {c['points']:+9.2f}  {c['rule']}")
    identity = info["identity"]
    if identity["merged_ids"]:
        merged = ", ".join(f"{m['id']} ({m['linked_at']})" for m in identity["merged_ids"])
        print(f"  merged ids: {merged}")
    if identity["merged_into"] is not None:
        print(f"  merged into {identity['merged_into']}: its events score there")
    account = info.get("account")
    if account:
        print(f"  account {account['id']} (from its {account['from']})")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Forget a lead: its state, de-duplication ids, sorted-set memberships and pending outputs
    are deleted, its records up to now dropped from then on, and a tombstone is emitted."""
    import asyncio

    located = located_settings(args.config)
    return asyncio.run(_forget_lead(located, args.lead_id, args.reason, args.json))


#: How long `streamscore forget` waits for the broker to take the tombstone.
TOMBSTONE_TIMEOUT_S = 20.0


async def _forget_lead(
    located: ClientSettings, lead_id: str, reason: str | None, as_json: bool
) -> int:
    import asyncio

    import orjson
    from aiokafka.errors import KafkaError

    from streamscore.events.timefmt import format_time_ms
    from streamscore.runtime.clock import now_ms
    from streamscore.runtime.forget import forget_lead, send_tombstone
    from streamscore.runtime.kafka import make_producer
    from streamscore.scoring.rules import load_rules

    settings = located.settings
    tiers = [t.name for t in load_rules(settings.rules_file).tiers]
    async with open_store(located) as store:
        forgotten = await forget_lead(
            store,
            lead_id,
            topic=settings.topic_forgotten,
            tier_names=tiers,
            forget_ms=now_ms(),
            reason=reason,
        )
        sent = True
        producer = make_producer(settings)
        try:
            async with asyncio.timeout(TOMBSTONE_TIMEOUT_S):
                # Not ensure_topics: a command must not create the worker's topics with its
                # own partition count; a missing topic leaves the tombstone to the re-drive.
                await producer.start()
                await send_tombstone(store, producer, forgotten)
        except (TimeoutError, KafkaError) as exc:
            sent = False
            print(
                f"streamscore: the broker at {settings.kafka_bootstrap} did not take the "
                f"tombstone ({type(exc).__name__}); it waits in the outbox, and a running "
                "worker sends it (set STREAMSCORE_KAFKA_BOOTSTRAP if the broker is elsewhere)",
                file=sys.stderr,
            )
        finally:
            await producer.stop()
    if as_json:
        print(
            orjson.dumps(
                orjson.loads(forgotten.tombstone.value), option=orjson.OPT_INDENT_2
            ).decode()
        )
        return 0
    what = {
        "forgotten": "its state is deleted",
        "already_forgotten": "it had no state (forgotten before)",
        "not_found": "it had no state (unknown so far)",
    }[forgotten.result]
    print(f"forgot lead {lead_id}: {what}; {forgotten.withdrawn} pending outputs withdrawn")
    print(
        f"  its records up to {format_time_ms(forgotten.forget_ms)} are dropped from now on; "
        "later ones start a new lead"
    )
    where = "sent to" if sent else "waiting in the outbox for"
    print(f"  tombstone {where} {forgotten.tombstone.topic}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the sales-outcomes report (HTML, and its figures as JSON) from the KPI counters."""
    from streamscore.outcomes.kpi import compute_kpis
    from streamscore.outcomes.report import render_report

    counters, tiers = _kpi_counters(args)
    kpis = compute_kpis(counters, tiers)
    notes = _ab_statements(kpis, args.control)
    html_path, json_path = render_report(kpis, args.out, tiers=tiers, notes=notes)
    print(f"report: {html_path}\nfigures: {json_path}")
    return 0


def cmd_kpis(args: argparse.Namespace) -> int:
    """Print the sales-outcome KPIs per model and rules version (or --json)."""
    import orjson

    from streamscore.outcomes.kpi import compute_kpis

    counters, tiers = _kpi_counters(args)
    kpis = compute_kpis(counters, tiers)
    if args.json:
        print(orjson.dumps(kpis.to_json(), option=orjson.OPT_INDENT_2).decode())
        return 0
    if not kpis.cohorts:
        print("no handoffs counted yet")
    for cohort in kpis.cohorts:
        print(f"model {cohort.model}, rules {cohort.rules_version}")
        print(f"  {'tier':<10}{'handoffs':>9}{'touched':>9}{'opport.':>9}{'won':>7}{'rejected':>9}"
              f"{'SLA met':>9}")  # fmt: skip
        for t in (*cohort.by_tier, cohort.total):
            sla = t.sla.attainment.value
            met = "-" if sla is None else f"{sla:.0%}"
            print(f"  {t.tier:<10}{t.handoffs:>9}{t.touched.k:>9}{t.opportunity.k:>9}"
                  f"{t.won.k:>7}{t.rejected.k:>9}{met:>9}")  # fmt: skip
        print(f"  lead-to-opportunity {_rate(cohort.lead_to_opportunity.value)}, "
              f"opportunity-to-won {_rate(cohort.opportunity_to_won.value)}")  # fmt: skip
    print(f"unattributed: {sum(kpis.unattributed.values())}, duplicates: {kpis.duplicates}")
    comparisons = _ab_statements(kpis, args.control)
    if comparisons:
        print("A/B, each arm against the control (Wilson intervals, z or Fisher test):")
        for line in comparisons:
            print(f"  {line}")
    return 0


def _ab_statements(kpis: Kpis, control: str | None) -> list[str]:
    from streamscore.lab.stats import ab_statements

    try:
        return ab_statements(kpis, control)
    except ValueError as exc:
        raise ConfigError(f"--control: {exc}") from None


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _kpi_counters(args: argparse.Namespace) -> tuple[dict[str, int], tuple[str, ...]]:
    """KPI counters from --from-json, else from the worker's Redis (and the rules' tiers)."""
    import asyncio

    import orjson

    from streamscore.scoring.rules import load_rules

    if getattr(args, "from_json", None) is not None:
        try:
            data = orjson.loads(args.from_json.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"{args.from_json}: cannot read KPI counters: {exc}") from None
        # A report's own JSON (or {"counters": {...}}) or a bare map of counter field -> integer.
        counters = data.get("counters", data) if isinstance(data, dict) else None
        if not isinstance(counters, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in counters.values()
        ):
            raise ConfigError(f"{args.from_json}: expected a map of counter fields to integers")
        tiers = data.get("tiers", ()) if isinstance(data.get("tiers"), list) else ()
        return counters, tuple(tiers)
    located = located_settings(args.config)

    async def read() -> dict[str, int]:
        async with open_store(located) as store:
            return await store.kpi_counters()

    tiers = tuple(t.name for t in load_rules(located.settings.rules_file).tiers)
    return asyncio.run(read()), tiers


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `streamscore` command."""
    parser = argparse.ArgumentParser(prog="streamscore", description=__doc__)
    parser.add_argument("--config", type=Path, help="settings file (YAML/TOML) over STREAMSCORE_*")
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help=cmd_worker.__doc__)
    worker.set_defaults(func=cmd_worker)

    collector = sub.add_parser("collector", help=cmd_collector.__doc__)
    collector.set_defaults(func=cmd_collector)

    deliver = sub.add_parser("deliver", help=cmd_deliver.__doc__)
    deliver.set_defaults(func=cmd_deliver)

    dev = sub.add_parser("dev", help=cmd_dev.__doc__)
    dev.add_argument("--demo", action="store_true", help="drive synthetic traffic, show handoffs")
    dev.add_argument("--kafka", metavar="HOST:PORT", help="use this broker instead of Tansu")
    dev.add_argument("--redis", metavar="URL", help="use this Redis instead of Valkey")
    dev.add_argument("--web-port", type=int, default=0, help="HTTP port (default: a free one)")
    dev.add_argument("--rate", type=float, default=150.0, help="demo events per second")
    dev.add_argument("--collector-port", type=int, default=0, help="collector port (default: free)")
    dev.add_argument("--console-port", type=int, default=0, help="console port (default: free)")
    dev.set_defaults(func=cmd_dev)

    console = sub.add_parser("console", help=cmd_console.__doc__)
    console.set_defaults(func=cmd_console)

    rules = sub.add_parser("rules", help="rules file tools")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser("check", help=cmd_rules_check.__doc__)
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=cmd_rules_check)

    lead = sub.add_parser("lead", help=cmd_lead.__doc__)
    lead.add_argument("lead_id")
    lead.add_argument("--json", action="store_true", help="print the full explanation as JSON")
    lead.set_defaults(func=cmd_lead)

    forget = sub.add_parser("forget", help=cmd_forget.__doc__)
    forget.add_argument("lead_id")
    forget.add_argument("--reason", help="free text carried by the tombstone (max 512 chars)")
    forget.add_argument("--json", action="store_true", help="print the tombstone as JSON")
    forget.set_defaults(func=cmd_forget)

    report = sub.add_parser("report", help=cmd_report.__doc__)
    report.add_argument(
        "--from-json", type=Path, metavar="KPIS.json",
        help="KPI counters from a file (a report's .json, {\"counters\": {...}} or a bare "
        "field -> count map) instead of the worker's Redis",
    )  # fmt: skip
    report.add_argument("--out", type=Path, default=Path("report.html"), help="the HTML file")
    report.add_argument(
        "--control", metavar="ARM", help="A/B control arm (default: live, or first)"
    )
    report.set_defaults(func=cmd_report)

    kpis = sub.add_parser("kpis", help=cmd_kpis.__doc__)
    kpis.add_argument("--json", action="store_true", help="every figure, as JSON")
    kpis.add_argument("--from-json", type=Path, metavar="KPIS.json", help="as for report")
    kpis.add_argument("--control", metavar="ARM", help="A/B control (default: live, or first)")
    kpis.set_defaults(func=cmd_kpis)

    add_lab_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    interrupts.install()
    try:
        args = build_parser().parse_args(argv)
        code: int = args.func(args)
    except KeyboardInterrupt as exc:
        # Whatever had started was stopped on the way out (DevStack, the worker's finally).
        return _stopped(str(exc) or "SIGINT")
    except (ConfigError, RulesError) as exc:
        print(f"streamscore: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StreamscoreError as exc:
        print(f"streamscore: {exc}", file=sys.stderr)
        return 1
    except Exception:
        signal_name = interrupts.pending()
        if signal_name is None:
            raise
        # The interrupt arrived while a library ran code under a catch-all that wraps what it
        # catches (pydantic builds the settings' validators so): it is still a stop.
        return _stopped(signal_name)
    return code


def _stopped(signal_name: str) -> int:
    print(f"streamscore: stopped by {signal_name}", file=sys.stderr)
    interrupts.clear()
    interrupts.forget_unhandled_interrupt()
    return 0


if __name__ == "__main__":
    sys.exit(main())
