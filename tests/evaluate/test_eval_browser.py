"""report.html in a real browser: Debian's Chromium, headless, driven by Playwright. The page
must render its table and every plot from its own bytes (no file or network fetches).

Chromium is not optional here: without it this test fails (`make test` installs it with
`apt-get install -y chromium`); Playwright's own browser download is never used."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from eval_helpers import TEACHERS, scored
from playwright.sync_api import ConsoleMessage, Request, sync_playwright

from avocado_llm.evaluate import update_report, write_report
from avocado_llm.fusion import FamilyReport, FusionReport
from avocado_llm.harvest import harvest
from avocado_llm.teachers.hf import LocalTeacher

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path("/tmp/avocado-eval-report.png")


def _full_run(run_dir: Path, recipe, zoo_dir: Path) -> Path:
    """A run with every input of the report: scores, a training log, a harvest, fusion."""
    eval_dir = run_dir / "eval"
    student = scored("student", 200_000, {"arithmetic": (30, 40), "facts": (36, 40)}, 900.0)
    baseline = scored("baseline", 200_000, {"arithmetic": (20, 40), "facts": (30, 40)}, 850.0)
    for name, entry in {**TEACHERS, "student-verify": student, "baseline-all": baseline}.items():
        update_report(eval_dir, name, entry, recipe="tiny")

    for strategy, speed in (("verify", 1.0), ("all", 0.7)):
        log = run_dir / "student" / strategy / "loss.jsonl"
        log.parent.mkdir(parents=True)
        rows = [{"step": s, "loss": 4.0 * speed / (1 + s / 20) + 0.3} for s in range(0, 300, 5)]
        log.write_text("".join(json.dumps(r) + "\n" for r in rows))

    teachers = [
        LocalTeacher(name, zoo_dir / name, device="cpu") for name in ("qwen-tiny", "gemma-tiny")
    ]
    asyncio.run(harvest(recipe, run_dir / "harvest", limit=2, teachers=teachers, progress=False))
    fusion = run_dir / "fusion" / "verify.report.json"
    fusion.parent.mkdir()
    family = FamilyReport(total=4, kept=4, examples=4, wins={"qwen-tiny": 3, "gemma-tiny": 1})
    fusion.write_text(json.dumps(FusionReport("verify", {"arithmetic": family}).to_dict()))
    return eval_dir


def test_report_renders_in_headless_chromium(make_recipe, zoo_dir: Path) -> None:
    assert CHROMIUM.is_file(), (
        f"Chromium is missing at {CHROMIUM}: install it with `apt-get install -y chromium`"
    )
    recipe = make_recipe()
    eval_dir = _full_run(recipe.run_dir, recipe, zoo_dir)
    files = write_report(eval_dir)
    assert [p.name for p in files.images] == ["accuracy.png", "loss.png", "harvest.png"]

    problems: list[str] = []
    fetched: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    problems.append(message.text)

            def on_request(request: Request) -> None:
                fetched.append(request.url)

            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", on_request)
            page.goto(files.html.as_uri(), wait_until="load")

            headers = page.locator("#accuracy thead th").all_inner_texts()
            assert headers == ["model", "role", "arithmetic", "facts", "overall", "params"]
            rows = page.locator("#accuracy tbody tr")
            assert rows.count() == 4
            first_cells = [rows.nth(i).locator("td").first.inner_text() for i in range(4)]
            assert first_cells == ["gemma-tiny", "qwen-tiny", "student-verify", "baseline-all"]
            assert page.locator("#accuracy td.best").count() == 3  # arithmetic, facts, overall
            assert page.locator("#accuracy").bounding_box()["height"] > 100  # type: ignore[index]
            verdicts = " ".join(page.locator(".verdict").all_inner_texts())
            assert "student beats every teacher: yes" in verdicts
            assert "within 3 points of the best teacher on every family: no" in verdicts

            images = page.eval_on_selector_all(
                "img",
                "els => els.map(e => ({file: e.dataset.file, complete: e.complete,"
                " width: e.naturalWidth, height: e.naturalHeight, scheme: e.src.split(',')[0],"
                " shown: e.getBoundingClientRect().width}))",
            )
            assert [i["file"] for i in images] == ["accuracy.png", "loss.png", "harvest.png"]
            for image in images:
                assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
                assert image["scheme"] == "data:image/png;base64", image
                assert image["shown"] > 200, image
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert problems == []
    # Self-contained: the page itself is the only thing loaded, the plots are inline.
    assert [u for u in fetched if not u.startswith("data:")] == [files.html.as_uri()]
    assert SCREENSHOT.stat().st_size > 10_000
