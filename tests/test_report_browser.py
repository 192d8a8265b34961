"""The report as a user sees it: report.html of a tiny `tunelab run` rendered in headless Chromium.

In CI (`.ci/run` installs Debian's chromium) the test must run; elsewhere it skips without a browser.
The screenshot is kept in $TUNELAB_TEST_ARTIFACTS (default: test-artifacts/) for a person to look at.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import classification_config, write_recipe

from recipes.run import main

WIDTH = 1280


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI"):
        pytest.fail("no headless browser: .ci/run installs Debian's chromium")
    pytest.skip("no chromium on this machine (apt-get install chromium)")


def _chromium(browser: str, *args: str) -> str:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={WIDTH},900", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# Run once the page has loaded: what a reader would notice, written into the title for --dump-dom.
PROBE = """<script>window.addEventListener('load', () => {
  const images = [...document.images];
  document.title = JSON.stringify({
    images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    pageWidth: document.documentElement.scrollWidth,
    firstImageTop: images.length ? images[0].getBoundingClientRect().top : -1,
    answerTop: document.querySelector('.answer p').getBoundingClientRect().top,
  });
});</script>"""


def test_the_report_reads_well_in_a_browser(tmp_path, tiny_bert, sentiment_files):
    browser = _browser()
    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "out", training={"max_steps": 6})
    recipe = write_recipe(raw, tmp_path / "recipe.yaml", selection={"top_k": 2, "seeds": 2})
    run_dir = tmp_path / "run"
    assert main([recipe, "--run-dir", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = _chromium(browser, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    seen = json.loads(re.search(r"<title>(.*?)</title>", dom, re.S).group(1).replace("&quot;", '"'))
    assert seen["images"] >= 5 and seen["loaded"] == seen["images"], seen
    assert seen["pageWidth"] <= WIDTH, f"the page is {seen['pageWidth']} px wide in a {WIDTH} px window"
    # The per-seed plot sits beside the answer (same row), not below it.
    assert abs(seen["firstImageTop"] - seen["answerTop"]) < 100, seen
    # Hyperparameters to 3 significant digits, not 0.0014567559880009197.
    table = page[page.index("Best parameters next to the untuned ones") :]
    cells = re.findall(r"<td>([^<]*)</td>", table[: table.index("</table>")])
    numbers = [float(c) for c in cells if re.fullmatch(r"[-+]?[0-9.]+(e[-+]?[0-9]+)?", c)]
    assert numbers and all(float(f"{n:.3g}") == n for n in numbers), cells
    artifacts = Path(os.environ.get("TUNELAB_TEST_ARTIFACTS", "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "report_1280.png"
    _chromium(browser, "--hide-scrollbars", f"--screenshot={shot.resolve()}", (run_dir / "report.html").as_uri())
    assert shot.stat().st_size > 10_000
