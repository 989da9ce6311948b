"""The zoo contract: every model loads, reproduces its card, and bad weights are refused clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import cli
import zoo
from zoo.cards import weights_path
from zoo.weights import sha256_file

ALL = zoo.list_models()
FLOORS = {"seed-cnn": 0.96, "lenet5": 0.96, "resnet-mnist": 0.98, "seed-lstm": 0.96, "softmax-regression": 0.88, "simplenet": 0.90}
# Same weights, same data: only float summation order may differ across machines and thread counts.
TOLERANCE = {"accuracy": 0.002, "fd": 0.02, "mse": 0.0005}


def test_list_models_names_every_family():
    assert {"seed-cnn", "lenet5", "resnet-mnist", "seed-lstm", "dcgan-g", "dcgan-d", "seed-autoencoder", "softmax-regression", "simplenet"} <= set(ALL)
    assert {zoo.card(n).family for n in ALL} == {"cnn", "lstm", "gan", "autoencoder", "mlp"}


@pytest.mark.parametrize("name", ALL)
def test_model_reproduces_its_card(name):
    card = zoo.card(name)
    model = zoo.load(name)
    assert not model.training
    assert card.params == sum(p.numel() for p in model.parameters())
    assert card.weights["sha256"] == sha256_file(weights_path(name))
    now = zoo.evaluate(name)
    metric = card.primary_metric
    tol = TOLERANCE[metric] * (abs(card.metrics[metric]) if metric == "fd" else 1)
    assert now[metric] == pytest.approx(card.metrics[metric], abs=tol)
    if name in FLOORS:
        assert card.metrics["accuracy"] >= FLOORS[name]


def test_gan_card_reports_quality():
    card = zoo.card("dcgan-g")
    # Two thirds of the samples are digits seed-cnn names with >= 0.9 confidence (chance is ~0).
    assert card.metrics["confident_fraction"] >= 0.6
    # Generated digits sit further from real ones than two real splits do, but not orders of magnitude.
    assert card.metrics["fd"] < 25 * card.extra["fd_real_train_vs_test"]
    # Every digit class appears among the samples: no mode collapse.
    assert min(card.metrics["class_histogram"]) >= 20


def test_card_has_the_promised_fields():
    card = zoo.card("seed-cnn").to_dict()
    for key in ("family", "task", "dataset", "input", "class_names", "params", "metrics", "weights", "training"):
        assert key in card
    assert card["dataset"]["train_size"] == 4000 and card["dataset"]["test_size"] == 1000
    assert card["training"]["command"].startswith("slimlens zoo train seed-cnn")
    assert card["training"]["seconds"] > 0


def test_unknown_model_is_a_clear_error():
    with pytest.raises(zoo.UnknownModelError, match="no zoo model named 'resnet-9000'"):
        zoo.load("resnet-9000")


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_weights_are_refused(trained_copy, damage):
    path = trained_copy / "seed-cnn.safetensors"
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":
        path.write_bytes(blob[:-10] + bytes(b ^ 0xFF for b in blob[-10:]))
    else:
        path.unlink()
    with pytest.raises(zoo.WeightsError, match="seed-cnn.safetensors"):
        zoo.load("seed-cnn", root=trained_copy)


def test_corrupt_file_with_matching_hash_is_refused(trained_copy):
    """A file that is not safetensors at all, even with a card updated to its hash, is refused cleanly."""
    import json

    path = trained_copy / "seed-cnn.safetensors"
    path.write_bytes(b"not a safetensors file at all")
    card_file = trained_copy / "seed-cnn.card.json"
    data = json.loads(card_file.read_text())
    data["weights"]["sha256"] = sha256_file(path)
    card_file.write_text(json.dumps(data))
    with pytest.raises(zoo.WeightsError, match="not a readable safetensors"):
        zoo.load("seed-cnn", root=trained_copy)


def test_cli_reports_corrupt_weights_in_one_line(trained_copy):
    (trained_copy / "lenet5.safetensors").write_bytes(b"\x00" * 100)
    result = subprocess.run([sys.executable, "-m", "cli", "zoo", "eval", "lenet5", "--weights-root", str(trained_copy)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "lenet5.safetensors" in lines[0] and "expected" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_zoo_list_shows_every_model():
    result = subprocess.run([sys.executable, "-m", "cli", "zoo", "list"], capture_output=True, text=True, check=True)
    for name in ALL:
        assert name in result.stdout
    assert "accuracy=" in result.stdout and "fd=" in result.stdout and "mse=" in result.stdout


def test_cli_zoo_eval_compares_with_card():
    result = subprocess.run([sys.executable, "-m", "cli", "zoo", "eval", "seed-cnn"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_loaded_model_predicts_a_test_digit(mnist_test):
    image, label = mnist_test[0]
    logits = zoo.load("resnet-mnist")(image[None])
    assert logits.shape == (1, 10) and int(logits.argmax()) == label


def _bad_outs(tmp_path):
    """Three --out paths that cannot be written: a folder given for a file, a parent that is a file, a file deeper under it."""
    folder = tmp_path / "a-folder"
    folder.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return {"folder": folder, "parent-is-file": blocker / "x.png", "under-a-file": blocker / "deeper" / "x.png"}


@pytest.mark.parametrize("case", ["folder", "parent-is-file", "under-a-file"])
def test_cli_zoo_samples_refuses_an_unwritable_out_in_one_line(tmp_path, capsys, case):
    out = _bad_outs(tmp_path)[case]
    before = sorted(tmp_path.rglob("*"))
    assert cli.main(["zoo", "samples", "--out", str(out), "--n", "4"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slimlens: error: ") and str(out) in lines[0]
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, not even a temporary file


def test_cli_zoo_samples_refuses_a_device_as_out(capsys):
    # os.replace would otherwise swap /dev/null itself for a PNG when run as root
    assert cli.main(["zoo", "samples", "--out", "/dev/null", "--n", "4"]) == 2
    assert "/dev/null is not a regular file" in capsys.readouterr().err


def test_cli_zoo_samples_writes_a_png(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert cli.main(["zoo", "samples", "--out", str(out), "--n", "4"]) == 0
    assert out.read_bytes().startswith(b"\x89PNG") and [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    deeper = tmp_path / "new" / "folders" / "grid.png"  # missing folders are made, as before the up-front check
    assert cli.main(["zoo", "samples", "--out", str(deeper), "--n", "4"]) == 0 and deeper.is_file()


def test_cli_zoo_samples_reports_a_failed_write_in_one_line(tmp_path):
    """A write that fails after the up-front checks (here: a 1 KB file-size limit) is one line, not a traceback."""
    import resource

    out = tmp_path / "grid.png"
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))  # noqa: E731 - Python ignores SIGXFSZ, so write() fails with EFBIG
    result = subprocess.run([sys.executable, "-m", "cli", "zoo", "samples", "--out", str(out)], capture_output=True, text=True,
                            preexec_fn=limit, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot write {out}" in lines[0] and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["parent-is-file", "under-a-file"])
def test_cli_zoo_train_refuses_a_bad_out_before_training(tmp_path, capsys, case):
    out = _bad_outs(tmp_path)[case].with_suffix("")
    assert cli.main(["zoo", "train", "seed-cnn", "--quick", "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # one line and no "epoch" progress line: the error came before any training
    assert len(lines) == 1 and lines[0].startswith("slimlens: error: cannot write") and str(out) in lines[0]


def test_cli_zoo_train_refuses_a_file_as_out(tmp_path, capsys):
    out = tmp_path / "a-file"
    out.write_text("keep me")
    assert cli.main(["zoo", "train", "seed-cnn", "--quick", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"slimlens: error: --out {out} is a file; name a folder"
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("argv", [[], ["seed-cnn", "--all"]])
def test_cli_zoo_train_needs_one_name_or_all(tmp_path, capsys, argv):
    assert cli.main(["zoo", "train", *argv, "--out", str(tmp_path / "zoo")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "name a zoo model" in err and "--all" in err and "None" not in err
    assert not (tmp_path / "zoo").exists()


@pytest.mark.parametrize("argv", [[], ["seed-cnn", "--all"]])
def test_cli_zoo_eval_needs_one_name_or_all(capsys, argv):
    assert cli.main(["zoo", "eval", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "name a zoo model or pass --all" in err


def test_cli_zoo_list_json_gives_raw_numbers(capsys):
    assert cli.main(["zoo", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ALL
    for row in rows:
        card = zoo.card(row["name"])
        assert row["params"] == card.params and isinstance(row["params"], int)
        assert row["size_bytes"] == card.weights["bytes"] and isinstance(row["size_bytes"], int)
        assert row["metrics"][row["primary_metric"]] == card.metrics[card.primary_metric]
        assert all(isinstance(v, int | float) for v in row["metrics"].values())


def test_integer_weights_for_a_float_model_are_refused(tmp_path):
    """An int8 checkpoint passed as float weights would load its codes as values without a word."""
    from zoo.weights import load_into

    state = {k: (v * 50).round().clamp(-128, 127).to(torch.int8) if v.is_floating_point() else v
             for k, v in zoo.load("seed-cnn").state_dict().items()}
    with pytest.raises(zoo.WeightsError, match=r"with integer values where the model has floats.*features\.1\.weight int8 in the file, float32"):
        load_into(zoo.build("seed-cnn"), state, tmp_path / "int8.safetensors")


def test_weights_without_batchnorm_counters_load_as_pytorch_loads_them(tmp_path):
    """QA: a file without BatchNorm's num_batches_tracked (which inference never reads, and which load_state_dict fills
    in) was refused as '7 missing'; a missing running mean is still refused."""
    from zoo.weights import load_into

    trained = zoo.load("resnet-mnist").state_dict()
    state = {k: v for k, v in trained.items() if not k.endswith("num_batches_tracked")}
    assert len(state) < len(trained)
    loaded = load_into(zoo.build("resnet-mnist"), state, tmp_path / "w.safetensors")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    # a torch.save'd state_dict keeps its version metadata, with which load_state_dict itself refuses the gap (review)
    saved = zoo.load("resnet-mnist").state_dict()
    for key in [k for k in saved if k.endswith("num_batches_tracked")]:
        del saved[key]
    torch.save(saved, tmp_path / "w.pt")
    from_pt = torch.load(tmp_path / "w.pt", weights_only=True)
    assert hasattr(from_pt, "_metadata")
    loaded = load_into(zoo.build("resnet-mnist"), from_pt, tmp_path / "w.pt")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items()) and "stem.2.num_batches_tracked" not in from_pt
    del state["stem.2.running_mean"]
    with pytest.raises(zoo.WeightsError, match=r"1 missing \(stem\.2\.running_mean\)"):
        load_into(zoo.build("resnet-mnist"), state, tmp_path / "w.safetensors")


@pytest.mark.parametrize("model", ["seed-cnn", "seed-autoencoder", "dcgan-g", "dcgan-d"])
def test_nan_outputs_are_an_error_not_a_score(model):
    """argmax reads a NaN row as class 0, which scored a broken seed-cnn 0.10 as if it were a real accuracy."""
    def broken(batch):
        out = zoo.load(model)(batch)
        return torch.full_like(out, float("nan"))

    with pytest.raises(zoo.MetricError, match="NaN or infinite"):
        zoo.evaluate(model, forward=broken)


def test_parity_with_a_broken_reference_is_not_agreement():
    from zoo.metrics import output_parity

    nan = torch.full((4, 10), float("nan"))
    parity = output_parity(nan, nan.clone(), classifier=True)
    assert parity["max_abs_diff"] is None and parity["not_finite_outputs"] == 80


def test_discriminator_accuracy_is_balanced_and_reads_a_zero_logit_as_real():
    from zoo.metrics import discriminator_metrics, predicted_labels

    real, fake = torch.ones(10, 1), -torch.ones(1, 1)
    # 10 real images, 1 generated one; the discriminator calls everything real
    assert discriminator_metrics(lambda x: torch.ones(len(x), 1), real, fake)["accuracy"] == 0.5
    zero = discriminator_metrics(lambda x: torch.zeros(len(x), 1), real, fake)
    assert zero["real_recall"] == 1.0 and predicted_labels(torch.zeros(1, 1), 0.0).item() == 1  # one rule for both


def test_samples_refuse_a_huge_grid_and_a_name_that_is_not_png(tmp_path, capsys):
    assert cli.main(["zoo", "samples", "--out", str(tmp_path / "s.png"), "--n", "100000000"]) == 2  # 25 GB of digits
    assert "--n must be from 1 to 10,000" in capsys.readouterr().err
    assert cli.main(["zoo", "samples", "--out", str(tmp_path / "s.jpg"), "--n", "4"]) == 2  # PNG bytes under a .jpg name
    assert "does not end in .png" in capsys.readouterr().err and not any(tmp_path.iterdir())
