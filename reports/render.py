"""``render``: one self-contained HTML report (images inlined as PNG data URIs) from one or more results.json runs."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Sequence

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from reports import plots
from reports.errors import ReportError
from reports.explain_view import explain_context
from reports.pareto import pareto_front
from reports.results import RESULTS_FILE, check_comparable, primary_metric, read_results
from zoo.cards import check_out, write_atomic

TEMPLATES = Path(__file__).parent / "templates"
MAX_CONFUSIONS = 8
NOT_TIMED = "not measured (--no-latency)"
MEMORY_STEP_MB = 0.1  # the summary table shows memory to one decimal
GAIN_SHOWN = 1.005  # the headline names a variant only if it is faster or smaller than the original by more than noise


# Other processes' mean CPU use during the timing rounds above which the report calls its timings noisy; on an
# idle machine it read 0.01, and one spinning process 1.00
OTHER_WORK_CPUS = 0.3

def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _lat(entry: dict[str, Any], device: str, mode: str | None = None) -> dict[str, Any]:
    lat = (entry.get("latency") or {}).get(device) or {}
    if mode is not None:
        return (lat.get("modes") or {}).get(mode) or {}
    return lat


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _memory_cell(memory: Any, missing: str | None) -> dict[str, Any]:
    """The summary table's memory cell: the figure, why there is none, or that it is under the column's step."""
    memory = memory if isinstance(memory, dict) else {}
    value = _num(memory.get("inference_mb"))
    if value is None:
        return {"memory_mb": None, "memory_text": "–", "memory_title": memory.get("unavailable") or missing or "not measured"}
    if value >= MEMORY_STEP_MB / 2:
        return {"memory_mb": value, "memory_text": f"{value:.1f}", "memory_title": None}
    page = _num(memory.get("resolution_kb"))
    # results written before resolution_kb was recorded rounded the figure to 0.01 MiB
    if value > 0:
        grew = f"grew by {'' if page else 'about '}{value * 1024:.0f} KiB"
    else:
        grew = f"did not grow by a whole {page:.0f} KiB page" if page else "grew by less than 0.01 MiB"
    reused = ("Memory the process already held is reused and not counted, e.g. ONNX Runtime's arena, "
              "which keeps what it used while loading the session.")
    return {"memory_mb": value, "memory_text": f"< {MEMORY_STEP_MB}",
            "memory_title": f"Measured: the resident set {grew} during the pass, under this column's {MEMORY_STEP_MB} MiB step. {reused}"}


def _row(entry: dict[str, Any], original: dict[str, Any], onnx_ref: dict[str, Any] | None, metric: str | None, higher: bool) -> dict[str, Any]:
    value = _num((entry.get("metrics") or {}).get(metric)) if metric else None
    base = _num((original.get("metrics") or {}).get(metric)) if metric else None
    delta = value - base if value is not None and base is not None else None
    cpu, cpu0 = _lat(entry, "cpu"), _lat(original, "cpu")
    cuda = _lat(entry, "cuda")
    params, nonzero = _num(entry.get("params")), _num(entry.get("nonzero_params"))
    ort_ref = _lat(onnx_ref, "cpu") if onnx_ref else {}
    not_timed = None if entry.get("latency") else NOT_TIMED  # compress --no-latency writes no latency at all
    return {
        "name": entry["name"],
        "format": entry.get("format", "?"),
        "metric": value,
        "delta": delta,
        "delta_good": None if not delta else (delta > 0) == higher,
        "size": _num(entry.get("size_bytes")),
        "gzip": _num(entry.get("gzip_bytes")),
        "ratio": _ratio(_num(original.get("size_bytes")), _num(entry.get("size_bytes"))),
        "params": params,
        "sparsity": 1 - nonzero / params if params and nonzero is not None else None,
        "macs": _num(entry.get("macs")),
        "cpu_p50": _num(cpu.get("batch1_p50_ms")),
        "cpu_p90": _num(cpu.get("batch1_p90_ms")),
        # p90 far above the median: the machine was busy or the timer caught stalls; say so next to the figure
        "cpu_noisy": bool(_num(cpu.get("batch1_p90_ms")) and _num(cpu.get("batch1_p50_ms")) and cpu["batch1_p90_ms"] > 3 * cpu["batch1_p50_ms"]),
        "cpu_load": _num(cpu.get("load_average_1min")),
        "cpu_tput": _num(cpu.get("throughput_per_s")),
        "cpu_runtime": cpu.get("runtime"),
        "cpu_missing": cpu.get("unavailable") or not_timed,
        "speedup": _ratio(_num(cpu.get("throughput_per_s")), _num(cpu0.get("throughput_per_s"))),
        "speedup_ort": _ratio(_num(cpu.get("throughput_per_s")), _num(ort_ref.get("throughput_per_s"))) if onnx_ref else None,
        "cuda_p50": _num(cuda.get("batch1_p50_ms")),
        "cuda_tput": _num(cuda.get("throughput_per_s")),
        "cuda_half_p50": _num(_lat(entry, "cuda", "fp16").get("batch1_p50_ms")),
        "cuda_missing": cuda.get("unavailable") or not_timed,
        **_memory_cell(cpu.get("peak_memory"), cpu.get("unavailable") or not_timed),
        "parity": entry.get("parity") or {},
    }


def _modes(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (device, mode) figure of a variant, the unavailable ones with their reason."""
    rows = []
    for device, lat in (entry.get("latency") or {}).items():
        if not isinstance(lat, dict):
            continue
        modes = lat.get("modes") or ({lat.get("runtime", "default"): lat} if "batch1_p50_ms" in lat or "unavailable" in lat else {})
        if not modes and "unavailable" in lat:
            modes = {"-": lat}
        for mode, figs in modes.items():
            rows.append({
                "variant": entry["name"], "device": device, "device_name": lat.get("device", ""), "mode": mode,
                "p50": _num(figs.get("batch1_p50_ms")), "p90": _num(figs.get("batch1_p90_ms")),
                "tput": _num(figs.get("throughput_per_s")), "batch": figs.get("throughput_batch"),
                "reps": figs.get("batch1_repetitions"), "note": figs.get("unavailable") or lat.get("unavailable") or figs.get("note", ""),
                "memory": _num(figs.get("peak_memory_mb")), "rounds": _round_range(figs.get("throughput_per_s_by_round")),
            })
    return rows


