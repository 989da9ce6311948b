"""reports: measurement on real zoo variants, results.json round trip, rendering, escaping, CLI errors."""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import cli
import reports
import zoo
from compress.variant import OnnxVariant, TorchVariant
from compress.export import export_onnx
from reports.inputs import timing_inputs
from zoo.footprint import module_macs, onnx_macs

# Tiny repetition counts: these tests check that figures exist and are sane, not that they are precise.
FAST = reports.TimingConfig(batch=4, threads=1, warmup=2, min_repetitions=5, max_repetitions=50, min_seconds=0.0, compile=False)
MODEL = "seed-cnn"


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bench run of a zoo model: the PyTorch original and its ONNX fp32 export, measured and rendered."""
    out = tmp_path_factory.mktemp("bench") / "run"
    reports.bench(MODEL, out, "cpu", FAST, command=f"slimlens bench {MODEL}")
    return out


@pytest.fixture()
def results(bench_dir: Path) -> dict:
    return reports.read_results(bench_dir)


def _cpu_figures_sane(lat: dict, batch: int) -> None:
    assert lat["batch1_p90_ms"] >= lat["batch1_p50_ms"] > 0
    assert lat["throughput_p90_ms"] >= lat["throughput_p50_ms"] > 0
    assert lat["throughput_batch"] == batch and lat["throughput_per_s"] > 0
    assert lat["batch1_repetitions"] >= FAST.min_repetitions
    assert lat["threads"] == FAST.threads and lat["timing"]["warmup"] == FAST.warmup
    assert lat["device"] and lat["versions"]["torch"] == torch.__version__
    assert lat["rounds"] == FAST.rounds and len(lat["throughput_per_s_by_round"]) == FAST.rounds


def test_bench_measures_torch_and_onnx_variants(bench_dir: Path, results: dict) -> None:
    assert (bench_dir / "report.html").is_file()
    assert not list(bench_dir.parent.glob(".run.tmp-*")), "the staging folder must be gone"
    assert results["schema"] == reports.SCHEMA and results["model"] == MODEL
    original, exported = results["variants"]
    assert (original["name"], original["format"], exported["name"], exported["format"]) == ("original", "torch", "original-onnx", "onnx")
    card = zoo.card(MODEL)
    for entry in (original, exported):
        assert (bench_dir / entry["artifact"]).is_file()
        assert entry["size_bytes"] > entry["gzip_bytes"] > 0
        assert entry["params"] == entry["nonzero_params"] == card.params
        assert abs(entry["metrics"]["accuracy"] - card.metrics["accuracy"]) <= 0.002
        assert entry["parity"]["argmax_agreement"] == 1.0 and entry["parity"]["max_abs_diff"] < 1e-3
        cpu = entry["latency"]["cpu"]
        _cpu_figures_sane(cpu, FAST.batch)
        assert cpu["peak_memory"]["inference_mb"] >= 0 and cpu["peak_memory"]["process_peak_mb"] > 0
        if not torch.cuda.is_available():
            assert "no CUDA GPU" in entry["latency"]["cuda"]["unavailable"]
    assert original["latency"]["cpu"]["runtime"] == "eager" and exported["latency"]["cpu"]["runtime"] == "onnxruntime"
    assert "compile switched off" in original["latency"]["cpu"]["modes"]["compiled"]["unavailable"]
    assert original["macs"] == exported["macs"] > 1_000_000  # the same network counted from PyTorch and from the ONNX graph


def test_measure_torch_and_onnx_variants_built_by_hand(tmp_path: Path) -> None:
    """measure() on variants built by hand: a TorchVariant and an OnnxVariant exported with dynamo=False."""
    name = "seed-autoencoder"
    module = zoo.load(name)
    path = export_onnx(module, timing_inputs(name, 1), tmp_path / "ae.onnx")
    variants = [TorchVariant(name="original", module=module, source={"zoo": name}), OnnxVariant(name="ae-onnx", artifact=path)]
    out = reports.measure(variants, name, "cpu", FAST, memory=False)
    torch_entry, onnx_entry = out["variants"]
    assert abs(torch_entry["metrics"]["mse"] - zoo.card(name).metrics["mse"]) < 1e-3
    assert onnx_entry["metrics"]["mse"] == pytest.approx(torch_entry["metrics"]["mse"], abs=1e-5)
    assert torch_entry["macs"] == onnx_entry["macs"] == module_macs(module, timing_inputs(name, 1)) == onnx_macs(path, timing_inputs(name, 1))
    for entry in out["variants"]:
        _cpu_figures_sane(entry["latency"]["cpu"], FAST.batch)
        assert "not measured" in entry["latency"]["cpu"]["peak_memory"]["unavailable"]
    assert out["timing_inputs"].startswith("the first images of the mnist test split")
    # a user's own architecture is timed on noise, and results.json says so rather than 'real test inputs'
    user = reports.measure(variants[:1], "mine", "cpu", FAST, memory=False, input_shape=(1, 28, 28))
    assert "seeded uniform noise of the model's input shape (1, 28, 28)" in user["timing_inputs"]
    assert "real" not in user["variants"][0]["latency"]["cpu"]["inputs"]


def test_latencies_interleave_rounds_and_record_a_variant_that_cannot_run(tmp_path: Path) -> None:
    """The main CPU figures come from interleaved rounds (median over them); a broken ONNX file is recorded, not fatal."""
    name = "seed-cnn"
    module = zoo.load(name)
    good = export_onnx(module, timing_inputs(name, 1), tmp_path / "good.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    variants = [TorchVariant(name="original", module=module, source={"zoo": name}),
                OnnxVariant(name="good", artifact=good), OnnxVariant(name="broken", artifact=broken)]
    x = timing_inputs(name, FAST.batch)
    said: list[str] = []
    original, onnx_fp32, failed = reports.latencies(variants, x[:1].clone(), x, ["cpu"], FAST, memory=False, progress=said.append)
    assert said == [f"latency round {r}/{FAST.rounds} over 3 variant(s)" for r in range(1, FAST.rounds + 1)]
    for lat in (original["cpu"], onnx_fp32["cpu"]):
        _cpu_figures_sane(lat, FAST.batch)
        by_round = lat["throughput_per_s_by_round"]  # the pooled median lies between the rounds' medians
        assert min(by_round) * (1 - 1e-9) <= lat["throughput_per_s"] <= max(by_round) * (1 + 1e-9)
    assert failed["cpu"]["unavailable"].startswith("ONNX Runtime failed:")


def test_tradeoff_labels_of_a_crowded_run_neither_overlap_nor_leave_the_axes() -> None:
    """The edge run's nine variants, seven of them within 0.4 ms: every name stays legible inside the plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    from reports.plots import tradeoff_figure

    names = ["original", "original-onnx", "prune-structured", "prune-structured-onnx", "pruned-distilled", "pruned-distilled-onnx",
             "pruned-distilled-alone", "pruned-distilled-alone-onnx", "int8-static-onnx"]
    latency_ms = [5.33, 1.74, 3.33, 0.379, 3.38, 0.404, 3.70, 0.360, 0.265]
    accuracy = [0.991, 0.991, 0.981, 0.981, 0.987, 0.987, 0.987, 0.987, 0.988]
    fig = tradeoff_figure(names, latency_ms, accuracy, cost_label="ms", metric_label="accuracy", higher_is_better=True)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    ax = fig.axes[0]
    frame = ax.get_window_extent(canvas.get_renderer())
    boxes = {t.get_text(): Text.get_window_extent(t, canvas.get_renderer()) for t in ax.texts}
    assert sorted(boxes) == sorted(names)
    for name, box in boxes.items():
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, name
        assert not [other for other, b in boxes.items() if other != name and box.overlaps(b)], name


