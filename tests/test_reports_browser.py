"""The report in a real browser: headless Chromium opens it from file://, every image decodes, nothing leaves the file.

CI installs Chromium (.ci/run). Without it this test fails with instructions instead of skipping, so a
missing browser cannot turn the check off unnoticed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import reports
from reports.browser import check_report, find_chromium

FAST = reports.TimingConfig(batch=4, threads=1, warmup=2, min_repetitions=5, max_repetitions=50, min_seconds=0.0, compile=False)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bench run of seed-cnn (the original and its ONNX export), its report rendered."""
    if find_chromium() is None:
        pytest.fail("Chromium is not installed; install it with `apt-get update && apt-get install -y chromium` (.ci/run does this)")
    return reports.bench("seed-cnn", tmp_path_factory.mktemp("browser") / "run", "cpu", FAST, memory=False)


def _measure(html: Path, expression: str, width: int) -> object:
    """Evaluate ``expression`` in the laid-out page at ``width`` px: a copy of the page, its policy lifted, writes it into the title."""
    # The report's Content-Security-Policy forbids scripts, and check_report reads back only a fixed
    # probe; the title is one of the things it reads.
    page = html.read_text()
    policy = page.index('<meta http-equiv="Content-Security-Policy"')
    page = page[:policy] + page[page.index(">", policy) + 1:]
    script = f"<script>addEventListener('load', () => {{ document.title = JSON.stringify({expression}); }});</script>"
    probe = html.with_name(html.stem + "-probe.html")
    probe.write_text(page.replace("</body>", script + "</body>"))
    return json.loads(check_report(probe, width=width)["title"])


def test_report_renders_in_headless_chromium(bench_run: Path, tmp_path: Path) -> None:
    run = bench_run
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


# The provenance table's box and what it would need, found from its heading (the table has no id of its own).
_PROVENANCE_WIDTHS = """Array.from(document.querySelectorAll('h3')).filter(h => h.textContent === 'Provenance').map(h => {
  let box = h.nextElementSibling; while (!box.classList.contains('scroll')) box = box.nextElementSibling;
  return {needs: box.scrollWidth, has: box.clientWidth, text: box.innerText, titles: Array.from(box.querySelectorAll('[title]')).map(e => e.title)};
})"""


def test_provenance_fits_a_desktop_window_with_long_paths_and_hashes(bench_run: Path, tmp_path: Path) -> None:
    """At 1280 px the provenance table needs no sideways scroll, however long a path, hash or flag list; every value stays readable."""
    run = tmp_path / "run"
    shutil.copytree(bench_run, run)
    data = json.loads((run / "results.json").read_text())
    path = "/home/researcher/experiments/2024-06-lenet5-sweep/seed-0/run-017/variants/pruned-distilled-alone-onnx.onnx"
    sha = "9f2c4e1ab37d5c0e8f6a2b4d1c3e5f7a9b0c2d4e6f8a1b3c5d7e9f0a2b4c6d8e"
    flags = "AMX-INT8,AMX-BF16,AVX-512,AVX-512-VNNI,AVX-512-BF16,AVX-VNNI,AVX2,FMA,F16C,SSE4.2,POPCNT,BMI2,SHA-NI,VAES,GFNI"
    data["variants"][1]["artifact"] = path
    data["variants"][1]["steps"] = [{"step": "quantize_static_onnx", "weights_sha256": sha, "cpu_features": flags,
                                     "backend": "onnxruntime.quantization.quantize_static(QDQ,per_channel=True,reduce_range=False)"}]
    (run / "results.json").write_text(json.dumps(data))
    html = reports.render([run], tmp_path / "report.html")
    (table,) = _measure(html, _PROVENANCE_WIDTHS, 1280)
    assert table["needs"] <= table["has"], f"the provenance table is {table['needs']} px wide in a {table['has']} px column"
    shown = table["text"] + " ".join(table["titles"])
    flat = "".join(shown.split())  # a value wrapped over lines is still all there
    assert path in flat and sha in flat and flags in flat


# A table's box, what it would need, and its text, found from its heading.
_TABLE_WIDTHS = """Array.from(document.querySelectorAll('h3')).filter(h => h.textContent === HEADING).map(h => {
  let box = h.nextElementSibling; while (!box.classList.contains('scroll')) box = box.nextElementSibling;
  return {needs: box.scrollWidth, has: box.clientWidth, text: box.innerText};
})"""


def _fill_every_column(data: dict) -> None:
    """Fill the summary and latency columns as a GPU machine does: figures and a name for the GPU, a noisy p90, a distill recipe's long name."""
    timed = {"batch1_p50_ms": 0.1234, "batch1_p90_ms": 0.1456, "batch1_repetitions": 1234, "throughput_batch": FAST.batch,
             "throughput_per_s": 123456.7, "throughput_per_s_by_round": [120345.1, 125678.9, 124000.0], "peak_memory_mb": 12.3}
    for entry in data["variants"]:  # latency.cuda_latency's layout
        entry["latency"]["cpu"]["peak_memory"] = {"inference_mb": 1.37, "resolution_kb": 4}
        modes = {"onnxruntime": dict(timed)} if entry["format"] == "onnx" else {
            "fp32": dict(timed), "fp16": {**timed, "batch1_p50_ms": 0.0987}, "bf16": {**timed, "batch1_p50_ms": 0.0991}}
        entry["latency"]["cuda"] = {**timed, "device": "NVIDIA H100 80GB HBM3", "runtime": next(iter(modes)), "modes": modes}
    cpu = data["variants"][0]["latency"]["cpu"]
    cpu["batch1_p90_ms"] = 4 * cpu["batch1_p50_ms"]  # marked noisy
    data["variants"].append({**json.loads(json.dumps(data["variants"][1])), "name": "pruned-distilled-alone-onnx"})


@pytest.mark.parametrize("filled", [False, True], ids=["bench", "every-column"])
def test_summary_and_latency_tables_fit_a_desktop_window(bench_run: Path, tmp_path: Path, filled: bool) -> None:
    """At 1280 px the summary and latency tables need no sideways scroll (they were 1272 and 1241 px in a 1224 px column); every figure stays."""
    run = tmp_path / "run"
    shutil.copytree(bench_run, run)
    if filled:
        data = json.loads((run / "results.json").read_text())
        _fill_every_column(data)
        (run / "results.json").write_text(json.dumps(data))
    html = reports.render([run], tmp_path / "report.html")
    shown = {}
    for heading in ("Summary", "Latency by runtime"):
        (table,) = _measure(html, _TABLE_WIDTHS.replace("HEADING", json.dumps(heading)), 1280)
        assert table["needs"] <= table["has"], f"the {heading} table is {table['needs']} px wide in a {table['has']} px column"
        shown[heading] = " ".join(table["text"].split())
    data = json.loads((run / "results.json").read_text())
    for entry in data["variants"]:
        cpu = entry["latency"]["cpu"]
        assert entry["name"] in shown["Summary"] and f"{int(cpu['throughput_per_s']):,}" in shown["Summary"]  # as the table's int filter writes it
        assert f"{cpu['batch1_repetitions']}" in shown["Latency by runtime"]
    if filled:
        assert "NVIDIA H100 80GB HBM3" in shown["Summary"] and "0.123 / 0.099" in shown["Summary"] and "noisy" in shown["Summary"]
        assert "★ latency" in shown["Summary"] and "120,345–125,679 (3)" in shown["Latency by runtime"]


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
