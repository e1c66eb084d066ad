"""report.html in a real browser: headless Chromium (Debian's; `make test` installs it where it can) renders it with
nothing fetched from elsewhere, and the verdict lies within the first screen (1280 x 900) without scrolling.

How the first screen is checked: a copy of the page gets a script that, once laid out, writes the verdict box's
position (getBoundingClientRect) and every resource the browser loaded (Resource Timing) into the body's data
attributes; ``--dump-dom`` prints them. That measures Chromium's own layout, so neither fonts nor CSS changes can
fool it. A screenshot of the page itself (no script) must show the verdict box's level colour in its top part.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from tuneguard.attacks.result import AttackResult, MIAResult
from tuneguard.files import read_json
from tuneguard.metrics import evaluate
from tuneguard.report import Members, write_mia_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make chromium)")
WIDTH, HEIGHT = 1280, 900
LEVEL_COLOURS = {"strong": (0xCF, 0x22, 0x2E), "some": (0xD4, 0xA7, 0x2C), "none": (0x1A, 0x7F, 0x37)}  # html.py
PROBE = """<script>
addEventListener("load", () => {
  const box = document.getElementById("verdict").getBoundingClientRect();
  const b = document.body.dataset;
  b.verdictTop = box.top; b.verdictBottom = box.bottom; b.viewport = innerHeight;
  b.resources = performance.getEntriesByType("resource").map(e => e.name).join(" ");
  b.firstChild = document.body.children[1].id;
});
</script>"""


def chromium(tmp_path, *args: str) -> str:
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},{HEIGHT}", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def report(tmp_path, *, confounded: bool):
    """A report with a long title, eleven attacks, some leak and, when asked, a confounded split."""
    rng = np.random.default_rng(0)
    n = 45
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    names = ["loss", "zlib", "lowercase", "min-k", "min-k++", "ratio", "recall", "con-recall", "neighbourhood",
             "ensemble", "bag-of-words"]
    attacks = {}
    for i, name in enumerate(names):
        shift = (1.8 if confounded else 0.0) if name == "bag-of-words" else 0.15 * i
        s = rng.normal(size=2 * n) + shift * y
        attacks[name] = AttackResult(scores=s, raw=s, raw_name="s", labels=y, params={},
                                     metrics=evaluate(y, s, n_boot=200))
    res = MIAResult(title="Membership inference audit: smollm2-135m fine-tuned (lora) on 48 texts, a title long "
                          "enough to wrap", settings={"target": "runs/lora", "reference": "smollm2-135m"},
                    attacks=attacks, origin=list(range(n)) * 2, warnings=["3 texts were truncated"])
    texts = [f"Patient {i} presented with acute renal failure; see https://example.org/{i}" for i in range(n)]
    return write_mia_report(tmp_path / "report", res, members=Members(texts))


@pytest.mark.parametrize("confounded", [False, True])
def test_the_page_renders_offline_with_the_verdict_in_the_first_screen(tmp_path, confounded):
    paths = report(tmp_path, confounded=confounded)
    page, level = paths["html"], read_json(paths["json"])["verdict"]["level"]
    html = page.read_text(encoding="utf-8")
    probe = page.with_name("probe.html")
    probe.write_text(html.replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
    dom = chromium(tmp_path, "--dump-dom", probe.as_uri())
    data = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', dom[:dom.index(">", dom.index("<body"))]))
    viewport = float(data["viewport"])  # the window's inner height: what shows without scrolling
    assert 0.75 * HEIGHT < viewport <= HEIGHT
    assert 0 <= float(data["verdict-top"]) < float(data["verdict-bottom"]) <= viewport  # no scrolling needed
    assert data["first-child"] == "verdict"  # the first thing after the title
    assert not re.search(r"https?:", data["resources"])  # nothing loaded from a network
    # Nothing in the rendered page points elsewhere (a user's text quoting a URL is text, not a link).
    assert not re.findall(r"""\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", dom)
    if confounded:
        verdict = dom[dom.index('id="verdict"'):dom.index("</section>")]
        assert verdict.index("Confounded split") < verdict.index("An attacker who holds")

    from PIL import Image

    shot = tmp_path / "page.png"
    chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == (WIDTH, HEIGHT)
    top = np.asarray(image)[:HEIGHT // 2]
    assert (top != 255).any(axis=-1).mean() > 0.02  # the top half is not blank
    # The level's colour (the verdict box's left border, 8 px wide) is on the first screen.
    assert (np.abs(top.astype(int) - LEVEL_COLOURS[level]).sum(axis=-1) < 30).sum() > 8 * 100
