"""The report renders in a real browser: headless Chromium loads report.html from disk (no network), the rendered DOM
holds the SVG plots and the trace rows, and a full-page screenshot is a real picture, not a blank page.

Needs the Debian package ``chromium`` (/usr/bin/chromium): ``apt-get install -y chromium``. Set CAI_SCREENSHOT_DIR to
keep a copy of the screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cai.report import build_report

from test_report import MODELS, XSS, make_synthetic_run  # noqa: E402  (tests/ is on sys.path under pytest)

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium is not installed (/usr/bin/chromium); run `apt-get install -y chromium`"
)


def _chromium(args: list[str], profile: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", *args,
    ]
    env = {**os.environ, "HOME": str(profile)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    run = make_synthetic_run(root)
    return Path(build_report(run)["html"])


def test_rendered_dom_has_plots_and_trace_rows(report_html, tmp_path):
    r = _chromium(["--dump-dom", report_html.as_uri()], tmp_path / "profile")
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert "<svg" in dom, "no SVG in the rendered DOM"
    assert len(re.findall(r'<g class="point"', dom)) == 2 * len(MODELS)  # rate scatter + Elo scatter
    assert re.search(r'<svg[^>]*class="plot plot-scatter pareto"', dom)
    assert re.search(r'<svg[^>]*class="plot plot-bars category-bars"', dom)
    assert len(re.findall(r'class="plot plot-lines curve curve-rl"', dom)) >= 6
    assert len(re.findall(r'<tr class="trace"', dom)) == 3
    assert '<ins class="diff-ins">' in dom and '<del class="diff-del">' in dom
    # the model-written script tag stayed text
    assert XSS not in dom and "&lt;script&gt;alert" in dom
    # the inline filter script ran: it writes the count of shown traces
    assert re.search(r'id="trace-count"[^>]*>3 of 3 traces shown<', dom)


def test_trace_filter_from_url_hash(report_html, tmp_path):
    r = _chromium(["--dump-dom", report_html.as_uri() + "#q=cybercrime"], tmp_path / "profile")
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert re.search(r'id="trace-count"[^>]*>1 of 3 traces shown<', dom)
    hidden = re.findall(r'<tr class="trace" data-k="(\d+)"[^>]*style="display: none;"', dom)
    assert sorted(hidden) == ["1", "2"]  # only rt-0001 (category cybercrime) stays visible


def test_screenshot_is_a_real_picture(report_html, tmp_path):
    shot = tmp_path / "report.png"
    r = _chromium([f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", report_html.as_uri()],
                  tmp_path / "profile")
    assert r.returncode == 0, r.stderr[-2000:]
    assert shot.exists(), f"no screenshot written; chromium said: {r.stderr[-2000:]}"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000, f"screenshot is only {len(data)} bytes: the page rendered (nearly) blank"
    keep = os.environ.get("CAI_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")
