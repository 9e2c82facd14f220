"""`streamscore learn`, `diff`, `promote` and `rollback` as a user runs them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs

from streamscore.cli import main
from streamscore.scoring.rules import load_rules
from tests.conftest import RULES_FILE
from tests.lab_synthetic import RULES_YAML, sample_snapshots, synthetic_examples, write_lines


def self_contained(page: str) -> bool:
    """Nothing fetched when viewed: no external script, stylesheet or image, and plotly inlined."""
    return get_plotlyjs() in page and not re.search(r"<(script|link|img)[^>]+(src|href)=", page)


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    (tmp_path / "rules.yaml").write_text(RULES_YAML, encoding="utf-8")
    rows = [e._asdict() for e in synthetic_examples(1500, 3)]
    write_lines(tmp_path / "examples.jsonl", rows)
    return tmp_path


def test_learn_writes_a_valid_candidate_and_its_report(
    synthetic: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, report = synthetic / "candidate.yaml", synthetic / "learn.html"
    code = main(
        ["learn", "--examples", str(synthetic / "examples.jsonl"), "--rules",
         str(synthetic / "rules.yaml"), "--out", str(out), "--report", str(report)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert load_rules(out).version == "synth-hand-1+learned-opportunity"
    aucs = dict(re.findall(r"^(current rules|learned model|exported points).*?(\d\.\d{3})$",
                           printed, re.MULTILINE))  # fmt: skip
    assert float(aucs["learned model"]) > float(aucs["current rules"]) + 0.15
    assert "do not promote" not in printed
    assert f"wrote {out} (version synth-hand-1+learned-opportunity)" in printed
    assert out.read_text(encoding="utf-8").startswith("# Learned by streamscore learn from 1,500")
    page = report.read_text(encoding="utf-8")
    assert self_contained(page)
    for div in ('id="gains"', 'id="calibration"', 'id="weights"', 'id="summary"'):
        assert div in page
    assert main(["rules", "check", str(out)]) == 0


def test_learn_refuses_in_one_clear_message(
    synthetic: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [e._asdict() for e in synthetic_examples(150, 3)]
    write_lines(synthetic / "few.jsonl", rows)
    out = synthetic / "candidate.yaml"
    code = main(
        ["learn", "--examples", str(synthetic / "few.jsonl"), "--rules",
         str(synthetic / "rules.yaml"), "--out", str(out), "--target", "won"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("streamscore: not learning weights: only 150 examples")
    assert err.count("\n") == 1
    assert not out.exists()


def test_learn_will_not_overwrite_the_rules(synthetic: Path) -> None:
    rules = str(synthetic / "rules.yaml")
    examples = str(synthetic / "examples.jsonl")
    assert main(["learn", "--examples", examples, "--rules", rules, "--out", rules]) == 1
    assert (synthetic / "rules.yaml").read_text(encoding="utf-8") == RULES_YAML


def test_diff_prints_tables_and_writes_the_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live, candidate, outcomes = sample_snapshots(600, 2)
    for name, rows in (("live", live), ("candidate", candidate), ("outcomes", outcomes)):
        write_lines(tmp_path / f"{name}.jsonl", rows)
    html = tmp_path / "diff.html"
    code = main(
        ["diff", str(tmp_path / "live.jsonl"), str(tmp_path / "candidate.jsonl"),
         "--outcomes", str(tmp_path / "outcomes.jsonl"), "--html", str(html)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.startswith("live: live v1    candidate: candidate v2    leads: 600")
    for title in ("Tier transitions", "Handoffs that appear", "Score distribution",
                  "Against the outcomes", "Conversion by tier"):  # fmt: skip
        assert title in printed
    page = html.read_text(encoding="utf-8")
    assert self_contained(page)
    for div in ("transitions", "scores", "precision", "tiers", "gains-opportunity", "gains-won"):
        assert f'id="{div}"' in page


def test_diff_names_the_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "live.jsonl"
    write_lines(good, [{"lead_id": "a", "tier": "hot", "score": 1.0}])
    bad = tmp_path / "candidate.jsonl"
    bad.write_text('{"lead_id": "a", "tier": "hot", "score": 1.0}\n{"lead_id": 3}\n')
    assert main(["diff", str(good), str(bad)]) == 1
    assert f"{bad}:2: 'lead_id' must be a non-empty string" in capsys.readouterr().err


def test_promote_and_rollback_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    live = tmp_path / "rules.yaml"
    text = RULES_FILE.read_text(encoding="utf-8")
    live.write_text(text, encoding="utf-8")
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(
        text.replace('"b2b-2026.11.1"', '"b2b-2026.11.2"').replace("points: 30\n", "points: 35\n"),
        encoding="utf-8",
    )
    assert main(["promote", str(candidate), "--rules", str(live)]) == 0
    printed = capsys.readouterr().out
    assert "version: b2b-2026.11.1 -> b2b-2026.11.2" in printed
    assert "points: demo_request 30 -> 35" in printed
    assert f"kept as {tmp_path / 'history' / 'rules.b2b-2026.11.1.yaml'}" in printed
    assert main(["rollback", "--rules", str(live)]) == 0
    assert live.read_text(encoding="utf-8") == text
    assert "version: b2b-2026.11.2 -> b2b-2026.11.1" in capsys.readouterr().out


def test_promote_prints_rules_check_errors_for_an_invalid_candidate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = tmp_path / "rules.yaml"
    live.write_text(RULES_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        live.read_text(encoding="utf-8").replace("enter: 90", "enter: lots"), encoding="utf-8"
    )
    assert main(["rules", "check", str(bad)]) == 1
    checked = capsys.readouterr().err
    assert main(["promote", str(bad), "--rules", str(live)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(checked)  # the very lines `rules check` prints
    assert re.match(rf"{re.escape(str(bad))}: line \d+: tiers\[2\]\.enter: ", checked)
    assert err.endswith(f"streamscore: {live} is unchanged\n")
    assert live.read_text(encoding="utf-8") == RULES_FILE.read_text(encoding="utf-8")
