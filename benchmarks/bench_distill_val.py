"""Choose distillation settings on held-out training digits, never on the test split.

The 4,000 training digits are split once (seed 1234) into 3,000 to train on and 1,000 to validate on.
A resnet-mnist teacher is trained on the 3,000 with the zoo's own recipe, so it has never seen the
validation digits either; then, for each setting and seed, the preset's student (or the setting's) is
distilled and trained alone on the same 3,000, and both are scored on the 1,000. No figure comes from
the test split.

    .venv/bin/python benchmarks/bench_distill_val.py --seeds 0 1 2 --setting base --setting mixup=0.4
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

import zoo
from compress.context import data_for
from compress.distill import DistillConfig, distill
from compress.recipe import load_recipe
from zoo.datasets import DigitDataset
from zoo.training import fit



def preset_config() -> DistillConfig:
    """The `distill` preset's step for CNNs, the one the target is judged on."""
    return next(s.config for s in load_recipe("distill").steps if s.families is None or "cnn" in s.families)


def split(train: DigitDataset, held_out: int = 1000, seed: int = 1234) -> tuple[DigitDataset, DigitDataset]:
    """The training digits cut in two: (fit, validation)."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    keep, val = order[held_out:], order[:held_out]
    return (DigitDataset(train.images[keep], train.labels[keep], train.name, "fit", train.source),
            DigitDataset(train.images[val], train.labels[val], train.name, "validation", train.source))


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
    """'base' or 'key=value,key=value' over the distill preset, each value of its DistillConfig field's type."""
    if text == "base":
        return text, {}
    defaults = preset_config()
    overrides = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if not hasattr(defaults, key):
            raise SystemExit(f"bench_distill_val: {key!r} is not a distill setting (see `slimlens steps distill`)")
        kind = type(getattr(defaults, key))
        overrides[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return text, overrides


def main() -> None:
    """Print validation accuracy of distilled and alone students per setting and seed, then the means."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--setting", action="append", default=[], help="'base' or overrides such as mixup=0.4,alpha=0.9")
    ap.add_argument("--cache", default=None, help="where the teacher's weights are kept for reuse (default: the temp folder, "
                    "named by the split and torch version)")
    args = ap.parse_args()
    base = data_for("resnet-mnist")
    fit_digits, val = split(base.train)
    cache = Path(args.cache or Path(tempfile.gettempdir()) / f"slimlens-val-teacher-{len(val)}-seed1234-torch{torch.__version__}.pt")
    t = teacher(fit_digits, cache)
    # with no zoo source, evaluate() scores on its `test` digits: here the held-out ones
    held_out = dataclasses.replace(base, train=fit_digits, test=val, source={})
    teacher_accuracy = held_out.evaluate(t)["accuracy"]
    print(f"teacher (fit on {len(fit_digits)}): validation accuracy {teacher_accuracy:.4f}")
    for name, overrides in map(parse_setting, args.setting or ["base"]):
        config = dataclasses.replace(preset_config(), **overrides)
        rows = []
        for seed in args.seeds:
            data = dataclasses.replace(held_out, seed=seed)
            start = time.perf_counter()
            out = distill(t, config, data, original=t)
            d, a = data.evaluate(out["student"])["accuracy"], data.evaluate(out["alone"])["accuracy"]
            rows.append((d, a))
            print(f"{name} seed {seed}: distilled {d:.4f} alone {a:.4f} gain {100 * (d - a):+.1f} pt ({time.perf_counter() - start:.0f} s)", flush=True)
        md, ma = statistics.mean(r[0] for r in rows), statistics.mean(r[1] for r in rows)
        print(f"== {name}: distilled {md:.4f} alone {ma:.4f} gain {100 * (md - ma):+.2f} pt gap to teacher {100 * (teacher_accuracy - md):.2f} pt", flush=True)


if __name__ == "__main__":
    main()
