"""Pruning benchmark: Deep Compression on LeNet-5 (size ratio, accuracy drop) and structured pruning of resnet-mnist.

    .venv/bin/python benchmarks/bench_prune.py                 # both (a few minutes on 2 idle cores)
    .venv/bin/python benchmarks/bench_prune.py --only deep     # or --only structured

Deep Compression target: the .slz artifact ≥40x smaller than the float32 safetensors of the original
LeNet-5 at ≤0.5 point accuracy drop on the 1,000-image test split; accuracy is that of the artifact
decoded back through ``load_variant``. Latency: ``reports.latency.time_calls`` (10 warm-up calls,
then single calls timed for ≥30 repetitions and ≥0.5 s; median and p90), eager PyTorch, batch 8,
2 threads, the same test images before and after. The machine and its load are printed first:
on a loaded, shared machine timings are noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import zoo  # noqa: E402
from compress.context import data_for  # noqa: E402
from compress.prune import PruneStructuredConfig, PruneUnstructuredConfig, prune_structured, prune_unstructured  # noqa: E402
from compress.sharing import WeightSharingConfig, share_weights  # noqa: E402
from compress.sparse import CompressedStorageConfig, compressed_storage  # noqa: E402
from compress.variant import TorchVariant, load_variant  # noqa: E402
from reports.latency import TimingConfig, time_calls, torch_threads  # noqa: E402
from zoo.cards import weights_path  # noqa: E402
from zoo.footprint import module_macs, module_params  # noqa: E402

# Han et al.'s LeNet-5 kept 66/12/8/19 % of conv1/conv2/fc1/fc2; ours follows the sensitivity curves the same way
DEEP_PRUNE = PruneUnstructuredConfig(sparsity=0.93, epochs=3.0, distill=0.7,
                                     layer_sparsity=(("features.1", 0.2), ("features.3", 0.75), ("head", 0.6)))
DEEP_SHARE = WeightSharingConfig(bits=4, epochs=1.0)
STRUCTURED = PruneStructuredConfig(ratio=0.5, steps=3, epochs=3.0)


def machine() -> str:
    """One line naming the CPU, its cores and current load."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.1f}, torch {torch.__version__}"


def deep_compression(out: Path) -> None:
    """Prune → fine-tune → share weights → compressed storage on LeNet-5, then reload and score the artifact."""
    data = data_for("lenet5")
    original = zoo.load("lenet5")
    base = data.evaluate(original)["accuracy"]
    start = time.perf_counter()
    pruned = prune_unstructured(original, DEEP_PRUNE, data)
    shared = share_weights(pruned, DEEP_SHARE, data, original=original)
    variant = compressed_storage(shared, CompressedStorageConfig(), data)
    variant.name = "lenet5-deep-compression"
    reloaded = load_variant(variant.save(out))
    seconds = time.perf_counter() - start
    accuracy = data.evaluate(reloaded)["accuracy"]
    dense, packed = weights_path("lenet5").stat().st_size, variant.artifact.stat().st_size
    counts = module_params(reloaded.module)
    total, nonzero = counts["params"], counts["nonzero_params"]
    ratio, drop = dense / packed, (base - accuracy) * 100
    print("\n## deep-compression on lenet5")
    print(f"{'':24}{'original':>12}{'compressed':>12}")
    print(f"{'bytes on disk':24}{dense:>12,}{packed:>12,}   ratio {ratio:.1f}x (target ≥40x; Deep Compression 39x)")
    print(f"{'nonzero params':24}{total:>12,}{nonzero:>12,}   {1 - nonzero / total:.1%} zero")
    print(f"{'accuracy (1,000 test)':24}{base:>12.3f}{accuracy:>12.3f}   drop {drop:.2f} points (target ≤0.5)")
    print(f"time {seconds:.0f} s; target {'MET' if ratio >= 40 and drop <= 0.5 else 'NOT met'}")


def structured(out: Path) -> None:
    """Structured channel pruning of resnet-mnist: params, MACs, eager latency and accuracy before and after."""
    data = data_for("resnet-mnist")
    original = zoo.load("resnet-mnist")
    start = time.perf_counter()
    pruned = prune_structured(original, STRUCTURED, data)
    seconds = time.perf_counter() - start
    reloaded = load_variant(TorchVariant(name="resnet-pruned", source=data.source, module=pruned).save(out))
    before, after = TorchVariant(name="original", source=data.source, module=original), reloaded
    example, batch = data.example_input(1), data.inputs(8, split="test", seed=1)
    timing = TimingConfig(batch=8, threads=2, compile=False)
    rows = []
    for variant in (before, after):
        with torch_threads(timing.threads):
            latency = time_calls(variant, batch, timing)
        rows.append((module_params(variant.module)["params"], module_macs(variant.module, example), latency,
                     data.evaluate(variant)["accuracy"]))
    print(f"\n## prune-structured (ratio {STRUCTURED.ratio}, {STRUCTURED.steps} rounds, {STRUCTURED.epochs} epochs) on resnet-mnist")
    print(f"{'':28}{'original':>12}{'pruned':>12}")
    print(f"{'params':28}{rows[0][0]:>12,}{rows[1][0]:>12,}   {rows[0][0] / rows[1][0]:.1f}x fewer")
    print(f"{'MACs / image':28}{rows[0][1]:>12,}{rows[1][1]:>12,}   {rows[0][1] / rows[1][1]:.1f}x fewer")
    for key, label in (("p50_ms", "eager batch 8, 2 thr p50 ms"), ("p90_ms", "eager batch 8, 2 thr p90 ms")):
        print(f"{label:28}{rows[0][2][key]:>12.2f}{rows[1][2][key]:>12.2f}   {rows[0][2][key] / rows[1][2][key]:.1f}x faster")
    print(f"{'accuracy (1,000 test)':28}{rows[0][3]:>12.3f}{rows[1][3]:>12.3f}   drop {(rows[0][3] - rows[1][3]) * 100:.2f} points")
    print(f"time {seconds:.0f} s; repetitions {rows[0][2]['repetitions']} / {rows[1][2]['repetitions']}")


def main() -> None:
    """Run the chosen benchmarks and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("deep", "structured"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"machine: {machine()} (shared with other work: timings are noisy)")
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        if args.only in (None, "deep"):
            deep_compression(Path(tmp))
        if args.only in (None, "structured"):
            structured(Path(tmp))


if __name__ == "__main__":
    main()
