"""Training smoke tests, one per family, and reproducibility of a retrain from the card's seed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoo
from zoo.training import train


@pytest.mark.parametrize("name", ["seed-cnn", "seed-lstm", "seed-autoencoder", "simplenet"])
def test_quick_training_writes_a_loadable_model_and_card(tmp_path, name):
    (card,) = train(name, out=tmp_path, quick=True)
    assert card.training["quick"] and card.training["seconds"] > 0
    assert (tmp_path / f"{name}.safetensors").is_file() and (tmp_path / f"{name}.card.json").is_file()
    model = zoo.load(name, root=tmp_path)
    assert zoo.card(name, tmp_path).metrics == card.metrics
    metric = card.metrics[card.primary_metric]
    # Cards store metrics rounded to 5 decimals.
    assert metric == pytest.approx(zoo.evaluate(name, forward=model)[card.primary_metric], abs=1e-5)


def test_quick_gan_training_writes_both_halves(tmp_path):
    cards = train("dcgan-g", out=tmp_path, quick=True)
    assert [c.name for c in cards] == ["dcgan-g", "dcgan-d"]
    assert {"fd", "confident_fraction"} <= set(cards[0].metrics)
    assert 0.0 <= cards[1].metrics["accuracy"] <= 1.0
    with torch.no_grad():
        images = zoo.load("dcgan-g", root=tmp_path)(zoo.latents(4))
    assert images.shape == (4, 1, 28, 28) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0


def test_retraining_with_the_card_seed_is_reproducible(tmp_path):
    first = train("softmax-regression", out=tmp_path / "a", quick=True)[0]
    second = train("softmax-regression", out=tmp_path / "b", quick=True)[0]
    assert first.weights["sha256"] == second.weights["sha256"]
    assert first.metrics == second.metrics


def test_cli_quick_train_and_samples(tmp_path):
    out = tmp_path / "zoo"
    result = subprocess.run([sys.executable, "-m", "cli", "zoo", "train", "simplenet", "--quick", "--quiet", "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "simplenet: accuracy" in result.stdout and (out / "simplenet.safetensors").is_file()
    png = tmp_path / "grid.png"
    result = subprocess.run([sys.executable, "-m", "cli", "zoo", "samples", "dcgan-g", "--n", "16", "--out", str(png)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    from PIL import Image

    with Image.open(png) as img:
        assert img.size == (4 * 30 + 2, 4 * 30 + 2)


def test_quick_training_leaves_the_global_rng_usable(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train("simplenet", out=tmp_path, quick=True)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), expected)


def test_fit_trains_a_zoo_architecture_on_a_subset_without_touching_the_callers_rng():
    from zoo.datasets import DigitDataset
    from zoo.training import fit

    train_split, test = zoo.dataset("mnist", "train"), zoo.dataset("mnist", "test")
    subset = DigitDataset(train_split.images[:300], train_split.labels[:300], "mnist", "subset", train_split.source)
    state = torch.random.get_rng_state()
    model = fit("softmax-regression", subset)
    assert torch.equal(state, torch.random.get_rng_state())
    with torch.no_grad():
        accuracy = (model(test.images).argmax(1) == test.labels).float().mean()
    assert not model.training and accuracy > 0.75  # 300 digits already teach a linear classifier most of the task
    with pytest.raises(ValueError, match="GAN pair"):
        fit("dcgan-g", subset)


def test_evaluate_scores_a_module_in_training_mode_without_changing_it():
    model = zoo.load("resnet-mnist").train()  # BatchNorm in training mode would move its statistics and score per batch
    model.stem[2].eval()  # one layer the caller froze on purpose
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert zoo.evaluate("resnet-mnist", forward=model)["accuracy"] == zoo.card("resnet-mnist").metrics["accuracy"]
    assert model.training and not model.stem[2].training and model.layer1.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_gan_training_that_fails_part_way_leaves_the_old_pair(tmp_path, monkeypatch):
    import shutil

    import zoo.training
    from zoo.cards import TRAINED_DIR

    for name in ("dcgan-g", "dcgan-d"):
        for suffix in (".safetensors", ".card.json"):
            shutil.copy(TRAINED_DIR / f"{name}{suffix}", tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_evaluate = zoo.training.evaluate

    def evaluate_then_stop(name, *args, **kwargs):
        if name == "dcgan-d":  # the generator's new weights and card are ready by now
            raise KeyboardInterrupt
        return real_evaluate(name, *args, **kwargs)

    monkeypatch.setattr(zoo.training, "evaluate", evaluate_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train("dcgan-g", out=tmp_path, quick=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no new generator, no staging folder left
    zoo.load("dcgan-g", root=tmp_path), zoo.load("dcgan-d", root=tmp_path)


def test_an_interrupted_gan_pair_install_is_refused_until_trained_again(tmp_path, monkeypatch):
    import shutil

    from zoo.cards import GAN_PAIR_INSTALLING, TRAINED_DIR
    from zoo.errors import WeightsError

    for name in ("dcgan-g", "dcgan-d"):
        for suffix in (".safetensors", ".card.json"):
            shutil.copy(TRAINED_DIR / f"{name}{suffix}", tmp_path)
    installing = tmp_path / GAN_PAIR_INSTALLING
    installing.mkdir()
    (installing / "dcgan-d.card.json").write_bytes((TRAINED_DIR / "dcgan-d.card.json").read_bytes())  # not yet moved
    (installing / "stray.tmp").write_bytes(b"")  # a name the new pair lacks goes too
    for name in ("dcgan-g", "dcgan-d"):
        with pytest.raises(WeightsError, match=rf"holds a GAN pair whose install was interrupted .* zoo train {name} --out"):
            zoo.load(name, root=tmp_path)
    zoo.load("seed-cnn")  # other models, and the package's own pair, are not affected
    zoo.load("dcgan-g")
    real_replace = os.replace

    def stop_inside_the_marker(source, target):
        if installing in (Path(target), Path(target).parent):  # a retrain is interrupted as it first fills the marker
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", stop_inside_the_marker)
    with pytest.raises(KeyboardInterrupt):
        train("dcgan-g", out=tmp_path, quick=True)
    monkeypatch.undo()
    with pytest.raises(WeightsError, match="install was interrupted"):  # the marker never went empty
        zoo.load("dcgan-g", root=tmp_path)
    cards = train("dcgan-g", out=tmp_path, quick=True)
    assert not installing.exists() and sorted(c.name for c in cards) == ["dcgan-d", "dcgan-g"]
    assert zoo.load("dcgan-g", root=tmp_path) is not None and zoo.load("dcgan-d", root=tmp_path) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dcgan-d.card.json", "dcgan-d.safetensors", "dcgan-g.card.json", "dcgan-g.safetensors"]


def test_a_gan_install_waits_while_another_install_holds_the_folder(tmp_path):
    import threading
    import time

    from zoo.cards import GAN_PAIR_INSTALLING

    fcntl = pytest.importorskip("fcntl")  # POSIX only, like the lock itself
    held = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # what a concurrent `zoo train dcgan-g --out tmp_path` holds while it installs
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(train("dcgan-g", out=tmp_path, quick=True)))
    worker.start()
    try:
        deadline = time.monotonic() + 300
        while not any(len(list(p.iterdir())) == 4 for p in tmp_path.glob(".dcgan-pair.*.partial")):
            assert worker.is_alive() and time.monotonic() < deadline, outcome
            time.sleep(0.05)
        time.sleep(1.0)  # the staged pair is complete; an unguarded install would now fill the marker
        assert not (tmp_path / GAN_PAIR_INSTALLING).exists() and not list(tmp_path.glob("*.safetensors"))
    finally:
        os.close(held)
    worker.join(300)
    assert len(outcome) == 1 and sorted(c.name for c in outcome[0]) == ["dcgan-d", "dcgan-g"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dcgan-d.card.json", "dcgan-d.safetensors", "dcgan-g.card.json", "dcgan-g.safetensors"]
    zoo.load("dcgan-g", root=tmp_path), zoo.load("dcgan-d", root=tmp_path)
