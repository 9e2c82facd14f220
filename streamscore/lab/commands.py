"""The lab's commands: `streamscore replay`, `diff`, `snapshot`, `learn`, `promote`, `rollback`.

Replay rescores history into a namespace of its own; diff, snapshot and learn read namespaces
(live, a replay, a shadow) from Redis, or exported JSON-lines files. Heavy imports
(scikit-learn, plotly, the worker) happen per command.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from streamscore.errors import ConfigError, RulesError, StreamscoreError

if TYPE_CHECKING:
    from streamscore.lab.examples import Example
    from streamscore.lab.snapshots import ExampleCount
    from streamscore.runtime.scope import LeadSample

MAX_VERSION: Final = 64
NEXT_STEPS: Final = (
    "next: streamscore rules check {out}; replay it, then streamscore diff, shadow it, and "
    "streamscore promote {out} --rules LIVE"
)


NAMESPACE_HELP: Final = "live, replay:NAME, shadow:MODEL, or a snapshot file (*.jsonl)"


def add_lab_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add replay, diff, snapshot, learn, promote and rollback to the `streamscore` parser."""
    replay = sub.add_parser("replay", help=cmd_replay.__doc__)
    replay.add_argument("--rules", type=Path, required=True, help="the candidate rules file")
    replay.add_argument(
        "--name", help="the replay's namespace, replay:NAME (default: from the rules version)"
    )
    replay.add_argument("--from", dest="from_time", metavar="TIME", help="first event time")
    replay.add_argument("--until", metavar="TIME", help="last event time")
    replay.add_argument(
        "--leads",
        metavar="SHARE|@FILE",
        help="a sample: a share of leads (10%% or 0.1, drawn by a stable hash of the lead id) "
        "or @FILE with one lead id per line",
    )
    replay.add_argument(
        "--outputs",
        choices=("none", "topics"),
        default="none",
        help="none (default), or send to ss.v1.replay.NAME.handoffs/.tier-changes/.sla-breaches",
    )
    replay.add_argument("--overwrite", action="store_true", help="delete an earlier replay:NAME")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.set_defaults(func=cmd_replay)

    learn = sub.add_parser("learn", help=cmd_learn.__doc__)
    source = learn.add_mutually_exclusive_group(required=True)
    source.add_argument("--examples", type=Path, metavar="FILE.jsonl")
    source.add_argument(
        "--from", dest="namespace", metavar="NAMESPACE",
        help="the handoffs of live, replay:NAME or shadow:MODEL, with their outcomes",
    )  # fmt: skip
    learn.add_argument(
        "--min-age-days", type=float, default=0.0,
        help="leave out handoffs younger than this: their outcome may still come (default 0)",
    )  # fmt: skip
    learn.add_argument("--rules", type=Path, required=True, help="the rules the examples used")
    learn.add_argument("--out", type=Path, required=True, help="the candidate rules file (.yaml)")
    learn.add_argument("--report", type=Path, metavar="HTML", help="write the learn report here")
    learn.add_argument("--target", choices=("opportunity", "won"), default="opportunity")
    learn.add_argument("--version", help="the candidate's version (default: <rules>+learned-X)")
    learn.add_argument("--seed", type=int, default=0, help="the held-out split's seed")
    learn.add_argument("--c", type=float, default=1.0, help="inverse L2 strength (default 1)")
    learn.add_argument("--min-examples", type=int, help="refuse below this many (default 200)")
    learn.add_argument(
        "--min-positives", type=int, help="refuse below this many of each class (default 50)"
    )
    learn.set_defaults(func=cmd_learn)

    diff = sub.add_parser("diff", help=cmd_diff.__doc__)
    diff.add_argument("live", metavar="LIVE", help=NAMESPACE_HELP)
    diff.add_argument("candidate", metavar="CANDIDATE", help=NAMESPACE_HELP)
    diff.add_argument(
        "--outcomes", type=Path, metavar="FILE.jsonl",
        help="outcomes per lead (default: those the namespaces' funnels hold)",
    )  # fmt: skip
    diff.add_argument("--at", metavar="TIME", help="judge both at this time (default: now)")
    diff.add_argument("--html", type=Path, metavar="HTML", help="write the diff page here")
    diff.add_argument("--max-leads", type=int, default=20, help="changed handoffs listed")
    diff.set_defaults(func=cmd_diff)

    snap = sub.add_parser("snapshot", help=cmd_snapshot.__doc__)
    snap.add_argument("namespace", metavar="NAMESPACE", help="live, replay:NAME or shadow:MODEL")
    snap.add_argument("--out", type=Path, required=True, metavar="FILE.jsonl")
    snap.add_argument(
        "--outcomes", type=Path, metavar="FILE.jsonl", help="also write its outcomes per lead"
    )
    snap.add_argument("--at", metavar="TIME", help="judge the leads at this time (default: now)")
    snap.set_defaults(func=cmd_snapshot)

    promote = sub.add_parser("promote", help=cmd_promote.__doc__)
    promote.add_argument("candidate", type=Path, metavar="CANDIDATE")
    promote.add_argument("--rules", type=Path, required=True, metavar="LIVE", help="live rules")
    promote.set_defaults(func=cmd_promote)

    rollback = sub.add_parser("rollback", help=cmd_rollback.__doc__)
    rollback.add_argument("--rules", type=Path, required=True, metavar="LIVE", help="live rules")
    rollback.add_argument("--to", metavar="VERSION", help="default: the version live before")
    rollback.set_defaults(func=cmd_rollback)