@pytest.mark.parametrize("names, costs, accuracy", [
    # lenet5's int8 run against size: 'original', at the far right, ran into the frame in its report
    (["original", "original-onnx", "int8-dynamic", "int8-dynamic-onnx", "int8-static-onnx"], [1684.5, 1688.5, 498.3, 428.9, 437.6],
     [0.98, 0.98, 0.98, 0.979, 0.98]),
    # a long name three quarters of the way across, put on its right, ran 4 px past the frame
    (["pruned-distilled-onnx", "fp16", "prune-structured-onnx"], [0.871, 0.631, 0.813], [1.0, 1.0, 0.9015]),
], ids=["lenet5-by-size", "long-name-right"])
def test_tradeoff_labels_stay_inside_the_axes_as_drawn(names: list, costs: list, accuracy: list) -> None:
    """Each name and its white backing lie inside the axes, clear of the frame's line, in the PNG the report shows."""
    from matplotlib.text import Text

    from reports.plots import tradeoff_figure

    fig = tradeoff_figure(names, costs, accuracy, cost_label="artifact size (KiB)", metric_label="accuracy", higher_is_better=True, log_x=True)
    fig.set_dpi(110)  # as to_data_uri draws the report's PNGs: names that fitted at 100 dpi ran over the frame at 110
    renderer = _drawn(fig)
    ax = fig.axes[0]
    frame = ax.get_window_extent(renderer)
    line = ax.spines["right"].get_linewidth() * fig.dpi / 72 / 2  # the frame's line reaches this far inside the frame
    assert sorted(t.get_text() for t in ax.texts) == sorted(names)
    for label in ax.texts:
        for box in (Text.get_window_extent(label, renderer), label.get_bbox_patch().get_window_extent(renderer)):
            assert frame.x0 + line <= box.x0 and box.x1 <= frame.x1 - line, label.get_text()
            assert frame.y0 + line <= box.y0 and box.y1 <= frame.y1 - line, label.get_text()


