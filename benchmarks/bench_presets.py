"""Wall time of every preset on every zoo model, as a user runs it: the whole `slimlens compress` command.

    .venv/bin/python benchmarks/bench_presets.py                       # 5 presets x 9 models (about 40 minutes on 2 idle cores)
    .venv/bin/python benchmarks/bench_presets.py --models seed-cnn,lenet5 --presets int8,edge

Each run is a fresh process (import, compression, ONNX exports, latency, report.html) with the thread
count fixed, so the time is what the command line costs. A preset that does not apply to a model's
family says so in one line and exits 2; that counts as an answer, not a failure. The target is
<= 300 s per run; the table ends with the slowest run and exits 1 if any run is over it or crashed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

LIMIT_S = 300
PRESETS = ("int8", "prune-structured", "distill", "deep-compression", "edge")


def run_one(model: str, preset: str, out: Path, threads: int) -> tuple[float, int, str, list[str]]:
    """(seconds, exit code, last line of output, warning lines) of one `slimlens compress` command."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "cli", "compress", model, "--recipe", preset, "--out", str(out), "--quiet"]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=2 * LIMIT_S,
                              cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, -1, f"killed after {2 * LIMIT_S} s", []
    seconds = time.perf_counter() - start
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip() and "Warning" not in line]
    warnings = [line for line in lines if line.startswith("warning:")]  # --quiet keeps slimlens's own warnings
    return seconds, done.returncode, lines[-1][:110] if lines else "", warnings


def main(argv: list[str] | None = None) -> int:
    """Run the chosen model x preset pairs and print one line per run; exit 1 if any is over the limit or crashed."""
    import zoo
    from benchmarks.bench_compress import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(zoo.list_models()))
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"machine: {machine(args.threads)}", flush=True)
    print(f"{'model':20s} {'preset':18s} {'seconds':>8s}  result", flush=True)
    worst, bad = 0.0, 0
    with tempfile.TemporaryDirectory(prefix="slimlens-presets-") as tmp:
        for model in args.models.split(","):
            for preset in args.presets.split(","):
                seconds, code, last, warnings = run_one(model, preset, Path(tmp) / f"{model}-{preset}", args.threads)
                verdict = "ok" if code == 0 else ("refused: " + last if code == 2 else f"FAILED (exit {code}): {last}")
                over = seconds > LIMIT_S
                bad += over or code not in (0, 2)
                worst = max(worst, seconds)
                print(f"{model:20s} {preset:18s} {seconds:8.1f}  {verdict}{'  OVER THE LIMIT' if over else ''}", flush=True)
                for warning in warnings:
                    print(f"{'':48s}{warning}", flush=True)
    print(f"machine at the end: {machine(args.threads)}")
    print(f"slowest run {worst:.0f} s (limit {LIMIT_S} s); {bad} run(s) over the limit or failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
