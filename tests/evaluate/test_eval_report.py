"""report.json (schema, merging), report.md (table, bold, verdict) and the optional inputs of
report.html, on entries built from known scores."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import TEACHERS, scored

from avocado_llm.evaluate import (
    ReportError,
    check_report,
    load_report,
    render_markdown,
    update_report,
    write_report,
)
from avocado_llm.fusion import FamilyReport, FusionReport

STUDENT = scored("student", 200_000, {"arithmetic": (30, 40), "facts": (36, 40)})
WRONG_CI = {"accuracy": 0.5, "n": 4, "ci95": [0.6, 0.9], "tokens_per_s": 1.0}
BASELINE = scored("baseline", 200_000, {"arithmetic": (20, 40), "facts": (30, 40)})


def _fill(eval_dir: Path, **extra: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name, entry in {**TEACHERS, **extra}.items():
        report = update_report(eval_dir, name, entry, recipe="tiny")
    return report


def test_report_json_has_the_documented_schema(tmp_path: Path) -> None:
    _fill(tmp_path, **{"student-verify": STUDENT, "baseline-all": BASELINE})
    report = json.loads((tmp_path / "report.json").read_text())
    assert check_report(report) == []
    assert report["recipe"] == "tiny"
    assert set(report["models"]) == {"gemma-tiny", "qwen-tiny", "student-verify", "baseline-all"}
    for model in report["models"].values():
        assert model["role"] in ("teacher", "student", "baseline")
        assert isinstance(model["params"], int) and not isinstance(model["params"], bool)
        assert isinstance(model["overall"], float) and 0.0 <= model["overall"] <= 1.0
        accuracies = [f["accuracy"] for f in model["families"].values()]
        assert model["overall"] == pytest.approx(sum(accuracies) / len(accuracies))
        for stats in model["families"].values():
            assert isinstance(stats["n"], int) and stats["n"] == 40
            assert isinstance(stats["accuracy"], float) and 0.0 <= stats["accuracy"] <= 1.0
            lo, hi = stats["ci95"]
            assert 0.0 <= lo <= stats["accuracy"] <= hi <= 1.0
            assert isinstance(stats["tokens_per_s"], float) and stats["tokens_per_s"] > 0
    assert report["models"]["qwen-tiny"]["families"]["arithmetic"]["accuracy"] == 34 / 40


def test_evaluating_a_model_again_replaces_only_its_entry(tmp_path: Path) -> None:
    _fill(tmp_path)
    better = scored("teacher", 533_056, {"arithmetic": (40, 40), "facts": (1, 40)})
    report = update_report(tmp_path, "qwen-tiny", better)
    assert report["models"]["qwen-tiny"]["families"]["arithmetic"]["accuracy"] == 1.0
    assert report["models"]["gemma-tiny"] == TEACHERS["gemma-tiny"]
    assert load_report(tmp_path) == report
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write leaves nothing behind


def test_concurrent_updates_lose_no_entry(tmp_path: Path) -> None:
    names = [f"model-{i}" for i in range(8)]
    threads = [
        threading.Thread(target=update_report, args=(tmp_path, n, TEACHERS["qwen-tiny"]))
        for n in names
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(load_report(tmp_path)["models"]) == names


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"role": "oracle"}, "role: 'oracle' is not one of"),
        ({"params": 1.5}, "params: 1.5 is neither an integer nor null"),
        ({"overall": 85.0}, "overall: 85.0 is not a fraction"),
        ({"families": {"arithmetic": WRONG_CI}}, "ci95: [0.6, 0.9] does not contain 0.5"),
    ],
)
def test_invalid_entries_are_refused_with_the_reason(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ReportError, match=re.escape(problem)):
        update_report(tmp_path, "bad", {**TEACHERS["qwen-tiny"], **change})
    assert not (tmp_path / "report.json").exists()


def test_a_missing_or_corrupt_report_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="run `avocado eval RECIPE` first"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(ReportError, match="not JSON"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text('{"models": {}}')
    with pytest.raises(ReportError, match="no models"):
        write_report(tmp_path)


def test_markdown_table_bolds_the_best_of_each_column_and_gives_the_verdict(
    tmp_path: Path,
) -> None:
    report = _fill(tmp_path, **{"student-verify": STUDENT, "baseline-all": BASELINE})
    md = render_markdown(report)
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0] == "| model | role | arithmetic | facts | overall | params |"
    rows = {line.split(" | ")[0].strip("| "): line for line in table[1:5]}
    assert list(rows) == ["gemma-tiny", "qwen-tiny", "student-verify", "baseline-all"]
    assert "| **85.0%** |" in rows["qwen-tiny"]  # best arithmetic
    assert "| **95.0%** |" in rows["gemma-tiny"]  # best facts
    assert rows["student-verify"].endswith("| **82.5%** | 200,000 |")  # best overall
    assert "**" not in rows["baseline-all"]
    assert (
        "student beats every teacher: yes (student-verify 82.5% overall; "
        "best teacher gemma-tiny 50.0%)" in md
    )
    assert (
        "within 3 points of the best teacher on every family: no (student-verify: "
        "arithmetic 75.0% < 85.0% − 3; facts 90.0% < 95.0% − 3)" in md
    )
    close = scored("student", 1, {"arithmetic": (33, 40), "facts": (38, 40)})  # 82.5 ≥ 85 − 3
    assert "on every family: yes (student-verify: 2 families)" in render_markdown(
        update_report(tmp_path, "student-verify", close)
    )
    weak = scored("student", 1, {"arithmetic": (1, 40), "facts": (1, 40)})
    assert "student beats every teacher: no" in render_markdown(
        update_report(tmp_path, "student-verify", weak)
    )
    assert "student beats" not in render_markdown({"models": dict(TEACHERS)})


def test_write_report_draws_the_plots_whose_inputs_exist(tmp_path: Path) -> None:
    eval_dir = tmp_path / "run" / "eval"
    _fill(eval_dir, **{"student-verify": STUDENT})
    files = write_report(eval_dir)
    assert [p.name for p in files.images] == ["accuracy.png"]
    assert (eval_dir / "accuracy.png").read_bytes().startswith(b"\x89PNG")

    # A run directory with a training log and a fusion report: two more plots.
    loss = tmp_path / "run" / "student" / "verify" / "loss.jsonl"
    loss.parent.mkdir(parents=True)
    loss.write_text("".join(json.dumps({"step": s, "loss": 3 / (s + 1)}) + "\n" for s in range(50)))
    fusion = tmp_path / "run" / "fusion" / "verify.report.json"
    fusion.parent.mkdir(parents=True)
    family = FamilyReport(total=40, kept=40, examples=40, wins={"qwen-tiny": 30, "gemma-tiny": 10})
    fusion.write_text(json.dumps(FusionReport("verify", {"units": family}).to_dict()))
    files = write_report(eval_dir)
    assert [p.name for p in files.images] == ["accuracy.png", "loss.png", "harvest.png"]
    md = files.markdown.read_text()
    assert "](loss.png)" in md and "](harvest.png)" in md
    html = files.html.read_text()
    assert html.count('<img src="data:image/png;base64,') == 3

    # The inputs are gone: so are their plots, on disk and in the page.
    loss.unlink()
    files = write_report(eval_dir, {"fusion_reports": []})
    assert [p.name for p in files.images] == ["accuracy.png"]
    assert not (eval_dir / "loss.png").exists() and not (eval_dir / "harvest.png").exists()


def test_bad_optional_inputs_are_errors_that_name_the_file(tmp_path: Path) -> None:
    _fill(tmp_path)
    bad_loss = tmp_path / "loss.jsonl"
    bad_loss.write_text('{"step": 0, "loss": 1.0}\n{"step": 1}\n')
    with pytest.raises(ReportError, match=r"loss.jsonl:2: expected"):
        write_report(tmp_path, {"loss_files": [bad_loss]})
    bad_fusion = tmp_path / "x.report.json"
    bad_fusion.write_text('{"teachers": {"qwen-tiny": 3}}')
    with pytest.raises(ReportError, match="not a fusion report"):
        write_report(tmp_path, {"fusion_reports": [bad_fusion]})
    with pytest.raises(ReportError, match="no harvest in"):
        write_report(tmp_path, {"harvest_dir": tmp_path / "nothing"})
    with pytest.raises(ReportError, match=r"unknown report input\(s\) \['plots'\]"):
        write_report(tmp_path, {"plots": True})


def test_html_escapes_names_and_titles(tmp_path: Path) -> None:
    update_report(tmp_path, "<script>alert(1)</script>", TEACHERS["qwen-tiny"])
    html = write_report(tmp_path, {"title": "A & B <i>"}).html.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "A &amp; B &lt;i&gt;" in html