def _drawn(fig):
    """The figure drawn on an Agg canvas, and its renderer: what the PNG in the report shows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


@pytest.mark.parametrize("accuracy", [[0.99, 0.99, 0.99], [1.0, 1.0, 1.0], [0.5, 0.9, 1.0], [0.9, 0.99, 1.0]])
def test_accuracy_axes_stop_at_one(accuracy: list) -> None:
    """Accuracy cannot pass 1: no tick above it, and the axis goes no further than a marker at 1.0 needs (it reached 1.06)."""
    from reports.plots import sensitivity_figure, tradeoff_figure

    trade = tradeoff_figure(["a", "b", "c"], [1.0, 2.0, 3.0], accuracy, cost_label="ms", metric_label="accuracy", higher_is_better=True)
    sens = sensitivity_figure({"conv": {"values": accuracy}}, "pruning", "accuracy", xs=[0.5, 0.75, 0.9], baseline=accuracy[0])
    for fig in (trade, sens):
        _drawn(fig)
        ax = fig.axes[0]
        low, high = ax.get_ylim()
        shown = [t for t in ax.get_yticks() if low <= t <= high]
        assert shown and max(shown) <= 1.0 + 1e-9, shown
        assert 1.0 < high < 1.0 + 0.05 * (high - low)  # a marker at 1.0 keeps its top half, and no more room than that


def test_an_unbounded_metric_keeps_its_axis() -> None:
    """Only a fraction is held to [0, 1]: a loss such as mse above 1 is drawn where it lies."""
    from reports.plots import tradeoff_figure

    fig = tradeoff_figure(["a", "b"], [1.0, 2.0], [0.8, 1.3], cost_label="ms", metric_label="mse", higher_is_better=False)
    _drawn(fig)
    assert fig.axes[0].get_ylim()[1] > 1.3


def test_legends_sit_outside_the_data() -> None:
    """Each plot's legend lies below the axes and their x label, so it covers no point, bar or line whatever the data."""
    from reports.plots import DPI, sensitivity_figure, size_bars_figure, tradeoff_figure

    # a dominated variant at the lower right, where the Pareto legend used to sit; bars reaching the right end
    trade = tradeoff_figure(["original", "int8", "slow"], [1.0, 0.3, 2.0], [0.99, 0.98, 0.90], cost_label="ms",
                            metric_label="accuracy", higher_is_better=True)
    bars = size_bars_figure(["original", "small", "big"], [1000, 200, 1800], [900, 150, 1700])
    layers = {f"features.{i}.weight": {"values": [0.98, 0.98 - 0.1 * i, 0.9 - 0.2 * i]} for i in range(8)}
    sens = sensitivity_figure(layers, "pruning", "accuracy", xs=[0.5, 0.75, 0.9], baseline=0.98)
    for fig in (trade, bars, sens):
        assert fig.dpi == DPI  # laid out at 100 dpi and saved at 110, the bars' and curves' legends were placed for another size
        renderer = _drawn(fig)
        ax = fig.axes[0]
        legend = ax.get_legend()
        assert legend is not None
        box = legend.get_window_extent(renderer)
        assert box.y1 <= ax.get_window_extent(renderer).y0
        assert box.y1 <= ax.xaxis.get_tightbbox(renderer).y0  # under the tick labels and the x label too


def test_report_renders_self_contained_from_stored_results(bench_dir: Path, tmp_path: Path) -> None:
    out = reports.render([bench_dir], tmp_path / "report.html")
    html = out.read_text()
    assert "seed-cnn" in html and "original-onnx" in html and "No GPU was present" in html
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert len(sources) >= 5 and all(s.startswith("data:image/png;base64,") for s in sources)  # tradeoffs, sizes, confusions
    assert not re.search(r'(src|href)="(https?:)?//', html), "no external resource may be referenced"
    assert "<script" not in html
    assert "slimlens bench seed-cnn" in html  # provenance: the reproducing command
    features = reports.read_results(bench_dir)["variants"][0]["latency"]["cpu"]["cpu_features"]
    assert features is not None and features in html  # two CPUs of one name can differ in the SIMD that sets the speed


def test_report_warns_when_the_machine_was_busy(results: dict, tmp_path: Path) -> None:
    run = copy.deepcopy(results)
    for entry in run["variants"]:  # results from before other processes' CPU was measured: the load average decides
        entry["latency"]["cpu"].pop("other_processes_cpus", None)
        entry["latency"]["cpu"]["load_average_1min"] = 4.0 * run["environment"]["cpu_count"]
    assert "Noisy timings" in reports.render([run], tmp_path / "busy.html").read_text()
    for entry in run["variants"]:
        entry["latency"]["cpu"]["load_average_1min"] = 0.0
    assert "Noisy timings" not in reports.render([run], tmp_path / "idle.html").read_text()
    # README walkthrough: the load average also counts the run's own training just before the rounds, so what other
    # processes used during them decides where it was measured
    for entry in run["variants"]:
        entry["latency"]["cpu"].update(load_average_1min=1.3 * run["environment"]["cpu_count"], other_processes_cpus=0.01)
    assert "Noisy timings" not in reports.render([run], tmp_path / "own-load.html").read_text()
    run["variants"][1]["latency"]["cpu"]["other_processes_cpus"] = 1.0
    assert "Other processes kept 1.0 CPUs busy" in reports.render([run], tmp_path / "others.html").read_text()


def test_timing_rounds_measure_the_cpu_other_processes_use(tmp_path: Path) -> None:
    """One spinning process beside the rounds is about one CPU of other work; the rounds' own threads do not count."""
    import subprocess
    import sys

    from reports.latency import interleaved_cpu

    cfg = reports.TimingConfig(warmup=1, min_repetitions=3, max_repetitions=10_000, min_seconds=1.0, compile=False, rounds=1)
    model, x = zoo.load("seed-cnn"), timing_inputs("seed-cnn", 8)
    variant = TorchVariant(name="m", module=model)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = interleaved_cpu([variant], x[:1], x, cfg)[0]["other_processes_cpus"]
    finally:
        spinner.kill()
    # a core's worth, less what the rounds' two threads took from it on two cores; not the rounds' own threads as well
    assert 0.5 < busy < 1.5


def test_results_from_before_timing_rounds_still_render(results: dict, tmp_path: Path) -> None:
    """A results.json written before latency was taken in rounds (no ``rounds`` anywhere) renders as before."""
    run = copy.deepcopy(results)
    del run["timing"]["rounds"]
    for entry in run["variants"]:
        cpu = entry["latency"]["cpu"]
        del cpu["timing"]["rounds"], cpu["rounds"], cpu["throughput_per_s_by_round"]
    html = reports.render([run], tmp_path / "old.html").read_text()
    assert "seed-cnn" in html and "rounds that interleave" not in html
    new = reports.render([results], tmp_path / "new.html").read_text()
    assert "rounds that interleave" in new
    by_round = results["variants"][0]["latency"]["cpu"]["throughput_per_s_by_round"]
    assert f"{min(by_round):,.0f}–{max(by_round):,.0f} ({len(by_round)})" in new  # the spread over the rounds


