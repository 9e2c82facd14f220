"""Seeded synthetic handoffs whose true weights are known, for `streamscore learn`.

`python -m tests.lab_synthetic DIR [--examples N] [--seed S]` writes DIR/rules.yaml (the rules
the examples were scored with: a deliberately wrong hand model) and DIR/examples.jsonl, and for
`streamscore diff` DIR/live.jsonl, DIR/candidate.jsonl and DIR/outcomes.jsonl.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import orjson

from streamscore.lab.learn import Example, Outcome

#: The hand model: its points rank the rules in nearly the opposite order of the truth.
RULES_YAML = """\
# A hand-made model for synthetic handoffs: its points are deliberately wrong.
version: "synth-hand-1"
decay:
  half_life: 14d
attributes:
  title:   {from: [traits.title], transform: lower}
  size:    {from: [traits.company_size], type: number}
  budget:  {from: [traits.budget], type: number}
engagement:
  - id: page_view
    when: {type: page_view}
    points: 1
    cap: {points: 10, window: 1d}
  - id: pricing_page
    when: {type: page_view, properties.path: {prefix: /pricing}}
    points: 2
  - id: email_click
    when: {type: email_click}
    points: 25      # the hand model's favourite; in truth it predicts nothing
  - id: webinar_signup
    when: {type: webinar_signup}
    points: 15
  - id: demo_request
    description: direct contact
    when: {type: demo_request}
    points: 5
    requalify: true
  - id: unsubscribe
    when: {type: unsubscribe}
    points: -30
  - id: bot
    when: {context.user_agent: {regex: "(?i)bot"}}
    disqualify: true
fit:
  - id: title_executive
    attribute: title
    when: {regex: "\\\\b(ceo|cto|founder)\\\\b"}
    points: 5
  - id: company_enterprise
    attribute: size
    when: {gte: 2000}
    points: 10
  - id: company_small
    attribute: size
    when: {lt: 50}
    points: 30
bant:
  budget:    {attribute: budget, when: {gte: 10000}}
  authority: {attribute: title, when: {regex: "\\\\b(ceo|cto|vp)\\\\b"}}
tiers:
  - name: cold
  - name: warm
    enter: 40
    exit: 30
  - name: hot
    enter: 90
    exit: 70
handoff:
  tier: hot
"""

#: Rule points in the hand model above, for the engagement features' decayed points.
HAND_POINTS = {
    "page_view": 1.0,
    "pricing_page": 2.0,
    "email_click": 25.0,
    "webinar_signup": 15.0,
    "demo_request": 5.0,
    "unsubscribe": -30.0,
}
#: The truth: log-odds per decayed award (engagement) or per match (fit, BANT), all distinct:
#: the unit exported points are proportional to.
TRUE_PER_UNIT = {
    "page_view": 0.15,
    "pricing_page": 1.1,
    "email_click": 0.0,
    "webinar_signup": 0.45,
    "demo_request": 2.6,
    "unsubscribe": -1.6,
    "title_executive": 1.8,
    "company_enterprise": 2.2,
    "company_small": -0.8,
    "bant:budget": 0.8,
    "bant:authority": 1.4,
}
#: Mean decayed awards per handoff (engagement) or match probability (fit, BANT).
RATES = {
    "page_view": 6.0,
    "pricing_page": 1.5,
    "email_click": 2.0,
    "webinar_signup": 0.6,
    "demo_request": 0.4,
    "unsubscribe": 0.15,
    "title_executive": 0.3,
    "company_enterprise": 0.35,
    "company_small": 0.3,
    "bant:budget": 0.5,
    "bant:authority": 0.4,
}
INTERCEPT = -5.0


def synthetic_examples(
    n: int, seed: int, truth: Mapping[str, float] = TRUE_PER_UNIT
) -> list[Example]:
    """n handoffs drawn from the true model (`truth`), scored by the hand model."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        features: dict[str, float] = {}
        logit = INTERCEPT
        score = 0.0
        for name, rate in RATES.items():
            if name in HAND_POINTS:
                # decayed award counts: Poisson awards, each decayed by a random age
                awards = rng.poisson(rate)
                units = float(np.sum(rng.uniform(0.4, 1.0, awards))) if awards else 0.0
                if units:
                    features[name] = units * HAND_POINTS[name]
                    score += units * HAND_POINTS[name]
            else:
                units = float(rng.random() < rate)
                if units:
                    features[name] = 1.0
                    score += {"title_executive": 5, "company_enterprise": 10,
                              "company_small": 30}.get(name, 0)  # fmt: skip
            logit += truth[name] * units
        p_opportunity = 1 / (1 + math.exp(-logit))
        opportunity = rng.random() < p_opportunity
        won = opportunity and rng.random() < 0.3
        outcome: Outcome = "won" if won else "opportunity" if opportunity else "none"
        examples.append(Example(f"lead-{i:05d}", features, round(score, 3), outcome))
    return examples