def cmd_learn(args: argparse.Namespace) -> int:
    """Learn rule points from outcomes; write a candidate rules file and its report."""
    try:
        from streamscore.lab.export import candidate_rules_text
        from streamscore.lab.learn import DEFAULT_LIMITS, Limits, learn
    except ImportError as exc:
        raise StreamscoreError(
            f"streamscore learn needs scikit-learn ({exc.name} is missing): "
            "pip install 'streamscore[lab]'"
        ) from None
    from streamscore.lab.diff import format_table
    from streamscore.scoring.rules import load_rules

    if args.out.suffix not in (".yaml", ".yml"):
        raise StreamscoreError(f"--out {args.out}: the candidate is written as YAML (.yaml)")
    if args.out.resolve() == args.rules.resolve():
        raise StreamscoreError("--out must not be the rules file: promote the candidate instead")
    rules = load_rules(args.rules)
    limits = Limits(
        min_examples=_default(args.min_examples, DEFAULT_LIMITS.min_examples),
        min_positives=_default(args.min_positives, DEFAULT_LIMITS.min_positives),
    )
    examples = _examples(args, rules)
    result = learn(examples, rules, target=args.target, seed=args.seed, c=args.c, limits=limits)
    version = args.version or _learned_version(rules.version, args.target)
    source = args.examples.name if args.examples else args.namespace
    header = (
        f"Learned by streamscore learn from {len(examples):,} handoffs in {source} "
        f"(target {args.target}, seed {args.seed}) on rules {rules.version}.\n"
        f"Held-out AUC: current rules {_auc(result.auc_current)}, learned model "
        f"{_auc(result.auc_learned)}, these points {_auc(result.auc_exported)}.\n"
        f"Points are {result.scale:.2f} x log-odds per award or match; only points and version "
        "differ from the rules learned on."
    )
    text = candidate_rules_text(
        args.rules.read_text(encoding="utf-8"), str(args.rules), result.weights, version, header
    )
    args.out.write_text(text, encoding="utf-8")
    print(
        f"target {args.target}: {result.train_examples:,} handoffs to learn from "
        f"({result.train_positives:,} reached it), {result.test_examples:,} held out "
        f"({result.test_positives:,})"
    )
    print(
        format_table(
            ["held-out AUC", ""],
            [
                [f"current rules ({rules.version})", _auc(result.auc_current)],
                ["learned model (all features)", _auc(result.auc_learned)],
                [f"exported points ({version})", _auc(result.auc_exported)],
            ],
        )
    )
    print()
    print(
        format_table(
            ["rule", "kind", "support", "log-odds/unit", "points", "new points", "note"],
            [
                [
                    w.name,
                    w.kind,
                    f"{w.support:,}",
                    "-" if w.coefficient is None else f"{w.coefficient:+.4f}",
                    "-" if w.old_points is None else f"{w.old_points:g}",
                    "-" if w.new_points is None else f"{w.new_points:g}",
                    w.note,
                ]
                for w in result.weights
            ],
            align="llrrrrl",
        )
    )
    if result.unknown_features:
        print(f"ignored features the rules do not have: {', '.join(result.unknown_features)}")
    if result.auc_current is not None and (result.auc_exported or 0) <= result.auc_current:
        print("the exported points do not beat the current rules held out: do not promote them")
    print(f"\nwrote {args.out} (version {version})")
    if args.report:
        from streamscore.lab.report import render_learn_html

        args.report.write_text(
            render_learn_html(result, version, datetime.now(UTC)), encoding="utf-8"
        )
        print(f"wrote {args.report}")
    print(NEXT_STEPS.format(out=args.out))
    return 0