def test_a_round_that_fails_is_recorded_and_the_others_kept() -> None:
    """One failing round does not throw away the good ones: they are pooled and the failure is named."""
    from reports.latency import interleaved_cpu

    module = zoo.load("seed-cnn")
    calls = {"n": 0}

    def flaky(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == FAST.warmup + 1:  # the first timed call of round 1
            raise RuntimeError("transient failure")
        return module(x)

    x = timing_inputs("seed-cnn", FAST.batch)
    lat = interleaved_cpu([_Calling(flaky)], x[:1].clone(), x, FAST)[0]
    assert lat["rounds"] == FAST.rounds - 1 and len(lat["throughput_per_s_by_round"]) == FAST.rounds - 1
    assert lat["failed_rounds"] == [f"round 1 of {FAST.rounds}: PyTorch eager failed: RuntimeError: transient failure"]
    assert lat["throughput_per_s"] > 0


class _Calling:
    """A real model behind a call that can fail, in the shape the timing loop expects of a variant."""

    format = "torch"

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def test_injected_names_show_as_text(results: dict, tmp_path: Path) -> None:
    evil = "<script>alert('x')</script>"
    run = copy.deepcopy(results)
    run["model"] = f"<b>{evil}</b>"
    run["variants"][1]["name"] = evil
    run["class_names"] = [evil] + [str(i) for i in range(1, 10)]
    run["variants"][1]["steps"] = [{"step": evil}]
    html = reports.render([run], tmp_path / "evil.html").read_text()
    assert "<script" not in html and "<b><script" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html


def _explain_json(folder: Path, variant: str) -> None:
    """An explain.json in explain/'s layout (as `slimlens explain MODEL --variant V` writes it), with its drift figure."""
    from matplotlib.figure import Figure

    from reports.plots import to_data_uri

    folder.mkdir(parents=True)
    fig = Figure(figsize=(2, 1))
    fig.add_subplot().imshow(torch.rand(8, 8).numpy())
    (folder / "drift_occlusion.png").write_bytes(base64.b64decode(to_data_uri(fig).split(",", 1)[1]))
    summary = lambda v: {"mean": v, "median": v, "std": 0.0}  # noqa: E731
    (folder / "explain.json").write_text(json.dumps({
        "slimlens_explain": 1,
        "methods": {"occlusion": {"captum": "Occlusion"}},
        "trust": {
            "settings": {},
            "random_order": {"deletion_auc": summary(0.7), "insertion_auc": summary(0.6)},
            "occlusion": {"deletion_auc": summary(0.09), "insertion_auc": summary(0.94), "infidelity": summary(0.24),
                          "sensitivity_max": summary(0.01), "randomisation": {"final_ssim": 0.12, "flagged": False, "verdict": "maps lose their structure: passes"}},
        },
        "variant": {"name": variant, "format": "onnx", "agreement_with_original": 0.75},
        "drift": {"occlusion": {
            "mean": {"spearman": 0.61, "top10_iou": 0.5, "ssim": 0.7}, "min": {"spearman": 0.2, "top10_iou": 0.1, "ssim": 0.3},
            "per_class": {"0": {"spearman": 0.9, "n": 1}, "1": {"spearman": 0.3, "n": 1}},
            "faithfulness": {"change": {"deletion_auc": 0.01, "insertion_auc": -0.02}},
            "variant_ran_on": f"variant {variant} itself", "figure": "drift_occlusion.png",
        }},
    }))


def test_explain_and_sensitivity_sections_render_when_present(results: dict, tmp_path: Path) -> None:
    run = copy.deepcopy(results)
    run["_dir"] = str(tmp_path)
    assert "Explanations" not in reports.render([run], tmp_path / "plain.html").read_text()  # absent data, absent section
    _explain_json(tmp_path / "explain-original-onnx", "original-onnx")  # found inside the run folder without being named
    run["sensitivity"] = {  # compress/sensitivity.py's layout
        "metric": "accuracy", "higher_is_better": True, "baseline": 0.98, "evaluated_on": "256 of 1000 test images",
        "pruning": {"method": "magnitude", "ratios": [0.5, 0.9], "layers": {"conv1.weight": {"params": 288, "values": [0.97, 0.6]},
                                                                          "head.weight": {"params": 640, "values": [0.98, 0.95]}}},
        "quantization": {"bits": [4, 2], "layers": {"conv1.weight": {"params": 288, "values": [0.98, 0.9]}}},
    }
    html = reports.render([run], tmp_path / "full.html").read_text()
    for text in ("Explanations", "Drift: did compression", "0.610", "Drift per class", "Trust: can", "random order (baseline)",
                 "maps lose their structure", "Heatmap gallery", "Per-layer sensitivity: pruning", "Per-layer sensitivity: quantization"):
        assert text in html, text
    assert html.count("data:image/png;base64,") >= 8  # plots, confusions, sensitivity and the embedded drift figure
    run["explain"] = "missing/explain.json"
    assert "are missing" in reports.render([run], tmp_path / "missing.html").read_text()


def test_several_runs_side_by_side_and_incomparable_runs(bench_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(bench_dir, other)
    data = json.loads((other / "results.json").read_text())
    data["recipe"] = {"name": "second"}
    (other / "results.json").write_text(json.dumps(data))
    html = reports.render([bench_dir, other], tmp_path / "two.html").read_text()
    assert "Runs side by side" in html and html.count("<section") == 2
    data["schema"] = "slimlens.results/2"
    (other / "results.json").write_text(json.dumps(data))
    with pytest.raises(reports.ReportError, match="schema"):
        reports.render([bench_dir, other], tmp_path / "bad.html")
    assert not (tmp_path / "bad.html").exists()


def test_cli_report(bench_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.html"
    assert cli.main(["report", str(bench_dir), "--out", str(out)]) == 0
    assert out.is_file() and "original-onnx" in out.read_text()


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "holds no results.json"),
    (lambda d: (d / "results.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "results.json").write_text(json.dumps({"schema": "slimlens.results/1", "variants": []})), "no list of named variants"),
    (lambda d: (d / "results.json").write_text(json.dumps({"hello": 1})), "not a slimlens results file"),
])
def test_cli_report_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, setup, message: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    setup(run)
    out = tmp_path / "r.html"
    assert cli.main(["report", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["bench", MODEL, "--devices", "tpu"], "unknown device 'tpu'"),
    (["bench", "no-such-model"], "neither a zoo model"),
    (["bench", MODEL, "--devices", ""], "no device named"),
    (["bench", MODEL, "--rounds", "0"], "rounds must be a whole number of at least 1, got 0"),
    (["bench", MODEL, "--batch", "0"], "batch must be a whole number of at least 1, got 0"),
    (["bench", MODEL, "--min-seconds", "-1"], "min_seconds must be 0 or more"),
])
def test_cli_bench_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, args: list, message: str) -> None:
    out = tmp_path / "b"
    assert cli.main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
