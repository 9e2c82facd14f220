"""The lab's commands: `streamscore learn`, `diff`, `promote` and `rollback` (no worker needed).

Files in, files out: examples and snapshots as JSON lines for now (the worker integration adds
reading them from Redis namespaces). Heavy imports (scikit-learn, plotly) happen per command.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from streamscore.errors import RulesError, StreamscoreError

MAX_VERSION: Final = 64
NEXT_STEPS: Final = (
    "next: streamscore rules check {out}; replay it, then streamscore diff, shadow it, and "
    "streamscore promote {out} --rules LIVE"
)


def add_lab_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add learn, diff, promote and rollback to the `streamscore` parser."""
    learn = sub.add_parser("learn", help=cmd_learn.__doc__)
    learn.add_argument("--examples", type=Path, required=True, metavar="FILE.jsonl")
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
    diff.add_argument("--live", type=Path, required=True, metavar="SNAPSHOT.jsonl")
    diff.add_argument("--candidate", type=Path, required=True, metavar="SNAPSHOT.jsonl")
    diff.add_argument("--outcomes", type=Path, metavar="FILE.jsonl", help="outcomes per lead")
    diff.add_argument("--html", type=Path, metavar="HTML", help="write the diff page here")
    diff.add_argument("--max-leads", type=int, default=20, help="changed handoffs listed")
    diff.set_defaults(func=cmd_diff)

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
    from streamscore.lab.files import read_examples
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
    examples = read_examples(args.examples)
    result = learn(examples, rules, target=args.target, seed=args.seed, c=args.c, limits=limits)
    version = args.version or _learned_version(rules.version, args.target)
    header = (
        f"Learned by streamscore learn from {len(examples):,} handoffs in {args.examples.name} "
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


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


def _learned_version(version: str, target: str) -> str:
    suffix = f"+learned-{target}"
    return version[: MAX_VERSION - len(suffix)] + suffix


def _auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def cmd_diff(args: argparse.Namespace) -> int:
    """Compare a candidate's lead snapshot with live's (and both with outcomes)."""
    from streamscore.lab.diff import diff_snapshots, render_text
    from streamscore.lab.files import read_outcomes, read_snapshot

    live = read_snapshot(args.live)
    candidate = read_snapshot(args.candidate)
    outcomes = read_outcomes(args.outcomes) if args.outcomes else None
    diff = diff_snapshots(live, candidate, outcomes)
    sys.stdout.write(render_text(diff, max_leads=args.max_leads))
    if args.html:
        from streamscore.lab.report import render_diff_html

        args.html.write_text(render_diff_html(diff, datetime.now(UTC)), encoding="utf-8")
        print(f"wrote {args.html}")
    return 0


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
