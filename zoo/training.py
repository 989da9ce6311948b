"""``train``: retrain a zoo model from scratch with its registered recipe and seed, and write weights and card.

The data order and the augmentation draw from generators seeded by the recipe, so a retrain
reproduces the committed card's metrics within run-to-run float noise.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from zoo.cards import GAN_PAIR_INSTALLING, ModelCard, card_path, check_out, weights_path, write_card, writing
from zoo.datasets import DigitDataset, dataset
from zoo.evaluate import evaluate
from zoo.registry import MNIST_MEAN, MNIST_STD, ModelSpec, TrainRecipe, build, spec
from zoo.weights import save_state_dict

QUICK_TRAIN_IMAGES = 512
Progress = Callable[[str], None]


def random_affine(images: torch.Tensor, gen: torch.Generator, degrees: float = 10.0, shift_px: float = 2.0, scale: float = 0.1) -> torch.Tensor:
    """Rotate, scale and shift each image by its own small random amount (a batched augmentation)."""
    n = images.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(degrees)
    factor = 1 + (torch.rand(n, generator=gen) * 2 - 1) * scale
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * shift_px / images.shape[-1])
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def _optimizer(params, recipe: TrainRecipe) -> torch.optim.Optimizer:
    betas = tuple(recipe.extra.get("betas", (0.9, 0.999)))
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=betas)
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=betas)


def _batches(n: int, batch_size: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def _train_supervised(model: nn.Module, model_spec: ModelSpec, data: DigitDataset, epochs: int, progress: Progress) -> None:
    recipe = model_spec.recipe
    gen = torch.Generator().manual_seed(recipe.seed)
    opt = _optimizer(model.parameters(), recipe)
    steps = epochs * math.ceil(len(data) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.15)
    clip = recipe.extra.get("clip_grad_norm")
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for idx in _batches(len(data), recipe.batch_size, gen):
            x, y = data.images[idx], data.labels[idx]
            if recipe.augment:
                x = random_affine(x, gen)
            out = model(x)
            if model_spec.task == "classification":
                loss = F.cross_entropy(out, y)
            elif model_spec.task == "binary-classification":
                loss = F.binary_cross_entropy(out[:, 0].clamp(1e-7, 1 - 1e-7), y.float())
            else:  # reconstruction
                loss = F.mse_loss(out, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            count += len(idx)
        progress(f"{model_spec.name} epoch {epoch + 1}/{epochs} loss {total / count:.4f}")


def _train_gan(gen_model: nn.Module, disc: nn.Module, recipe: TrainRecipe, data: DigitDataset, epochs: int, progress: Progress) -> None:
    gen = torch.Generator().manual_seed(recipe.seed)
    betas = tuple(recipe.extra.get("betas", (0.5, 0.999)))
    opt_g = torch.optim.Adam(gen_model.parameters(), lr=recipe.lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=recipe.lr, betas=betas)
    latent_dim = gen_model.latent_dim
    for epoch in range(epochs):
        gen_model.train()
        disc.train()
        loss_d_sum = loss_g_sum = 0.0
        batches = 0
        for idx in _batches(len(data), recipe.batch_size, gen):
            real = data.images[idx]
            n = len(idx)
            z = torch.randn(n, latent_dim, generator=gen)
            fake = gen_model(z)
            # One-sided label smoothing (Salimans et al., 2016) keeps D from saturating on 4,000 images.
            loss_d = F.binary_cross_entropy_with_logits(disc(real), torch.full((n, 1), 0.9)) + F.binary_cross_entropy_with_logits(
                disc(fake.detach()), torch.zeros(n, 1)
            )
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            loss_g = F.binary_cross_entropy_with_logits(disc(fake), torch.ones(n, 1))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            loss_d_sum += loss_d.item()
            loss_g_sum += loss_g.item()
            batches += 1
        progress(f"dcgan epoch {epoch + 1}/{epochs} loss_d {loss_d_sum / batches:.3f} loss_g {loss_g_sum / batches:.3f}")


def _make_card(model_spec: ModelSpec, model: nn.Module, data: DigitDataset, test_size: int, metrics: dict, sha: str, path: Path,
               seconds: float, epochs: int, quick: bool, extra: dict | None = None) -> ModelCard:
    return ModelCard(
        name=model_spec.name,
        family=model_spec.family,
        task=model_spec.task,
        description=model_spec.description,
        dataset={"name": model_spec.dataset, "source": data.source, "train_size": len(data), "test_size": test_size},
        input={
            "shape": list(model_spec.input_shape),
            "dtype": "float32",
            "range": [0.0, 1.0] if model_spec.task != "generation" else None,
            "normalisation": None if model_spec.family in ("autoencoder",) or model_spec.task == "generation"
            else ({"mean": 0.5, "std": 0.5} if model_spec.task == "discrimination" else {"mean": MNIST_MEAN, "std": MNIST_STD}),
            "normalisation_applied": "inside the model: feed [0, 1] pixels" if model_spec.task != "generation" else "latent ~ N(0, I)",
        },
        class_names=list(model_spec.class_names),
        params=sum(p.numel() for p in model.parameters()),
        metrics=metrics,
        primary_metric=model_spec.primary_metric,
        higher_is_better=model_spec.higher_is_better,
        weights={"file": path.name, "sha256": sha, "bytes": path.stat().st_size, "format": "safetensors"},
        training={
            "seconds": round(seconds, 3),
            "seed": model_spec.recipe.seed,
            "epochs": epochs,
            "quick": quick,
            "recipe": asdict(model_spec.recipe),
            "command": f"slimlens zoo train {model_spec.name}" + (" --quick" if quick else ""),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            **({"trained_with": model_spec.trained_with} if model_spec.trained_with else {}),
        },
        extra=extra or {},
    )


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}


def train(name: str, out: str | Path | None = None, quick: bool = False, data_root: str | Path | None = None,
          progress: Progress = lambda message: None) -> list[ModelCard]:
    """Retrain zoo model ``name`` from scratch and write its weights and card under ``out``.

    Returns the new cards: one, or two for a GAN (generator and discriminator train together).
    ``quick`` trains one short epoch on 512 images: a smoke test, not a usable model.
    """
    # Seeding inside a forked RNG makes the run reproducible without disturbing the caller's stream.
    with torch.random.fork_rng():
        return _train(name, out, quick, data_root, progress)


def fit(name: str, data: DigitDataset, progress: Progress = lambda message: None) -> nn.Module:
    """A fresh classifier or autoencoder ``name`` trained with its zoo recipe on ``data`` (e.g. a subset), nothing written."""
    model_spec = spec(name)
    if model_spec.family == "gan":
        raise ValueError(f"{name} trains as a GAN pair; use train()")
    with torch.random.fork_rng():
        torch.manual_seed(model_spec.recipe.seed)
        model = build(name)
        _train_supervised(model, model_spec, data, model_spec.recipe.epochs, progress)
    return model.eval()


def _into_marker(staging: Path, installing: Path) -> None:
    """Make ``installing`` hold exactly the staged pair, never passing through an empty marker once one holds files."""
    if installing.is_dir() and any(installing.iterdir()):
        # An earlier install was interrupted and only this non-empty marker keeps its mixed pair from
        # loading: overwrite file by file (each rename is atomic), then drop names the new pair lacks.
        staged = {path.name for path in staging.iterdir()}
        for name in sorted(staged):
            os.replace(staging / name, installing / name)
        for path in installing.iterdir():
            if path.name not in staged:
                path.unlink()
        staging.rmdir()
        return
    if installing.is_dir():
        installing.rmdir()  # empty: an install that ended after its last move
    os.replace(staging, installing)


@contextlib.contextmanager
def _install_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` so that two GAN installs into it run one after the other."""
    try:
        import fcntl
    except ImportError:  # Windows has no flock: concurrent installs into one folder stay unguarded there
        yield
        return
    # Locking the folder itself leaves no lock file behind; the kernel drops the lock if the process dies.
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_gan_pair(pair: tuple[tuple[ModelSpec, nn.Module], ...], folder: Path, out: Path, data: DigitDataset, test_size: int,
                    seconds: float, epochs: int, quick: bool, data_root: str | Path | None) -> list[ModelCard]:
    """Write the generator's and discriminator's weights and cards into ``folder`` (staged inside ``out``); return the cards."""
    saved = []
    for s, m in pair:
        path = weights_path(s.name, folder)
        with writing(out):  # a write error names --out; reading data or the judge below stays its own error
            saved.append((s, m, path, save_state_dict(m.eval(), path)))
    written = []
    for s, m, path, sha in saved:  # the discriminator's metric loads the new generator from ``folder``
        metrics = _rounded(evaluate(s.name, m, data_root=data_root, weights_root=folder))
        extra = {}
        if s.task == "generation":
            real_train = dataset("mnist", "train", root=data_root)
            from zoo import metrics as zm
            from zoo.loading import load

            judge = load("seed-cnn")
            n = zm.GAN_EVAL_SAMPLES
            # The floor a perfect generator would reach: real training digits against the real test split.
            pick = torch.randperm(len(real_train), generator=torch.Generator().manual_seed(0))[:n]
            extra["fd_real_train_vs_test"] = round(
                zm.frechet_distance(zm.batched_outputs(judge.features, real_train.images[pick]).numpy(),
                                    zm.batched_outputs(judge.features, dataset("mnist", "test", root=data_root).images).numpy()), 4)
            extra["judge"] = "seed-cnn (features: its 64-unit penultimate layer)"
            extra["samples_command"] = "slimlens zoo samples dcgan-g --out dcgan-samples.png"
        model_card = _make_card(s, m, data, test_size, metrics, sha, path, seconds, epochs, quick, extra)
        with writing(out):
            write_card(model_card, folder)
        written.append(model_card)
    return written


