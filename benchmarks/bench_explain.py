"""Benchmarks for explain/ (not timed tests): faithfulness curves, attribute() overhead, a full explain run.

    python benchmarks/bench_explain.py [--repeats 5] [--full-repeats 1]

Runs with torch.set_num_threads(2) (the 2-core target). Prints medians of wall-clock and process
CPU time; on a shared machine the CPU time is the steadier figure.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from captum.attr import IntegratedGradients

import explain
import zoo
from explain.run import Request, run


def _timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``repeats`` calls of ``fn``."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def bench_curves(repeats: int) -> None:
    """Deletion + insertion curves (28 steps) and AUCs for 100 seed-cnn test images; target <= 10 s."""
    model = zoo.load("seed-cnn")
    data = zoo.dataset("mnist", "test")
    x, y = data.images[::10][:100], data.labels[::10][:100]
    maps = explain.attribute(model, x, y, "saliency")
    wall, cpu = _timed(lambda: explain.deletion_insertion(model, x, maps, y), repeats)
    print(f"deletion+insertion AUC, 100 images x 29 steps x 2 curves: median {wall:.2f} s wall, {cpu:.2f} s CPU (target <= 10 s)")


def bench_overhead(repeats: int) -> None:
    """explain.attribute against IntegratedGradients(model).attribute, same inputs, interleaved; target <= 5%."""
    model = zoo.load("seed-cnn")
    data = zoo.dataset("mnist", "test")
    x, y = data.images[:16], data.labels[:16]
    direct = IntegratedGradients(model)
    ours, theirs = [], []
    for _ in range(2):  # warm-up
        direct.attribute(x, target=y)
        explain.attribute(model, x, y)
    for _ in range(repeats):  # interleaved, so drifting machine load hits both alike
        t = time.perf_counter()
        direct.attribute(x, target=y)
        theirs.append(time.perf_counter() - t)
        t = time.perf_counter()
        explain.attribute(model, x, y)
        ours.append(time.perf_counter() - t)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"IG on seed-cnn, 16 images, Captum defaults: explain.attribute {a * 1000:.1f} ms, Captum direct {b * 1000:.1f} ms, "
          f"overhead {100 * (a - b) / b:+.1f}% (medians of {repeats}; target <= 5%)")


def bench_full_run(repeats: int) -> None:
    """slimlens explain seed-cnn, 4 methods, 16 images, trust metrics, PNGs and JSON; target <= 60 s."""
    methods = ["integrated_gradients", "saliency", "gradcam", "occlusion"]

    def once() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            run(Request(model="seed-cnn", out=Path(tmp) / "out", methods=methods, samples=16))

    wall, cpu = _timed(once, repeats)
    print(f"full explain run (seed-cnn, {','.join(methods)}, 16 images, trust): median {wall:.1f} s wall, {cpu:.1f} s CPU (target <= 60 s)")


def main() -> None:
    """Run the three benchmarks and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--full-repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_curves(args.repeats)
    bench_overhead(args.repeats)
    bench_full_run(args.full_repeats)


if __name__ == "__main__":
    main()
