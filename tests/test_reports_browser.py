"""The report in a real browser: headless Chromium opens it from file://, every image decodes, nothing leaves the file.

CI installs Chromium (.ci/run). Without it this test fails with instructions instead of skipping, so a
missing browser cannot turn the check off unnoticed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import reports
from reports.browser import check_report, find_chromium

FAST = reports.TimingConfig(batch=4, threads=1, warmup=2, min_repetitions=5, max_repetitions=50, min_seconds=0.0, compile=False)


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.fail("Chromium is not installed; install it with `apt-get update && apt-get install -y chromium` (.ci/run does this)")
    run = reports.bench("seed-cnn", tmp_path / "run", "cpu", FAST, memory=False)
    shot = tmp_path / "report.png"
    seen = check_report(run / "report.html", shot)
    assert seen["title"].startswith("slimlens report") and seen["text"] > 500
    assert len(seen["images"]) >= 5
    broken = [im["alt"] for im in seen["images"] if not (im["complete"] and im["w"] > 0 and im["h"] > 0)]
    assert not broken, f"images that did not decode: {broken}"
    assert all(im["scheme"] == "data" for im in seen["images"])
    assert seen["console_errors"] == []
    assert seen["outside_requests"] == [], f"requests left file://: {seen['outside_requests']}"
    assert seen["scripts"] == 0
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    keep = os.environ.get("SLIMLENS_SCREENSHOT_DIR")  # CI or a developer can keep the picture to look at
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")


def test_browser_check_catches_an_outside_request(tmp_path: Path) -> None:
    """The checker itself must see a page that reaches out, or a green test proves nothing."""
    if find_chromium() is None:
        pytest.fail("Chromium is not installed; install it with `apt-get update && apt-get install -y chromium` (.ci/run does this)")
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><title>leaky</title><img src="http://127.0.0.1:9/x.png" alt="remote"><script>console.error("boom")</script>')
    seen = check_report(page)
    assert any(u.startswith("http://127.0.0.1:9") for u in seen["outside_requests"])
    assert any("boom" in e for e in seen["console_errors"])
    assert seen["images"][0]["w"] == 0


def test_browser_check_works_from_a_fresh_interpreter(tmp_path: Path) -> None:
    """In a fresh process the DevTools pipes get fds 3 and 4 themselves; the wiring must not clobber them."""
    import subprocess
    import sys

    if find_chromium() is None:
        pytest.fail("Chromium is not installed; install it with `apt-get update && apt-get install -y chromium` (.ci/run does this)")
    page = tmp_path / "plain.html"
    page.write_text("<!DOCTYPE html><title>plain</title><p>hello</p>")
    code = f"from reports.browser import check_report; print(check_report({str(page)!r})['title'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-500:]
    assert result.stdout.strip() == "plain"
