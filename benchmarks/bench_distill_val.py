"""Choose distillation settings on held-out training digits, never on the test split.

The 4,000 training digits are split once (seed 1234) into 3,000 to train on and 1,000 to validate on.
A resnet-mnist teacher is trained on the 3,000 with the zoo's own recipe, so it has never seen the
validation digits either; then, for each setting and seed, the quarter-width student is distilled and
trained alone on the same 3,000 and both are scored on the 1,000. The test split is not read.

    .venv/bin/python benchmarks/bench_distill_val.py --seeds 0 1 2 --setting base --setting mixup=0.4
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

import zoo
from compress.context import data_for
from compress.distill import DistillConfig, distill
from zoo.datasets import DigitDataset
from zoo.training import fit

PRESET = {"width": 0.25, "temperature": 4.0, "alpha": 0.5, "epochs": 16.0, "lr": 0.003}


def split(train: DigitDataset, held_out: int = 1000, seed: int = 1234) -> tuple[DigitDataset, DigitDataset]:
    """The training digits cut in two: (fit, validation)."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    keep, val = order[held_out:], order[:held_out]
    return (DigitDataset(train.images[keep], train.labels[keep], train.name, "fit", train.source),
            DigitDataset(train.images[val], train.labels[val], train.name, "validation", train.source))


def accuracy(model: torch.nn.Module, data: DigitDataset) -> float:
    """Top-1 accuracy of ``model`` on ``data``."""
    with torch.no_grad():
        return float((model.eval()(data.images).argmax(1) == data.labels).float().mean())


def teacher(digits: DigitDataset, cache: Path) -> torch.nn.Module:
    """resnet-mnist trained with its zoo recipe on the fit digits only (cached)."""
    if cache.exists():
        model = zoo.build("resnet-mnist")
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval()
    model = fit("resnet-mnist", digits, progress=print)
    torch.save(model.state_dict(), cache)
    return model


def parse_setting(text: str) -> tuple[str, dict]:
    """'base' or 'key=value,key=value' over the distill preset."""
    if text == "base":
        return text, {}
    pairs = dict(item.split("=") for item in text.split(","))
    return text, {k: (type(PRESET.get(k, 0.0))(v)) for k, v in pairs.items()}


def main() -> None:
    """Print validation accuracy of distilled and alone students per setting and seed, then the means."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--setting", action="append", default=[], help="'base' or overrides such as mixup=0.4,alpha=0.9")
    ap.add_argument("--cache", default="/tmp/slimlens-val-teacher.pt", help="the teacher's weights, trained once and reused")
    args = ap.parse_args()
    base = data_for("resnet-mnist")
    fit_digits, val = split(base.train)
    t = teacher(fit_digits, Path(args.cache))
    print(f"teacher (fit on {len(fit_digits)}): validation accuracy {accuracy(t, val):.4f}")
    for name, overrides in map(parse_setting, args.setting or ["base"]):
        config = DistillConfig(**{**PRESET, **overrides})
        rows = []
        for seed in args.seeds:
            data = dataclasses.replace(base, train=fit_digits, test=val, source={}, seed=seed)
            start = time.perf_counter()
            out = distill(t, config, data, original=t)
            d, a = accuracy(out["student"].module, val), accuracy(out["alone"].module, val)
            rows.append((d, a))
            print(f"{name} seed {seed}: distilled {d:.4f} alone {a:.4f} gain {100 * (d - a):+.1f} pt ({time.perf_counter() - start:.0f} s)", flush=True)
        md, ma = statistics.mean(r[0] for r in rows), statistics.mean(r[1] for r in rows)
        print(f"== {name}: distilled {md:.4f} alone {ma:.4f} gain {100 * (md - ma):+.2f} pt gap to teacher {100 * (accuracy(t, val) - md):.2f} pt", flush=True)


if __name__ == "__main__":
    main()