def _round_range(by_round: Any) -> str:
    """Slowest to fastest throughput over a variant's interleaved rounds, e.g. "13,584–19,505 (12)"; "" for fewer than two."""
    # The spread shows when the machine changed speed during the run (on a 2-core VM ONNX Runtime's
    # two threads ran int8 at 13,000 or 19,000 images/s for tens of seconds at a time).
    values = [v for v in by_round if _num(v) is not None] if isinstance(by_round, list) else []
    if len(values) < 2:
        return ""
    return f"{min(values):,.0f}–{max(values):,.0f} ({len(values)})"


def _per_class(entries: list[dict[str, Any]], class_names: list[str]) -> dict[str, Any] | None:
    recalls = [(e["name"], (e.get("metrics") or {}).get("per_class_recall")) for e in entries]
    recalls = [(n, r) for n, r in recalls if isinstance(r, list) and r]
    if not recalls:
        return None
    base = recalls[0][1]
    names = class_names if len(class_names) == len(base) else [str(i) for i in range(len(base))]
    rows = [{"name": n, "cells": [{"value": v, "delta": v - b} for v, b in zip(r, base)]} for n, r in recalls]
    return {"classes": names, "rows": rows}


def _sensitivity_plots(sensitivity: Any, metric: str | None) -> list[dict[str, str]]:
    """One plot per kind of per-layer sensitivity (compress writes "pruning" and "quantization")."""
    if not isinstance(sensitivity, dict):
        return []
    label = sensitivity.get("metric") if isinstance(sensitivity.get("metric"), str) else metric or "metric"
    higher = bool(sensitivity.get("higher_is_better", True))
    baseline = _num(sensitivity.get("baseline"))
    out = []
    for kind, block in sensitivity.items():
        if not isinstance(block, dict) or not isinstance(block.get("layers"), dict):
            continue
        if "ratios" in block:
            xs, xlabel, invert = block["ratios"], "fraction of that layer's weights pruned", False
        elif "bits" in block:
            xs, xlabel, invert = block["bits"], "weight bits of that layer (fake-quantized)", True
        else:
            xs, xlabel, invert = block.get("x"), "strength", False
        uri = plots.sensitivity(block["layers"], f"{kind}: one layer at a time", label, xs=xs, xlabel=xlabel, baseline=baseline,
                                higher_is_better=higher, invert_x=invert)
        if uri:
            out.append({"title": f"Per-layer sensitivity: {kind}", "uri": uri, "note": block.get("method", ""),
                        "evaluated_on": sensitivity.get("evaluated_on", "")})
    return out