def _examples(args: argparse.Namespace, rules: Any) -> list[Example]:
    """The examples file, or every handoff of a namespace with the outcome it reached."""
    if args.examples is not None:
        from streamscore.lab.files import read_examples

        return read_examples(args.examples)
    from streamscore.connect import located_settings, open_store
    from streamscore.lab.sources import read_examples as read_namespace_examples

    located = located_settings(args.config)
    mature_before = None
    if args.min_age_days > 0:
        mature_before = int(datetime.now(UTC).timestamp() * 1000 - args.min_age_days * 86_400_000)

    async def read() -> tuple[list[Example], ExampleCount]:
        async with open_store(located) as store:
            return await read_namespace_examples(
                store.client, located.settings, args.namespace, rules, mature_before
            )

    examples, count = asyncio.run(read())
    print(
        f"{args.namespace}: {count.handoffs:,} handoffs, {len(examples):,} under rules "
        f"{rules.version} (left out: {count.other_rules:,} under other rules versions, "
        f"{count.too_recent:,} younger than {args.min_age_days:g} days)"
    )
    return examples


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


def _learned_version(version: str, target: str) -> str:
    suffix = f"+learned-{target}"
    return version[: MAX_VERSION - len(suffix)] + suffix


def _auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _time_ms(text: str | None, option: str) -> int | None:
    """An option's RFC 3339 time (or a date, meaning its midnight UTC) in epoch ms."""
    if text is None:
        return None
    from streamscore.events.timefmt import parse_time_ms

    value = f"{text}T00:00:00Z" if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) else text
    try:
        return parse_time_ms(value.replace("z", "Z"))
    except ValueError as exc:
        raise ConfigError(
            f"{option} {text!r}: not a time ({exc}); use e.g. 2026-11-01 or 2026-11-01T09:30:00Z"
        ) from None


def _now_or(text: str | None) -> int:
    at = _time_ms(text, "--at")
    return int(datetime.now(UTC).timestamp() * 1000) if at is None else at


def cmd_diff(args: argparse.Namespace) -> int:
    """Compare two models' leads: live, a replay, a shadow or snapshot files; with outcomes."""
    from streamscore.lab.diff import LeadOutcome, diff_snapshots, render_text
    from streamscore.lab.files import read_outcomes
    from streamscore.lab.snapshots import merge_outcomes
    from streamscore.lab.sources import is_file, read_source

    at_ms = _now_or(args.at)
    specs = (args.live, args.candidate)

    async def read() -> list[Any]:
        if all(is_file(spec) for spec in specs):
            return [await read_source(None, None, spec, at_ms) for spec in specs]
        from streamscore.connect import located_settings, open_store

        located = located_settings(args.config)
        async with open_store(located) as store:
            return [
                await read_source(store.client, located.settings, spec, at_ms) for spec in specs
            ]

    (live, live_outcomes), (candidate, candidate_outcomes) = asyncio.run(read())
    outcomes: dict[str, LeadOutcome] | None = (
        read_outcomes(args.outcomes)
        if args.outcomes
        else merge_outcomes(live_outcomes, candidate_outcomes) or None
    )
    diff = diff_snapshots(live, candidate, outcomes)
    sys.stdout.write(render_text(diff, max_leads=args.max_leads))
    if args.html:
        from streamscore.lab.report import render_diff_html

        args.html.write_text(render_diff_html(diff, datetime.now(UTC)), encoding="utf-8")
        print(f"wrote {args.html}")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Export a namespace's leads (and outcomes) as JSON lines, for diff files and the console."""
    import orjson

    from streamscore.connect import located_settings, open_store
    from streamscore.lab.sources import read_namespace

    at_ms = _now_or(args.at)
    located = located_settings(args.config)

    async def read() -> Any:
        async with open_store(located) as store:
            return await read_namespace(store.client, located.settings, args.namespace, at_ms)

    snapshot, outcomes = asyncio.run(read())
    header = {"model": snapshot.model, "rules_version": snapshot.rules_version,
              "tiers": list(snapshot.tiers)}  # fmt: skip
    with args.out.open("wb") as out:
        out.write(orjson.dumps(header) + b"\n")
        for lead in sorted(snapshot.leads.values()):
            row = {"lead_id": lead.lead_id, "tier": lead.tier, "score": lead.score,
                   "handed_off": lead.handed_off, "reasons": lead.reasons,
                   "points": dict(lead.points)}  # fmt: skip
            out.write(orjson.dumps(row) + b"\n")
    print(f"wrote {args.out}: {len(snapshot.leads):,} leads of {snapshot.model} "
          f"(rules {snapshot.rules_version})")  # fmt: skip
    if args.outcomes:
        with args.outcomes.open("wb") as out:
            for lead_id, outcome in sorted(outcomes.items()):
                row = {"lead_id": lead_id, **outcome._asdict()}
                out.write(orjson.dumps(row) + b"\n")
        print(f"wrote {args.outcomes}: outcomes of {len(outcomes):,} leads")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Rescore the input topics' retained history under candidate rules, in its own namespace."""
    import logging

    from streamscore.connect import located_settings
    from streamscore.outcomes.kpi import SEP
    from streamscore.runtime.replay import ReplayRequest, run_replay
    from streamscore.scoring.rules import load_rules

    rules = load_rules(args.rules)  # fails fast, naming the file, field and problem
    located = located_settings(args.config)
    name = args.name or _replay_name(rules.version)
    request = ReplayRequest(
        name=name,
        rules_file=args.rules,
        from_ms=_time_ms(args.from_time, "--from"),
        until_ms=_time_ms(args.until, "--until"),
        leads=_lead_sample(args.leads),
        emit=args.outputs == "topics",
        overwrite=args.overwrite,
    )
    if (request.from_ms or 0) > (request.until_ms or sys.maxsize):
        raise ConfigError("--from is after --until")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    bar = None if args.quiet else _progress_bar(f"replay:{name}")
    try:
        result = asyncio.run(run_replay(located.settings, request, bar))
    finally:
        if bar is not None:
            bar.close()
    print(
        f"replay:{name}: {result.records:,} records in {result.seconds:.1f} s "
        f"({result.rate:,.0f}/s) under rules {result.rules_version}; scored {result.scored:,}, "
        f"left out {result.skipped:,} (window or sample), {result.invalid:,} invalid"
    )
    handoffs = sum(n for f, n in result.counters.items() if f.split(SEP)[2:3] == ["handoffs"])
    print(f"  handoffs: {handoffs:,}; its leads are under {result.namespace.prefix}:")
    print(f"next: streamscore diff live replay:{name} --html diff.html")
    return 0