def _train(name: str, out: str | Path | None, quick: bool, data_root: str | Path | None, progress: Progress) -> list[ModelCard]:
    model_spec = spec(name)
    out = Path(out) if out is not None else None
    if out is None:
        from zoo.cards import TRAINED_DIR

        out = TRAINED_DIR
    check_out(out, folder=True)  # before training: a bad --out must not cost minutes of work first
    torch.manual_seed(model_spec.recipe.seed)
    data = dataset(model_spec.dataset, "train", root=data_root)
    test_size = len(dataset(model_spec.dataset, "test", root=data_root))
    if quick:
        keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:QUICK_TRAIN_IMAGES]
        data = DigitDataset(data.images[keep], data.labels[keep], data.name, data.split, data.source)
    epochs = model_spec.recipe.quick_epochs if quick else model_spec.recipe.epochs

    if model_spec.family == "gan":
        g_spec, d_spec = spec("dcgan-g"), spec("dcgan-d")
        g_model, d_model = build("dcgan-g"), build("dcgan-d")
        start = time.perf_counter()
        _train_gan(g_model, d_model, g_spec.recipe, data, epochs, progress)
        seconds = time.perf_counter() - start
        # The pair is written to a hidden folder inside ``out`` and moved into place only once both
        # weights and both cards exist: a failure part-way (an evaluation, a full disk, Ctrl-C) must not
        # leave a new generator beside an old discriminator, or weights whose card names another sha256.
        with writing(out):
            out.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=out, prefix=".dcgan-pair.", suffix=".partial"))
        try:
            written = _write_gan_pair(((g_spec, g_model), (d_spec, d_model)), staging, out, data, test_size, seconds,
                                      epochs, quick, data_root)
            with writing(out), _install_lock(out):
                # Four renames are not atomic as a group: the complete pair first fills the marker folder,
                # so an interruption among the four leaves it non-empty and loading refuses. Another
                # train into the same folder waits for the lock, so two pairs never interleave.
                installing = out / GAN_PAIR_INSTALLING
                _into_marker(staging, installing)
                for model_card in written:
                    for staged in (weights_path(model_card.name, installing), card_path(model_card.name, installing)):
                        os.replace(staged, out / staged.name)
                installing.rmdir()
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return written

    model = build(name)
    start = time.perf_counter()
    _train_supervised(model, model_spec, data, epochs, progress)
    seconds = time.perf_counter() - start
    model.eval()
    path = weights_path(name, out)
    with writing(path):
        sha = save_state_dict(model, path)
    metrics = _rounded(evaluate(name, model, data_root=data_root))
    model_card = _make_card(model_spec, model, data, test_size, metrics, sha, path, seconds, epochs, quick)
    with writing(card_path(name, out)):
        write_card(model_card, out)
    return [model_card]
