"""The compression benchmark: run each preset on its target model and print the targets side by side.

    .venv/bin/python benchmarks/bench_compress.py                  # all presets (about 30 minutes on 2 idle cores; distill runs five seeds)
    .venv/bin/python benchmarks/bench_compress.py --only edge      # one preset
    .venv/bin/python benchmarks/bench_compress.py --keep runs/     # keep every run folder (results.json, variants)
    .venv/bin/python benchmarks/bench_compress.py --only distill --distill-model lenet5   # the distill figures for another teacher

Speed figures come from ``reports.latencies`` (warm-up, then single calls timed until a minimum count
and time, in rounds that interleave the variants; medians), the same test images for every
variant, batch 8, with the thread count fixed; they are written into the run's results.json as its
``latency`` (kept with ``--keep``).
The machine, its load and the library versions are printed above the table: figures taken on a
shared, loaded machine say so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import compress  # noqa: E402
import reports  # noqa: E402
from zoo.environment import cpu_description  # noqa: E402
from compress.results import write_results  # noqa: E402
from reports.inputs import inputs_description, timing_inputs  # noqa: E402

CASES = (("deep-compression", "lenet5"), ("edge", "resnet-mnist"), ("distill", "resnet-mnist"), ("int8", "seed-lstm"))
WALL_LIMIT_S = 300
Row = tuple[str, str, str, str, str, bool]  # preset, model, figure, target, measured, met


def _by_name(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in results["variants"]}


def _points(entry: dict[str, Any], original: dict[str, Any]) -> float:
    return (original["metrics"]["accuracy"] - entry["metrics"]["accuracy"]) * 100


def deep_compression_rows(run: compress.RunResult, threads: int) -> list[Row]:
    v = _by_name(run.results)
    original, final = v["original"], v["compressed-storage"]
    ratio, drop = original["size_bytes"] / final["size_bytes"], _points(final, original)
    return [("deep-compression", "lenet5", "artifact size ratio (fp32 safetensors / compressed storage)", ">= 40x", f"{ratio:.1f}x", ratio >= 40),
            ("deep-compression", "lenet5", "accuracy drop", "<= 0.5 pt", f"{drop:+.2f} pt", drop <= 0.5)]


def edge_rows(run: compress.RunResult, threads: int) -> list[Row]:
    v = _by_name(run.results)
    final = next(e for e in reversed(run.results["variants"]) if e["steps"] and e["steps"][-1]["step"] == "quantize_static_onnx")
    x = timing_inputs("resnet-mnist", 8)
    names = ("original", "original-onnx", final["name"])
    # reports.latencies interleaves the three variants in rounds (each pools its calls of every round), as a
    # run's own report does. This machine's speed drifts by 15-40 % from one second to the next, so
    # the benchmark takes 12 short rounds (0.5 s per shape and variant) and also prints the ratio
    # within each round, where both variants met the same spell, as a check on the ratio of medians.
    # max_repetitions high enough that a fast variant, too, samples for the whole 0.5 s of its round.
    cfg = reports.TimingConfig(batch=len(x), threads=threads, compile=False, rounds=12, min_seconds=6.0, min_repetitions=360,
                               max_repetitions=200_000)
    timed = reports.latencies([run.variant(n) for n in names], x[:1].clone(), x, ["cpu"], cfg, memory=False)
    cpu = {name: t["cpu"] for name, t in zip(names, timed)}
    # the figures go into the run's results.json as its `latency`, so a kept run (--keep) shows where the table's come from
    for entry in run.results["variants"]:
        if entry["name"] in names:
            entry["latency"] = timed[names.index(entry["name"])]
        else:  # said, so the report does not read the gap as a run made with --no-latency
            entry["latency"] = {"cpu": {"unavailable": "not timed: bench_compress.py times the original, its ONNX export "
                                                       "and the final int8 file only"}}
    run.results.update(timing=cfg.how(), timing_inputs=inputs_description("resnet-mnist"))
    write_results(run.results, run.out_dir / "results.json")
    drop = _points(final, v["original"])
    missing = [f"{n}: {cpu[n]['unavailable']}" for n in names if "unavailable" in cpu[n]]
    if missing:
        return [("edge", "resnet-mnist", f"throughput b8 (not measured: {'; '.join(missing)})", ">= 10x / >= 3x", "-", False),
                ("edge", "resnet-mnist", f"accuracy drop ({final['name']})", "<= 1 pt", f"{drop:+.2f} pt", drop <= 1)]
    speed = {name: cpu[name]["throughput_per_s"] for name in names}
    vs_eager, vs_ort = speed[final["name"]] / speed["original"], speed[final["name"]] / speed["original-onnx"]
    per_s = ", ".join(f"{n} {speed[n]:,.0f}/s [{min(cpu[n]['throughput_per_s_by_round']):,.0f}-{max(cpu[n]['throughput_per_s_by_round']):,.0f}]"
                      for n in names)

    def paired(base: str) -> tuple[str, float | None]:
        mine, theirs = cpu[final["name"]]["throughput_per_s_by_round"], cpu[base]["throughput_per_s_by_round"]
        # by_round lists only the rounds that ran, so after a failed round positions no longer name rounds
        if len(mine) != len(theirs) or cpu[final["name"]].get("failed_rounds") or cpu[base].get("failed_rounds"):
            return "rounds not paired: a round failed for one of them", None
        ratios = [a / b for a, b in zip(mine, theirs)]
        if len(ratios) < 2:
            return (f"within-round ratio {ratios[0]:.1f}x (one round)", ratios[0]) if ratios else ("no round in common", None)
        q = statistics.quantiles(ratios, n=4)
        return f"within-round ratio median {q[1]:.1f}x, quartiles {q[0]:.1f}-{q[2]:.1f}x", q[1]

    # A target counts as met only when the ratio of medians and the median within-round ratio both reach
    # it: when the machine changes speed during the run (ONNX Runtime's two-thread phases, README), the
    # pooled medians of two variants can come from different spells and disagree with the paired ratio.
    (eager_text, eager_paired), (ort_text, ort_paired) = paired("original"), paired("original-onnx")
    return [("edge", "resnet-mnist", f"throughput b8 {threads} threads vs PyTorch eager fp32 ({per_s}; {eager_text})", ">= 10x",
             f"{vs_eager:.1f}x", vs_eager >= 10 and eager_paired is not None and eager_paired >= 10),
            ("edge", "resnet-mnist", f"throughput b8 vs ONNX Runtime fp32 ({ort_text})", ">= 3x", f"{vs_ort:.1f}x",
             vs_ort >= 3 and ort_paired is not None and ort_paired >= 3),
            ("edge", "resnet-mnist", f"accuracy drop ({final['name']})", "<= 1 pt", f"{drop:+.2f} pt", drop <= 1)]


def distill_rows(runs: list[compress.RunResult], threads: int) -> list[Row]:
    # The seed moves the student's gap to the teacher between 0.1 and 1.1 points (1,000 test images; the
    # seed sets the student's initial weights, data order and augmentation), more than the targets
    # themselves, so the targets are judged on the mean of five fixed seeds and every seed is printed.
    per_seed = []
    for run in runs:
        v = _by_name(run.results)
        teacher, student, alone = v["original"], v["distill"], v["distill-alone"]
        per_seed.append((run.results["environment"]["seed"], teacher, student, alone))
    model = runs[0].results["model"]
    ratio = per_seed[0][1]["params"] / per_seed[0][2]["params"]
    gaps = [_points(s, t) for _, t, s, _ in per_seed]
    gains = [-_points(s, a) for _, _, s, a in per_seed]
    gap, gain = statistics.mean(gaps), statistics.mean(gains)
    accs = "; ".join(f"seed {seed}: teacher {t['metrics']['accuracy']:.3f}, student {s['metrics']['accuracy']:.3f}, alone {a['metrics']['accuracy']:.3f}"
                     for seed, t, s, a in per_seed)
    seeds = f"mean of {len(runs)} seeds" if len(runs) > 1 else "one seed"

    def spread(values: list[float]) -> str:
        # the standard error of the mean says how far five seeds' mean can be from the target by chance alone
        se = f" ± {statistics.stdev(values) / len(values) ** 0.5:.2f} s.e." if len(values) > 1 else ""
        return f"{se} [{', '.join(f'{v:+.1f}' for v in values)}]"

    return [("distill", model, "teacher params / student params", ">= 10x", f"{ratio:.1f}x", ratio >= 10),
            ("distill", model, f"student gap to teacher, {seeds} ({accs})", "<= 0.5 pt",
             f"{gap:+.2f} pt{spread(gaps)}", gap <= 0.5),
            ("distill", model, f"student gain over the same student alone, {seeds}", ">= 0.5 pt",
             f"{gain:+.2f} pt{spread(gains)}", gain >= 0.5)]


def int8_rows(run: compress.RunResult, threads: int) -> list[Row]:
    v = _by_name(run.results)
    rows: list[Row] = []
    for name in ("int8-dynamic", "int8-dynamic-onnx"):
        if name in v:
            ratio, drop = v["original"]["size_bytes"] / v[name]["size_bytes"], _points(v[name], v["original"])
            rows.append(("int8", "seed-lstm", f"{name}: size ratio vs fp32 safetensors / accuracy drop", ">= 3.5x / <= 0.3 pt",
                         f"{ratio:.2f}x / {drop:+.2f} pt", ratio >= 3.5 and drop <= 0.3))
    return rows


FIGURES: dict[str, Callable[[Any, int], list[Row]]] = {
    "deep-compression": deep_compression_rows, "edge": edge_rows, "distill": distill_rows, "int8": int8_rows,
}


def machine(threads: int) -> str:
    """One line naming the machine, its load and the libraries."""
    import onnxruntime

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu_description()}, {os.cpu_count()} cores, {threads} threads, load average {load}; "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")


def print_table(rows: list[Row]) -> None:
    """The targets table, one figure per line."""
    header = ("preset", "model", "figure", "target", "measured", "met")
    cells = [header] + [(p, m, f, t, v, "yes" if ok else "NO") for p, m, f, t, v, ok in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    """Run the chosen presets, print the table; exit 1 if a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=[c[0] for c in CASES], help="run only this preset (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", help="folder to keep the run folders in (default: a temporary folder, removed)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--distill-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], metavar="SEED",
                        help="seeds of the distill runs; its targets are judged on their mean (default: 0 1 2 3 4)")
    parser.add_argument("--distill-model", default="resnet-mnist", metavar="NAME",
                        help="the zoo classifier distill runs on, as teacher (default: resnet-mnist, the target's model)")
    args = parser.parse_args(argv)
    import zoo

    if args.distill_model not in zoo.list_models() or zoo.spec(args.distill_model).task != "classification":
        parser.error(f"--distill-model {args.distill_model!r} must be a zoo classifier: "
                     f"{', '.join(m for m in zoo.list_models() if zoo.spec(m).task == 'classification')}")
    torch.set_num_threads(args.threads)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="slimlens-bench-"))
    start_line = machine(args.threads)
    rows: list[Row] = []
    for preset, model in CASES:
        if args.only and preset not in args.only:
            continue
        model = args.distill_model if preset == "distill" else model
        say = (lambda m: None) if args.quiet else (lambda m, p=preset: print(f"[{p}] {m}", file=sys.stderr, flush=True))
        runs, walls = [], []
        for seed in (dict.fromkeys(args.distill_seeds) if preset == "distill" else [0]):
            started = time.perf_counter()
            runs.append(compress.run(model, preset, out_dir=root / f"{preset}-{model}-seed{seed}", progress=say, seed=seed,
                                     command=f"python benchmarks/bench_compress.py --only {preset}"))
            walls.append(time.perf_counter() - started)
        rows += FIGURES[preset](runs if preset == "distill" else runs[0], args.threads)
        wall = max(walls)
        rows.append((preset, model, "wall time of the preset (compress.run, slowest seed)" if len(walls) > 1 else "wall time of the preset (compress.run)",
                     f"<= {WALL_LIMIT_S} s", f"{wall:.0f} s", wall <= WALL_LIMIT_S))
    print(f"machine: {start_line}")
    print(f"machine at the end: {machine(args.threads)}")
    print_table(rows)
    if args.keep:
        (root / "bench.json").write_text(json.dumps({"machine": start_line, "rows": rows}, indent=2) + "\n")
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