def _replay_name(version: str) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", version.lower()).strip("-_")[:40]
    return name or "candidate"


def _lead_sample(text: str | None) -> LeadSample:
    from streamscore.runtime.scope import LeadSample

    if text is None:
        return LeadSample()
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"--leads {path}: cannot read: {exc.strerror}") from None
        ids = frozenset(line.strip() for line in lines if line.strip())
        if not ids:
            raise ConfigError(f"--leads {path}: no lead ids in it")
        return LeadSample(ids=ids)
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        share = -1.0
    if not 0 < share <= 1:
        raise ConfigError(f"--leads {text!r}: a share of leads (0 < share <= 1, or 1% to 100%)")
    return LeadSample(fraction=share)


def _progress_bar(label: str) -> Any:
    """A callback (done, total) drawing a progress bar with records per second and an ETA."""
    from tqdm import tqdm

    bar = tqdm(desc=label, unit=" records", unit_scale=True, dynamic_ncols=True, file=sys.stderr)

    class Bar:
        def __call__(self, done: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        def close(self) -> None:
            bar.close()

    return Bar()


def cmd_promote(args: argparse.Namespace) -> int:
    """Make a candidate the live rules file (atomic rename; the old one kept for rollback)."""
    from streamscore.lab.promote import promote

    try:
        done = promote(args.candidate, args.rules, datetime.now(UTC))
    except RulesError as exc:
        _print_rules_errors(exc)
        print(f"streamscore: {args.rules} is unchanged", file=sys.stderr)
        return 1
    _print_promotion(done.live, done.kept, done.change.lines())
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Make an earlier rules version live again (the one before, or --to VERSION)."""
    from streamscore.lab.promote import rollback

    try:
        done = rollback(args.rules, datetime.now(UTC), args.to)
    except RulesError as exc:
        _print_rules_errors(exc)
        print(f"streamscore: {args.rules} is unchanged", file=sys.stderr)
        return 1
    _print_promotion(done.live, done.kept, done.change.lines())
    return 0


def _print_rules_errors(exc: RulesError) -> None:
    # The same lines as `streamscore rules check`.
    for problem in exc.problems:
        print(f"{exc.source}: {problem}", file=sys.stderr)


def _print_promotion(live: Path, kept: Path | None, lines: list[str]) -> None:
    print(f"{live}: now live")
    for line in lines:
        print(f"  {line}")
    if kept is not None:
        print(f"  the replaced file is kept as {kept}")