def sample_snapshots(n: int, seed: int) -> tuple[list[dict[str, object]], ...]:
    """JSON lines of a live snapshot, a candidate's and outcomes: the candidate weighs pricing
    pages up and email clicks down, and intent (hidden) drives both pricing visits and deals."""
    rng = np.random.default_rng(seed)
    tiers = ["cold", "warm", "hot"]
    live: list[dict[str, object]] = [{"model": "live", "rules_version": "v1", "tiers": tiers}]
    candidate: list[dict[str, object]] = [
        {"model": "candidate", "rules_version": "v2", "tiers": tiers}
    ]
    outcomes: list[dict[str, object]] = []
    for i in range(n):
        lead_id = f"lead-{i:05d}"
        intent = rng.random()
        pricing = float(rng.poisson(4 * intent))
        clicks = float(rng.poisson(3))
        fit = 25.0 if rng.random() < 0.3 else 0.0
        for rows, weights in ((live, (8.0, 10.0)), (candidate, (16.0, 2.0))):
            points = {"pricing_page": pricing * weights[0], "email_click": clicks * weights[1]}
            if fit:
                points["title_executive"] = fit
            score = sum(points.values())
            tier = "hot" if score >= 90 else "warm" if score >= 40 else "cold"
            reasons = sorted(points.items(), key=lambda kv: -kv[1])[:3]
            rows.append(
                {
                    "lead_id": lead_id,
                    "tier": tier,
                    "score": score,
                    "handed_off": tier == "hot",
                    "reasons": [list(r) for r in reasons],
                    "points": points,
                }
            )
        if rng.random() < 0.15 + 0.6 * intent * (1.3 if fit else 1.0):
            outcomes.append({"lead_id": lead_id, "type": "opportunity_created"})
            if rng.random() < 0.35:
                outcomes.append({"lead_id": lead_id, "type": "won"})
        elif rng.random() < 0.5:
            outcomes.append({"lead_id": lead_id, "type": "sales_rejected"})
    return live, candidate, outcomes


def write_lines(path: Path, rows: list[dict[str, object]]) -> None:
    """Write JSON lines."""
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))


def main() -> None:
    """Write rules.yaml, examples.jsonl and diff snapshots into a directory."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    (args.dir / "rules.yaml").write_text(RULES_YAML, encoding="utf-8")
    with (args.dir / "examples.jsonl").open("wb") as out:
        for e in synthetic_examples(args.examples, args.seed):
            out.write(orjson.dumps(e._asdict()) + b"\n")
    live, candidate, outcomes = sample_snapshots(args.examples, args.seed)
    write_lines(args.dir / "live.jsonl", live)
    write_lines(args.dir / "candidate.jsonl", candidate)
    write_lines(args.dir / "outcomes.jsonl", outcomes)
    print(
        f"wrote {args.dir}: rules.yaml and {args.examples} examples.jsonl (learn), "
        "live.jsonl, candidate.jsonl and outcomes.jsonl (diff)"
    )


if __name__ == "__main__":
    main()