def test_cli_bench_cuda_without_gpu_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["bench", MODEL, "--devices", "cpu,cuda", "--out", str(tmp_path / "b")]) == 2
    assert "no CUDA GPU is present" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_cli_bench_refuses_a_non_empty_out(bench_dir: Path, capsys: pytest.CaptureFixture) -> None:
    before = (bench_dir / "results.json").read_bytes()
    assert cli.main(["bench", MODEL, "--out", str(bench_dir)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (bench_dir / "results.json").read_bytes() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_figures_and_variants_that_cannot_run_there(tmp_path: Path) -> None:
    """On a GPU machine: fp32/fp16/bf16 figures with synchronised timing; ONNX Runtime CPU and int8 modules say why not."""
    module = zoo.load(MODEL)
    int8 = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)
    path = export_onnx(module, timing_inputs(MODEL, 1), tmp_path / "m.onnx")
    variants = [TorchVariant(name="original", module=module), TorchVariant(name="int8", module=int8), OnnxVariant(name="onnx", artifact=path)]
    out = reports.measure(variants, MODEL, "cpu,cuda", FAST, memory=False, metrics=False)
    cuda = out["variants"][0]["latency"]["cuda"]
    assert cuda["device"] == torch.cuda.get_device_name(0)
    for mode in ("fp32", "fp16", "bf16"):
        figs = cuda["modes"][mode]
        assert figs["batch1_p90_ms"] >= figs["batch1_p50_ms"] > 0 and figs["peak_memory_mb"] > 0
    assert "cannot run on the GPU" in out["variants"][1]["latency"]["cuda"]["unavailable"]
    onnx_cuda = out["variants"][2]["latency"]["cuda"]
    assert "batch1_p50_ms" in onnx_cuda or "cannot run on the GPU" in onnx_cuda["unavailable"]


@pytest.mark.parametrize("name", ["seed-lstm", "dcgan-g", "resnet-mnist"])
def test_macs_agree_between_pytorch_int8_and_onnx(name: str, tmp_path: Path) -> None:
    """The same architecture counted three ways (FlopCounterMode + hooks, a quantized copy, the ONNX graph) agrees."""
    module = zoo.build(name).eval()  # the architecture is what is counted: untrained weights are fine
    example = timing_inputs(name, 1)
    float_macs = module_macs(module, example)
    assert float_macs > 100_000
    int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(module), {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8)
    assert module_macs(int8, example) == float_macs
    assert onnx_macs(export_onnx(module, example, tmp_path / "m.onnx"), example) == float_macs


def test_recipe_steps_show_skips_and_a_missed_search(results: dict, tmp_path: Path) -> None:
    run = copy.deepcopy(results)
    run["_dir"] = str(tmp_path)
    assert "Recipe steps" not in reports.render([run], tmp_path / "plain.html").read_text()  # a bench run has no recipe
    run["timings"] = {"steps": [  # compress/pipeline.py's layout
        {"step": "quantize_static_onnx", "seconds": 0.0, "skipped": "runs on cnn models only, not lstm"},
        {"step": "prune-structured", "seconds": 3.2, "search": {"field": "ratio", "max_drop": 0.0, "chosen": 0.5, "met": False, "trail": []}},
        {"step": "distill", "seconds": 9.0},
        {"step": "pruned-distilled", "seconds": 9.0, "warnings": ["the student trained alone beat the distilled one (0.837 against 0.579)"]}]}
    html = reports.render([run], tmp_path / "steps.html").read_text()
    assert "Recipe steps" in html and "skipped: runs on cnn models only, not lstm" in html
    assert '<td class="l wrap bad">searched ratio: kept 0.5, none within max_drop 0.0 of the original' in html
    assert "made its variant</td>" in html
    assert '<td class="l wrap bad">made its variant; the student trained alone beat the distilled one (0.837 against 0.579)</td>' in html
    assert "<b>2 recipe steps warned</b> (prune-structured, pruned-distilled)" in html


def _untimed(run: dict) -> dict:
    """The run as `slimlens compress --no-latency` writes it: no latency for any variant and no timing."""
    run = copy.deepcopy(run)
    run["_dir"] = f"{run.get('_dir', 'run')}-untimed"  # the same folder may not be named twice
    run.pop("timing", None)
    for entry in run["variants"]:
        entry.pop("latency", None)
    return run


def test_an_untimed_run_does_not_make_timed_runs_incomparable(results: dict, tmp_path: Path) -> None:
    """Runs from one machine side by side with a --no-latency run: no 'different CPUs' warning, the untimed run says why it has no figures."""
    warning = "timed on different CPUs"
    html = reports.render([results, _untimed(results)], tmp_path / "mixed.html").read_text()
    assert "Runs side by side" in html and warning not in html
    side = html[html.index("Runs side by side"):html.index('<section id="run-1"')]
    assert side.count('<td class="l na">not measured (--no-latency)</td>') == 1  # Pareto (latency) of run-2, not a bare dash
    untimed = html[html.index('<section id="run-2"'):]
    assert '<td class="mem na" title="not measured (--no-latency)">–</td>' in untimed  # not a bare dash: the reason on hover
    other = copy.deepcopy(results)  # a timed run on another thread count still warns
    other["_dir"] = str(tmp_path / "other")
    for entry in other["variants"]:
        entry["latency"]["cpu"]["threads"] = FAST.threads + 1
    assert warning in reports.render([results, other, _untimed(results)], tmp_path / "threads.html").read_text()


def test_peak_memory_keeps_kib_and_states_its_resolution() -> None:
    """A real forward pass that touches 64 KiB more than its input: the figure keeps the kernel's kB and names the page size."""
    class Touches(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum() + torch.ones(16 * 1024).sum()  # 64 KiB of float32, written so the pages become resident

    import os

    from reports.memory import peak_memory

    variant, x = TorchVariant(name="touches", module=Touches()), timing_inputs(MODEL, FAST.batch)
    variant(x)  # as after the timings: the kernels' code is already resident, so only the tensor's pages are new
    figures = peak_memory(variant, x, FAST.threads)
    page = os.sysconf("SC_PAGE_SIZE") / 1024
    assert figures["resolution_kb"] == page
    assert 64 - page <= figures["inference_mb"] * 1024 <= 64 + 4 * page


@pytest.mark.parametrize("memory, shown, title", [
    ({"inference_mb": 0.008, "resolution_kb": 4}, "&lt; 0.1", "grew by 8 KiB during the pass"),  # lenet5's int8-static-onnx
    ({"inference_mb": 0.0, "resolution_kb": 4}, "&lt; 0.1", "did not grow by a whole 4 KiB page"),
    ({"inference_mb": 0.01}, "&lt; 0.1", "grew by about 10 KiB"),  # written before resolution_kb, rounded to 0.01 MiB
    ({"unavailable": "cannot read the resident-set high-water mark here"}, "–", "cannot read the resident-set high-water mark here"),
    ({"inference_mb": 0.86, "resolution_kb": 4}, "0.9", None),
])
def test_memory_under_the_columns_step_is_not_shown_as_zero(results: dict, tmp_path: Path, memory: dict, shown: str, title: str | None) -> None:
    """A pass whose resident growth rounds to 0.0 MiB reads '< 0.1' with the measured figure on hover; a missing one gives its reason."""
    run = copy.deepcopy(results)
    run["variants"][1]["latency"]["cpu"]["peak_memory"] = memory
    html = reports.render([run], tmp_path / "mem.html").read_text()
    row = re.search(r'<span class="nw">original-onnx</span> <span class="fmt">.*?</tr>', html, re.S).group(0)
    cell = re.search(r'<td class="mem[^>]*>[^<]*</td>', row).group(0)
    assert cell.endswith(f">{shown}</td>")
    if title is None:
        assert "title=" not in cell
    else:
        assert title in cell


def test_bench_refuses_to_replace_the_run_it_measures(bench_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(bench_dir, run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for out in (run, tmp_path):  # the run itself, and a folder holding it
        assert cli.main(["bench", str(run), "--out", str(out), "--force", "--no-compile"]) == 2
        assert "would replace the run folder" in capsys.readouterr().err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


@pytest.mark.parametrize("command", ["bench", "compress"])
def test_force_replaces_only_an_earlier_runs_folder(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch, command: str) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work")
    tail = ["--recipe", "int8"] if command == "compress" else []
    assert cli.main([command, MODEL, *tail, "--out", str(mine), "--force"]) == 2
    assert "no results.json of an earlier slimlens run" in capsys.readouterr().err
    assert cli.main([command, MODEL, *tail, "--out", str(mine)]) == 2  # --force would not help, so it is not offered
    assert "no results.json of an earlier slimlens run" in capsys.readouterr().err
    (mine / "results.json").write_text('{"accuracy": 0.9}')  # a file of that name slimlens did not write
    monkeypatch.chdir(mine)
    assert cli.main([command, MODEL, *tail, "--out", ".", "--force"]) == 2
    assert "no results.json of an earlier slimlens run" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["results.json", "thesis.tex"]


def test_bench_out_dot_replaces_the_earlier_bench_it_runs_in(bench_dir: Path, tmp_path: Path, monkeypatch) -> None:
    here = tmp_path / "here"
    shutil.copytree(bench_dir, here)
    monkeypatch.chdir(here)
    assert cli.main(["bench", MODEL, "--out", ".", "--force", "--no-compile", "--no-memory", "--no-html", "--min-seconds", "0.01",
                     "--rounds", "1", "--warmup", "1", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]  # no staging or old folder left beside it
    assert json.loads((here / "results.json").read_text())["command"].endswith("--no-compile --no-memory --no-html")


def test_report_out_that_is_not_a_regular_file_or_is_a_runs_results_is_refused(bench_dir: Path, tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture) -> None:
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert cli.main(["report", str(bench_dir), "--out", str(fifo)]) == 2
    assert "not a regular file" in capsys.readouterr().err and fifo.is_fifo()
    before = (bench_dir / "results.json").read_bytes()
    assert cli.main(["report", str(bench_dir), "--out", str(bench_dir / "results.json")]) == 2
    assert "results file of a run" in capsys.readouterr().err
    assert (bench_dir / "results.json").read_bytes() == before
    assert cli.main(["report", str(bench_dir), "--out", str(tmp_path)]) == 2
    assert f"is a folder; name a file to write, e.g. {tmp_path / 'report.html'}" in capsys.readouterr().err


def test_cli_bench_unwritable_out_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["bench", MODEL, "--out", "/proc/slimlens-bench", "--no-html"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot create --out /proc/slimlens-bench" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["variants"][1].update(latency=None), "'latency' is null, not an object"),
    (lambda r: r["variants"][1].update(metrics="abc"), "'metrics' is a string, not an object"),
    (lambda r: r.update(timing="x"), "'timing' is a string, not an object"),
    (lambda r: r["variants"][0]["metrics"].update(confusion=[[1, 2], [3]]), "'confusion' is not a square matrix"),
    (lambda r: r["variants"][1].update(size_bytes="12"), "'size_bytes' is a string, not a number"),
    (lambda r: r["variants"][1].update(size_bytes=-5), "'size_bytes' is -5, not a count of 0 or more"),
    (lambda r: r["variants"][1]["metrics"].update(accuracy=float("nan")), "metric 'accuracy' is nan, not a finite number"),
    (lambda r: r["variants"][0]["metrics"].update(per_class_recall=[1, 2]), "'per_class_recall' must list fractions from 0 to 1"),
    (lambda r: r.update(schema=999), "has schema 999, not a slimlens results schema"),
])
def test_a_damaged_results_file_is_one_line(bench_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, edit, message: str) -> None:
    data = json.loads((bench_dir / "results.json").read_text())
    edit(data)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(data))
    assert cli.main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "r.html").exists()


def test_side_by_side_names_no_variant_when_none_beats_the_original(results: dict, tmp_path: Path) -> None:
    slower = copy.deepcopy(results)
    slower["recipe"] = {"name": "slower"}
    slower["_dir"] = str(tmp_path / "slower")
    for entry in slower["variants"][1:]:  # every variant bigger and slower than the original
        entry["size_bytes"] = 2 * slower["variants"][0]["size_bytes"]
        for figures in entry["latency"].values():
            for key in ("batch1_p50_ms", "throughput_p50_ms"):
                if figures.get(key):
                    figures[key] *= 100
            if figures.get("throughput_per_s"):
                figures["throughput_per_s"] /= 100
    html = reports.render([results, slower], tmp_path / "two.html").read_text()
    table = html.split("Runs side by side")[1].split("</table>")[0]
    assert "none faster" in table and "none smaller" in table


def test_bench_report_records_every_timing_setting(bench_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert cli.main(["bench", str(bench_dir), "--out", str(out), "--no-compile", "--min-seconds", "0.01", "--rounds", "1",
                     "--warmup", "1", "--no-memory", "--quiet"]) == 0
    command = json.loads((out / "results.json").read_text())["command"]
    for part in ("--min-seconds 0.01", "--rounds 1", "--warmup 1", "--no-memory", "--no-compile", str(bench_dir.resolve())):
        assert part in command


def test_the_report_says_how_each_variant_was_checked(tmp_path: Path) -> None:
    import compress

    compress.run(MODEL, [{"step": "quantize_static_onnx", "samples": 16}, {"step": "half_precision"}], out_dir=tmp_path / "run")
    html = reports.render([tmp_path / "run"], tmp_path / "r.html").read_text()
    provenance = html.split("<h3>Provenance</h3>")[1]
    assert "against its PyTorch model: passed (agreement 1.000" in provenance  # original-onnx
    assert "against its float model: passed (agreement" in provenance  # int8-static-onnx
    assert "no ONNX export: half-precision variants are not exported" in provenance


def test_the_headline_size_reduction_shows_what_it_cost(results: dict, tmp_path: Path) -> None:
    run = copy.deepcopy(results)
    run["_dir"] = str(tmp_path)
    metric = run.get("primary_metric") or "accuracy"
    smallest = min(run["variants"][1:], key=lambda e: e["size_bytes"])
    smallest["size_bytes"] = run["variants"][0]["size_bytes"] // 10
    smallest["metrics"][metric] = run["variants"][0]["metrics"][metric] - 0.25  # a broken variant must not read as a win
    html = reports.render([run], tmp_path / "r.html").read_text()
    fact = html.split("largest size reduction")[1].split("</div>")[0]
    assert smallest["name"] in fact and '<span class="bad">accuracy -0.2500</span>' in fact


def test_a_compiled_pt2e_program_is_timed_as_compiled_and_its_memory_excludes_compiling():
    """A PT2E int8 variant runs through Inductor: its figures are not 'eager', and a dynamo reset left by the
    variant timed before it must not put a recompile into its memory figure."""
    from compress.context import data_for
    from compress.quantize import Pt2eInt8Config, quantize_pt2e

    data = data_for("lenet5")
    original = TorchVariant("original", module=zoo.load("lenet5"), source={"zoo": "lenet5"})
    int8 = quantize_pt2e(original.module, Pt2eInt8Config(samples=8, compile=True), data)
    x = timing_inputs("lenet5", 8)
    cfg = reports.TimingConfig(batch=8, threads=2, compile=True, rounds=1, min_seconds=0.05, min_repetitions=3)
    timed = reports.latencies([original, int8], x[:1].clone(), x, ["cpu"], cfg)  # the original's compiled timing resets dynamo
    cpu = timed[1]["cpu"]
    assert cpu["runtime"] == "compiled" and cpu["batch1_p50_ms"] > 0
    assert "no eager form" in cpu["modes"]["eager"]["unavailable"]
    assert cpu["peak_memory"]["inference_mb"] < 20  # lenet5 at batch 8 needs well under 1 MiB; Inductor's compile took hundreds


def test_bench_refuses_a_batch_no_memory_holds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["bench", MODEL, "--batch", "100000000", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "batch must be at most 65,536, got 100,000,000" in err and len(err.splitlines()) == 1 and not any(tmp_path.iterdir())


def test_drift_shows_its_floor_and_unchecked_weights(results: dict, tmp_path: Path) -> None:
    run = copy.deepcopy(results)
    run["_dir"] = str(tmp_path)
    folder = tmp_path / "explain-int8"
    _explain_json(folder, "int8")
    doc = json.loads((folder / "explain.json").read_text())
    doc["drift"]["occlusion"]["floor"] = {"spearman": 0.47, "top10_iou": 0.17, "ssim": 0.22, "pairs": 40}
    note = "the variant's metadata records no sha256 of the weights it was compressed from"
    doc["variant"]["original_weights"] = {"sha256": "ab" * 32, "checked": False, "note": note}
    (folder / "explain.json").write_text(json.dumps(doc))
    html = reports.render([run], tmp_path / "floor.html").read_text()
    for text in ("floor 0.47", "floor 0.17", "floor 0.22", f"<b>Warning:</b> int8: {note}".replace("'", "&#39;")):
        assert text in html, text  # an explain.json written before explain listed variant.warnings
    low = "variant int8 agrees with lenet5's predictions on only 25% of the 4 inputs"
    doc["variant"]["warnings"] = [note, low]
    (folder / "explain.json").write_text(json.dumps(doc))
    html = reports.render([run], tmp_path / "warned.html").read_text()
    assert f"<b>Warning:</b> int8: {low}".replace("'", "&#39;") in html and html.count("<b>Warning:</b>") == 2
    doc["drift"]["occlusion"]["floor"] = {"spearman": None, "top10_iou": None, "ssim": None, "pairs": 0,
                                          "unavailable": "needs at least two compared inputs"}  # one sample explained
    (folder / "explain.json").write_text(json.dumps(doc))
    html = reports.render([run], tmp_path / "one.html").read_text()
    assert "No floor for int8 · occlusion: needs at least two compared inputs." in html and "floor 0." not in html
    del doc["drift"]["occlusion"]["floor"]  # an explain.json written before floors were measured still renders, without them
    doc["variant"]["original_weights"]["checked"] = True
    doc["variant"]["warnings"] = []
    (folder / "explain.json").write_text(json.dumps(doc))
    html = reports.render([run], tmp_path / "old.html").read_text()
    assert "0.610" in html and "floor 0." not in html and "<b>Warning:</b>" not in html


def test_a_variant_on_top_of_another_is_drawn_inside_it() -> None:
    from reports.plots import tradeoff_figure

    # original and original-onnx: the same accuracy, 1684 and 1688 KiB; drawn alike, the second hid the first
    fig = tradeoff_figure(["original", "original-onnx", "int8"], [1684, 1688, 430], [0.98, 0.98, 0.979], cost_label="KiB",
                          metric_label="accuracy", higher_is_better=True, log_x=True)
    sizes = [float(c.get_sizes()[0]) for c in fig.axes[0].collections]
    assert sizes[1] < sizes[0] * 0.5 and sizes[2] == sizes[0]
    assert fig.axes[0].collections[1].get_zorder() > fig.axes[0].collections[0].get_zorder()


def test_bench_refuses_in_one_line_a_variant_whose_builder_no_longer_runs(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    """QA: a saved variant that loaded but could not run (a pruned depthwise conv's groups) crashed bench with a traceback."""
    import sys

    from compress import run
    from compress.context import data_for

    package = tmp_path / "code"
    package.mkdir()
    (package / "benchnets.py").write_text("from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n")
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.delitem(sys.modules, "benchnets", raising=False)
    import benchnets

    run(benchnets.build(), [{"step": "quantize_dynamic"}], data_for("benchnets:build", data="mnist"), out_dir=tmp_path / "run", export=False)
    # the same weights' names, but the forward no longer flattens the digit
    (package / "benchnets.py").write_text("from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Identity(), nn.Linear(784, 10))\n")
    monkeypatch.delitem(sys.modules, "benchnets")
    out = tmp_path / "bench"
    assert cli.main(["bench", str(tmp_path / "run"), "--trust-code", "--no-compile", "--no-memory", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("slimlens:")]  # a library's UserWarning may sit beside it
    assert "Traceback" not in err and line.startswith("slimlens: error: variant int8-dynamic of")
    assert "fails on an input of shape (1, 1, 28, 28)" in line and "re-run the compress command" in line
    assert not out.exists()


def test_bench_of_a_generators_bench_folder_runs_its_variants_on_latent_vectors(tmp_path: Path) -> None:
    """Review: the check that each loaded variant runs fed dcgan-g 28x28 digits (a bench folder records no input_shape)
    and refused its own bench folder as code that had changed."""
    from reports.bench import run_variants

    cfg = reports.TimingConfig(warmup=1, min_repetitions=2, max_repetitions=3, min_seconds=0.0, compile=False, rounds=1)
    reports.bench("dcgan-g", tmp_path / "first", "cpu", cfg, memory=False, html=False)
    model, variants = run_variants(tmp_path / "first", threads=1)
    assert model == "dcgan-g" and [v.name for v in variants] == ["original", "original-onnx"]