def _zoo_spec(model: Any) -> Any:
    """The zoo's facts about a run's model (metric direction, class names), or None for other models."""
    import zoo

    try:
        return zoo.spec(model) if isinstance(model, str) else None
    except zoo.SlimlensError:
        return None


def run_context(run: dict[str, Any]) -> dict[str, Any]:
    """Everything the template shows for one run, computed from its results.json content."""
    entries = run["variants"]
    spec = _zoo_spec(run.get("model"))
    if spec is not None and not run.get("primary_metric"):
        run = {**run, "primary_metric": spec.primary_metric, "higher_is_better": spec.higher_is_better}
    metric, higher = primary_metric(run)
    original = next((e for e in entries if e.get("name") == "original"), entries[0])
    onnx_ref = next((e for e in entries if e.get("name") in ("onnx-fp32", "original-onnx", "onnx")), None)
    rows = [_row(e, original, onnx_ref, metric, higher) for e in entries]
    on_lat = pareto_front([r["cpu_p50"] for r in rows], [r["metric"] for r in rows], higher)
    on_size = pareto_front([r["size"] for r in rows], [r["metric"] for r in rows], higher)
    for row, lat_ok, size_ok in zip(rows, on_lat, on_size):
        row["pareto_latency"], row["pareto_size"] = lat_ok, size_ok
    names = [r["name"] for r in rows]
    others = [r for r in rows if r is not rows[0]]
    # a "largest speed-up" of 0.8x is a slow-down: name a variant only where one beats the original
    fastest = max((r for r in others if (r["speedup"] or 0) > GAIN_SHOWN), key=lambda r: r["speedup"], default=None)
    smallest = max((r for r in others if (r["ratio"] or 0) > GAIN_SHOWN), key=lambda r: r["ratio"], default=None)
    label = metric or "metric"
    figures = []
    for title, costs, xlabel, log in (
        ("Metric against CPU latency (batch 1, median)", [r["cpu_p50"] for r in rows], "CPU latency, batch 1, p50 (ms)", False),
        ("Metric against size on disk", [r["size"] / 1024 if r["size"] else None for r in rows], "artifact size (KiB)", True),
    ):
        uri = plots.tradeoff(names, costs, [r["metric"] for r in rows], cost_label=xlabel, metric_label=label, higher_is_better=higher, log_x=log)
        if uri:
            figures.append({"title": title, "uri": uri, "caption": "Ringed points are Pareto-optimal: no other variant is both cheaper and better."})
    uri = plots.size_bars(names, [r["size"] for r in rows], [r["gzip"] for r in rows])
    if uri:
        figures.append({"title": "Size per variant", "uri": uri, "caption": "Bytes of the deployable artifact on disk and after gzip -9."})
    class_names = list(run.get("class_names") or (spec.class_names if spec is not None else []))
    confusions = []
    reference = (original.get("metrics") or {}).get("confusion")
    for e in entries:
        matrix = (e.get("metrics") or {}).get("confusion")
        if isinstance(matrix, list) and matrix and len(confusions) < MAX_CONFUSIONS:
            # the original in counts, each variant as its change from the original: what compression moved
            against = reference if e is not original and isinstance(reference, list) and len(reference) == len(matrix) else None
            confusions.append({"title": e["name"], "uri": plots.confusion(matrix, class_names, e["name"], against)})
    env = run.get("environment") or {}
    gpu_present = any(isinstance(e.get("latency", {}).get("cuda"), dict) and "batch1_p50_ms" in e["latency"]["cuda"] for e in entries)
    gpu_name = next((e["latency"]["cuda"].get("device") for e in entries if gpu_present and "device" in (e.get("latency", {}).get("cuda") or {})), None)
    no_gpu = any("no CUDA GPU" in str((e.get("latency") or {}).get("cuda", {}).get("unavailable", "")) for e in entries) or str(env.get("gpu", "")).startswith("none")
    loads = [_num(_lat(e, "cpu").get("load_average_1min")) for e in entries]
    loads = [v for v in loads if v is not None]
    others = [v for v in (_num(_lat(e, "cpu").get("other_processes_cpus")) for e in entries) if v is not None]
    cpus = _num(env.get("cpu_count")) or _num(_lat(original, "cpu").get("cpu_count"))
    busy = None
    # other work competing for the cores stalls multi-threaded kernels (PyTorch's OpenMP most): say so up front.
    # Other processes' CPU time during the rounds decides where it was measured; the load average, which also
    # counts the run's own training just before, only for results written before that.
    advice = "latencies and speed-ups are unreliable, PyTorch's multi-threaded ones most. Re-run `slimlens bench` on an idle machine."
    threads = _num(_lat(original, "cpu").get("threads")) or 1
    # on a machine with cores to spare beyond the timed threads, other work there competes little
    if others and cpus and max(others) > OTHER_WORK_CPUS + max(0.0, cpus - threads - 1):
        busy = f"Other processes kept {max(others):.1f} CPUs busy on average while these timings were taken: {advice}"
    elif not others and loads and cpus and max(loads) > cpus:
        busy = f"The machine was busy while these timings were taken (1-minute load average up to {max(loads):.1f} on {cpus:.0f} CPUs): {advice}"
    recipe = run.get("recipe")
    recipe_name = (recipe.get("name") or str(recipe.get("origin", "")).removeprefix("preset:")) if isinstance(recipe, dict) else recipe
    timing = run.get("timing") or _lat(original, "cpu").get("timing") or {}
    return {
        "dir": run.get("_dir", ""),
        "model": run.get("model") or "?",
        "recipe": recipe_name or "?",
        "recipe_full": json.dumps(recipe, indent=2, default=str) if recipe is not None else None,
        "family": run.get("family") or (spec.family if spec is not None else ""),
        "metric": metric,
        "higher": higher,
        "rows": rows,
        "timed": any(r["cpu_p50"] is not None or r["cpu_tput"] is not None for r in rows),
        "fastest": fastest,
        "smallest": smallest,
        "figures": figures,
        "sensitivity": _sensitivity_plots(run.get("sensitivity"), metric),
        "confusions": confusions,
        "per_class": _per_class(entries, class_names),
        "modes": [m for e in entries for m in _modes(e)],
        "provenance": [{"name": e["name"], "format": e.get("format", "?"), "artifact": e.get("artifact"), "seconds": e.get("seconds"),
                        "check": _check_text(e), "steps": json.dumps(e.get("steps") or [], indent=2, default=str)} for e in entries],
        "environment": env,
        "env_json": json.dumps(env, indent=2, default=str),
        "command": run.get("command"),
        "seed": env.get("seed", run.get("seed")),
        "timing": timing,
        "timing_inputs": run.get("timing_inputs"),
        "cpu_name": _lat(original, "cpu").get("device") or env.get("cpu"),
        "cpu_features": _lat(original, "cpu").get("cpu_features") or env.get("cpu_features"),
        "threads": _lat(original, "cpu").get("threads") or env.get("threads"),
        "batch": timing.get("batch") if isinstance(timing, dict) else None,
        "gpu_present": gpu_present,
        "gpu_name": gpu_name,
        "no_gpu": no_gpu and not gpu_present,
        "busy": busy,
        "failed": run.get("failed_variants") or [],
        "step_log": _step_log(run.get("timings")),
        "run_warnings": [str(w) for w in run["warnings"]] if isinstance(run.get("warnings"), list) else [],
        "explain": explain_context(run.get("explain"), Path(run.get("_dir", "."))),
    }


