"""The HTML report in a real browser.

`index.html` must open on its own (from an e-mail attachment, say): headless Chromium loads it from disk and
must show every figure, log no error, fetch nothing beside the page, and show numbers formatted for people.
The browser is the system's Chromium (Debian package `chromium`), driven by Playwright with `executable_path`;
Playwright's own browser download is never used. Where no Chromium or no playwright package is installed,
the tests skip and say what is missing. A full-page screenshot is kept as a test artifact.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Words a person should never read in a report: Python's / pandas' spellings of missing and infinite numbers.
UNFORMATTED = re.compile(r"(?<!\w)(?:inf|nan|<NA>)(?!\w)", re.IGNORECASE)

SPEC = {
    "name": "browser",
    "base": {
        "task": {"modulus": 23, "train_frac": 0.7},
        "model": {"layers": 1, "width": 32, "heads": 4},
        "optim": {"lr": 1e-2},
        "train": {"steps": 200, "eval_every": 50, "batch_size": 64},
    },
    "grid": {"optim.weight_decay": [0.0, 1.0]},
    "seeds": [0, 1],
}


def chromium_path() -> str:
    """$GROKLAB_CHROMIUM, else the first Chromium on PATH; skips the module if there is none."""
    wanted = os.environ.get("GROKLAB_CHROMIUM")
    if wanted:
        found = shutil.which(wanted)
        if found is None:  # asked for explicitly: a wrong path is a mistake to report, not a reason to skip
            pytest.fail(f"GROKLAB_CHROMIUM={wanted!r} is not an executable file")
        return found
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"no Chromium found (looked for {', '.join(BROWSERS)} on PATH and $GROKLAB_CHROMIUM): "
                "install it with `sudo apt-get install chromium` (Debian/Ubuntu) or set GROKLAB_CHROMIUM")


def artifacts_dir() -> Path:
    path = Path(os.environ.get("GROKLAB_ARTIFACTS") or ROOT / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is missing: `pip install -c constraints.txt -e '.[dev]'` "
                    "(never `playwright install`: the tests use the system Chromium)")
    with sync_playwright() as p:
        # --no-sandbox: Chromium's sandbox cannot start as root (CI containers); Playwright adds it by default too.
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    import groklab
    from groklab.analysis.report import report
    from groklab.store import Store

    tmp = tmp_path_factory.mktemp("browser")
    groklab.sweep(SPEC, store=tmp / "s.db")
    return Path(report(Store(tmp / "s.db"), sweep="browser", out=tmp / "report"))


def open_page(browser, index: Path) -> SimpleNamespace:
    """Load `index` as a file:// URL; the page and every console error, page error and failed request."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems: list[str] = []

    def on_console(msg) -> None:
        if msg.type == "error":
            problems.append(f"console error: {msg.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.on("requestfailed", lambda req: problems.append(f"failed request: {req.url} ({req.failure})"))
    page.goto(index.as_uri(), wait_until="load")
    images = page.eval_on_selector_all(
        "img", "els => els.map(e => ({src: e.getAttribute('src') || '', complete: e.complete, "
        "width: e.naturalWidth, height: e.naturalHeight}))")
    return SimpleNamespace(page=page, problems=problems, images=images)


def broken(images: list[dict]) -> list[str]:
    return [f"{im['src'][:80]} (complete={im['complete']}, {im['width']}x{im['height']})" for im in images
            if not (im["complete"] and im["width"] > 0 and im["height"] > 0)]


@pytest.fixture(scope="module")
def loaded(browser, report_dir):
    view = open_page(browser, report_dir / "index.html")
    # Taken before any assertion, so the artifact shows what a failing test saw.
    view.screenshot = artifacts_dir() / "report.png"
    view.page.screenshot(path=str(view.screenshot), full_page=True)
    yield view
    view.page.close()


def test_loads_without_errors(loaded):
    assert not loaded.problems, "\n".join(loaded.problems)


def test_every_image_renders(loaded):
    assert loaded.images, "the report shows no <img>"
    bad = broken(loaded.images)
    assert not bad, "images that do not render:\n" + "\n".join(bad)


def test_images_are_embedded(loaded):
    linked = [im["src"][:80] for im in loaded.images if not im["src"].startswith("data:")]
    assert not linked, "every figure must be a data: URI so that index.html opens on its own; linked: " + ", ".join(linked)


def test_index_alone_renders(browser, report_dir, tmp_path):
    """index.html copied into an empty folder: nothing beside it to fetch, every figure still shows."""
    shutil.copy(report_dir / "index.html", tmp_path / "index.html")
    view = open_page(browser, tmp_path / "index.html")
    try:
        assert view.images, "the report shows no <img>"
        bad = broken(view.images) + view.problems
        assert not bad, "index.html alone does not render:\n" + "\n".join(bad)
    finally:
        view.page.close()


def test_has_title(loaded):
    assert loaded.page.title().strip(), "the page has no <title>"


def test_numbers_formatted_for_people(loaded):
    text = loaded.page.evaluate("document.body.innerText")
    lines = [" ".join(ln.split())[:200] for ln in text.splitlines() if UNFORMATTED.search(ln)]
    words = sorted({m.group() for m in UNFORMATTED.finditer(text)})
    assert not lines, f"{', '.join(words)} shown on {len(lines)} lines of the page, e.g.:\n" + "\n".join(lines[:5])


def test_screenshot_saved(loaded):
    assert loaded.screenshot.is_file() and loaded.screenshot.stat().st_size > 0
    assert loaded.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