def _check_text(entry: dict[str, Any]) -> str:
    """One line on how a variant was checked against the model it was made from (an ONNX export, an int8 file)."""
    check = entry.get("export_check")
    if isinstance(check, dict):
        steps = entry.get("steps") or [{}]
        # an fp32 export is checked against the PyTorch variant it came from; an int8 file against its float model
        against = "its PyTorch model" if isinstance(steps[-1], dict) and steps[-1].get("step") == "export_onnx" else "its float model"
        figures = []
        if isinstance(check.get("argmax_agreement"), (int, float)):
            figures.append(f"agreement {check['argmax_agreement']:.3f}")
        if isinstance(check.get("max_abs_diff"), (int, float)):
            figures.append(f"max |diff| {check['max_abs_diff']:.2g}")
        verdict = {True: "passed", False: f"FAILED: {check.get('reason', '')}", None: "no pass rule"}.get(check.get("passed"), "?")
        return f"against {against}: {verdict}" + (f" ({', '.join(figures)})" if figures else "")
    export = entry.get("onnx_export")
    if isinstance(export, dict) and not export.get("exported", True):
        return f"no ONNX export: {export.get('reason', 'no reason recorded')}"
    return "–"


def _step_log(timings: Any) -> list[dict[str, Any]]:
    """Each recipe step's outcome as the report lists it: made, skipped (why), or searched (kept, met)."""
    steps = timings.get("steps") if isinstance(timings, dict) else None
    log = []
    for t in steps if isinstance(steps, list) else []:
        if not isinstance(t, dict):
            continue
        search, outcome, warn = t.get("search"), "made its variant", False
        if t.get("skipped"):
            outcome = f"skipped: {t['skipped']}"
        elif isinstance(search, dict):
            warn = not search.get("met")
            outcome = (f"searched {search.get('field')}: kept {search.get('chosen')}, "
                       + (f"within max_drop {search.get('max_drop')}" if not warn else
                          f"none within max_drop {search.get('max_drop')} of the original, so the weakest was kept"))
        warnings = t.get("warnings")
        if isinstance(warnings, list) and warnings:
            warn, outcome = True, "; ".join([outcome, *map(str, warnings)])
        log.append({"step": t.get("step", "?"), "seconds": t.get("seconds"), "outcome": outcome, "warn": warn})
    return log


def comparison(contexts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The side-by-side table for several runs, with a warning when the machines or threads of the timed ones differ."""
    if len(contexts) < 2:
        return None
    rows = []
    for ctx in contexts:
        best = [r for r in ctx["rows"] if r["pareto_latency"] and r["name"] != "original"]
        rows.append({"ctx": ctx, "original": ctx["rows"][0], "fastest": ctx["fastest"], "smallest": ctx["smallest"], "pareto": [r["name"] for r in best],
                     "not_timed": None if ctx["timed"] else NOT_TIMED})
    # an untimed run has no batch and no milliseconds to compare, so it cannot make the others incomparable
    machines = {(c["cpu_name"], c["threads"], c["batch"]) for c in contexts if c["timed"]}
    warning = None
    if len(machines) > 1:
        warning = "These runs were timed on different CPUs, thread counts or batch sizes: compare their speed-ups, not their milliseconds."
    return {"rows": rows, "warning": warning}


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(
        ms=lambda v: "–" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"),
        kib=lambda v: "–" if v is None else (f"{v / 1024:.1f} KiB" if v < 1024**2 else f"{v / 1024**2:.2f} MiB"),
        x=lambda v: "–" if v is None else f"{v:.2g}×" if v < 0.01 else f"{v:.2f}×",  # 0.0045× must not read as 0.00×
        num=lambda v, d=4: "–" if v is None else f"{v:.{d}f}",
        int=lambda v: "–" if v is None else f"{int(v):,}",
        si=lambda v: "–" if v is None else (f"{v / 1e9:.2f} G" if v >= 1e9 else f"{v / 1e6:.2f} M" if v >= 1e6 else f"{v / 1e3:.1f} K" if v >= 1e3 else f"{v:.0f}"),
        pct=lambda v: "–" if v is None else f"{100 * v:.1f}%",
        signed=lambda v, d=4: "–" if v is None else f"{v:+.{d}f}",
    )
    return env


def render_html(runs: Sequence[dict[str, Any]]) -> str:
    """The report's HTML text for already-read runs."""
    runs = list(runs)
    check_comparable(runs)
    contexts = [run_context(r) for r in runs]
    for i, ctx in enumerate(contexts):
        ctx["anchor"] = f"run-{i + 1}"
    return _environment().get_template("report.html.j2").render(
        runs=contexts, comparison=comparison(contexts), generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"), memory_step=MEMORY_STEP_MB,
    )


def render(results: Sequence[dict[str, Any] | str | Path], out_path: str | Path) -> Path:
    """Render runs (results dicts or run folders) into ONE self-contained HTML file, written atomically."""
    out = check_out(out_path, folder=False, example="report.html")  # a folder, a device or a pipe is refused before any work
    runs = [r if isinstance(r, dict) else read_results(r) for r in results]
    for run in runs:
        if (Path(run.get("_dir", "")) / RESULTS_FILE).resolve() == out.resolve():
            raise ReportError(f"--out {out} is the results file of a run being reported; name an .html file")
    html = render_html(runs)
    try:
        write_atomic(out, html.encode("utf-8"))
    except OSError as exc:
        raise ReportError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out
