"""``slimlens compress`` end to end, and every bad input as one line, exit code 2, nothing written."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cli
from zoo.cards import TRAINED_DIR

FAST = '[[steps]]\nstep = "distill"\nstudent = "self"\nepochs = 0.2\n'


@pytest.fixture()
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "fast.toml"
    path.write_text(FAST)
    return path


def test_compress_end_to_end_with_a_builder_and_weights(tmp_path: Path, recipe: Path):
    out = tmp_path / "runs" / "run"  # a new nested folder, made as explain and report make theirs
    cmd = [sys.executable, "-m", "cli", "compress", "zoo.models.mlp:SimpleNet", "--weights", str(TRAINED_DIR / "simplenet.safetensors"),
           "--data", "mnist-ge5", "--recipe", str(recipe), "--out", str(out), "--no-latency", "--no-report", "--onnx-exporter", "legacy"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(cli.__file__).parent, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "results.json")
    assert "[1/1] distill" in done.stderr  # progress lines on stderr
    results = json.loads((out / "results.json").read_text())
    names = [v["name"] for v in results["variants"]]
    assert names[:2] == ["original", "original-onnx"] and "distill-alone" in names
    assert results["variants"][0]["metrics"]["accuracy"] > 0.9
    assert results["command"].startswith("slimlens compress zoo.models.mlp:SimpleNet")
    # a command that reproduces the run from any folder: absolute paths, and the switches that shaped it
    assert f"--out {out.resolve()} --seed" in results["command"] and f"--recipe {recipe.resolve()}" in results["command"]
    assert "--no-latency --no-report" in results["command"]
    assert all((out / v["artifact"]).is_file() for v in results["variants"])
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".run.")]  # the staging folder was renamed away


def _fails(args: list[str], capsys) -> str:
    assert cli.main(["compress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimlens: error: ") and "\n" not in err
    return err


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(tmp_path: Path, recipe: Path, capsys):
    out = tmp_path / "run"
    common = ["--out", str(out), "--no-latency"]
    assert "no zoo model named 'nonet'" in _fails(["nonet", "--recipe", str(recipe), *common], capsys)
    assert "unknown recipe 'int9'" in _fails(["seed-cnn", "--recipe", "int9", *common], capsys)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[steps]]\nstep = "distill"\ntemperature = "hot"\n')
    assert f"{bad}: step 1 (distill): setting 'temperature' must be a number" in _fails(["seed-cnn", "--recipe", str(bad), *common], capsys)
    assert "not found" in _fails(["seed-cnn", "--weights", str(tmp_path / "none.safetensors"), "--recipe", str(recipe), *common], capsys)
    assert "does not fit SeedCNN: tensors 6 missing" in _fails(
        ["seed-cnn", "--weights", str(TRAINED_DIR / "lenet5.safetensors"), "--recipe", str(recipe), *common], capsys)
    assert "--data" in _fails(["zoo.models.mlp:SimpleNet", "--recipe", str(recipe), *common], capsys)
    assert f"{bad} is a file; name a folder" in _fails(["simplenet", "--recipe", str(recipe), "--out", str(bad / "a" / "b"), "--no-latency"], capsys)
    # a refused run leaves no new folders: the missing parents of --out are made only as a finished run moves in
    static = tmp_path / "static.toml"
    static.write_text('[[steps]]\nstep = "quantize_static_onnx"\n')
    assert "does not apply to seed-lstm" in _fails(["seed-lstm", "--recipe", str(static), "--out", str(tmp_path / "new" / "run"), "--no-latency"],
                                                   capsys)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml", "fast.toml", "static.toml"]

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # a folder slimlens did not write is not offered to --force, which would delete it
    assert "holds files but no results.json of an earlier slimlens run" in _fails(["simplenet", "--recipe", str(recipe), *common], capsys)
    assert "holds files but no results.json" in _fails(["simplenet", "--recipe", str(recipe), *common, "--force"], capsys)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    (out / "results.json").write_text('{"schema": "slimlens.results/1"}')
    assert "not empty; pass --force" in _fails(["simplenet", "--recipe", str(recipe), *common], capsys)


def test_full_pickle_weights_need_trust(tmp_path: Path, recipe: Path, capsys):
    import zoo

    pickled = tmp_path / "simplenet.pt"
    torch.save(zoo.load("simplenet"), pickled)  # a whole pickled module: loading it can run code
    err = _fails(["simplenet", "--weights", str(pickled), "--recipe", str(recipe), "--out", str(tmp_path / "run"), "--no-latency"], capsys)
    assert "--trust-pickle" in err
    from compress.pipeline import load_model

    model = load_model("simplenet", pickled, trust_pickle=True)
    assert torch.equal(model.hidden.weight, zoo.load("simplenet").hidden.weight)


def test_weights_from_a_training_checkpoint_or_a_wrapped_model_load(tmp_path: Path, recipe: Path, capsys):
    import zoo
    from compress.pipeline import load_model

    state = zoo.load("lenet5").state_dict()
    saved = {
        "tutorial.pt": {"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {"param_groups": []}},  # PyTorch's tutorials
        "dataparallel.pt": {f"module.{k}": v for k, v in state.items()},
        "compiled-ddp.pt": {f"module._orig_mod.{k}": v for k, v in state.items()},
        "ddp-of-compiled.pt": {f"_orig_mod.module.{k}": v for k, v in state.items()},
    }
    for name, content in saved.items():
        torch.save(content, tmp_path / name)
        loaded = load_model("zoo.models.lenet:lenet5", tmp_path / name).state_dict()
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state), name
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "no-weights.pt")
    err = _fails(["lenet5", "--weights", str(tmp_path / "no-weights.pt"), "--recipe", str(recipe), "--out", str(tmp_path / "run")], capsys)
    assert "holds a dict ('epoch', 'optimizer') with no state dict" in err and "save model.state_dict()" in err


def test_a_model_that_does_not_fit_the_data_or_the_recipe_fails_in_one_line(tmp_path: Path, recipe: Path, capsys):
    out = tmp_path / "run"
    common = ["--recipe", str(recipe), "--out", str(out), "--no-latency"]
    err = _fails(["zoo.models.mlp:SimpleNet", "--data", "mnist", *common], capsys)  # one probability, not 10 class scores
    assert "returns (8, 1)" in err and "needs (batch, 10): give a model with 10 outputs" in err
    err = _fails(["zoo.models.resnet:BasicBlock", "--data", "mnist", *common], capsys)  # needs constructor arguments
    assert "zoo.models.resnet:BasicBlock() failed: TypeError" in err and "no arguments" in err
    static = tmp_path / "static.toml"
    static.write_text('[[steps]]\nstep = "quantize_static_onnx"\n')
    err = _fails(["seed-lstm", "--recipe", str(static), "--out", str(out), "--no-latency"], capsys)  # refused before any work
    assert "step 1 (quantize_static_onnx) does not apply to seed-lstm (family lstm)" in err and "optional = true" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]


def test_a_binary_model_that_outputs_logits_is_refused(tmp_path: Path, recipe: Path, capsys, monkeypatch):
    # scored at 0.5 and trained with binary cross-entropy, a logit would be mis-scored and mis-trained
    (tmp_path / "logits.py").write_text("from torch import nn\n\ndef build():\n"
                                        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    err = _fails(["logits:build", "--data", "mnist-ge5", "--recipe", str(recipe), "--out", str(tmp_path / "run"), "--no-latency"], capsys)
    assert "binary classification on mnist-ge5 needs the probability of the positive class: end the model with torch.sigmoid" in err


def test_steps_lists_every_step_its_families_and_settings(capsys):
    from compress.steps import list_steps

    assert cli.main(["steps"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{name}: " in listing for name in list_steps())
    assert "quantize_static_onnx: " in listing and "(cnn, gan, mlp, autoencoder)" in listing
    assert cli.main(["steps", "distill"]) == 0
    settings = capsys.readouterr().out
    assert "    width = 0.25" in settings and "    temperature = 4.0" in settings
    assert cli.main(["steps", "shrink"]) == 2
    assert "unknown recipe step 'shrink'" in capsys.readouterr().err


def test_more_bad_inputs_fail_in_one_line_and_write_nothing(tmp_path: Path, recipe: Path, capsys):
    out = tmp_path / "run"
    common = ["--out", str(out), "--no-latency"]
    garbage = tmp_path / "notes.pt"
    garbage.write_bytes(b"these are not weights\n" * 20)  # torch raises the same UnpicklingError as for a real pickle
    err = _fails(["simplenet", "--weights", str(garbage), "--recipe", str(recipe), *common], capsys)
    assert "neither safetensors nor a torch checkpoint" in err and "--trust-pickle" not in err
    err = _fails(["simplenet", "--weights", str(garbage), "--trust-pickle", "--recipe", str(recipe), *common], capsys)
    assert "neither safetensors nor a torch checkpoint" in err
    assert "does not match zoo model simplenet, which was trained on mnist-ge5" in _fails(
        ["simplenet", "--data", "mnist", "--recipe", str(recipe), *common], capsys)
    twice = tmp_path / "twice.toml"
    twice.write_text('[[steps]]\nstep = "distill"\nname = "small"\n[[steps]]\nstep = "prune-structured"\nname = "small"\n')
    assert "steps 1 and 2 are both named 'small'" in _fails(["seed-cnn", "--recipe", str(twice), *common], capsys)
    twice.write_text('[[steps]]\nstep = "distill"\nname = "original"\n')
    assert "name 'original' is the uncompressed model's" in _fails(["seed-cnn", "--recipe", str(twice), *common], capsys)
    twice.write_text('[[steps]]\nstep = "quantize_dynamic"\nname = "' + "n" * 300 + '"\n')  # a file name too long for the disk
    assert "name is 300 characters long; give at most 64" in _fails(["seed-cnn", "--recipe", str(twice), *common], capsys)
    twice.write_text('[[steps]]\nstep = "prune-unstructured"\nepochs = 1e308\n')  # finite, but its step count overflowed
    assert "epochs=1e+308 must be 0 (no fine-tuning) or a number of epochs up to 10,000" in _fails(
        ["seed-cnn", "--recipe", str(twice), *common], capsys)
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('[[steps]]\nstep = "distill"\nwidth = 0.01\nepochs = 0.1\n')
    # found when the step runs (after the original is measured), and still one line with nothing left behind
    assert ("width=0.01 derives no smaller student from simplenet: its narrowest layer has 10 channels, of which it would keep less "
            "than one; choose a larger width, e.g. 0.2") in _fails(["simplenet", "--recipe", str(tiny), *common, "--quiet"], capsys)
    # a single linear layer has no hidden width to narrow, whatever the width
    assert "its only weighted layer is the output layer" in _fails(["softmax-regression", "--recipe", "distill", *common, "--quiet"], capsys)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["fast.toml", "notes.pt", "tiny.toml", "twice.toml"]


def test_out_dot_replaces_the_current_folder_and_keeps_the_usual_mode(tmp_path: Path, recipe: Path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "results.json").write_text('{"schema": "slimlens.results/1"}')  # an earlier run: --force replaces nothing else
    monkeypatch.chdir(work)
    assert cli.main(["compress", "simplenet", "--recipe", str(recipe), "--out", ".", "--force", "--no-latency", "--no-report", "--quiet"]) == 0
    assert json.loads((work / "results.json").read_text())["model"] == "simplenet"
    umask = os.umask(0)
    os.umask(umask)
    assert work.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.toml", "work"]  # no staging or old folder left beside it


def test_reproduce_command_carries_the_builders_folder(tmp_path: Path, monkeypatch):
    (tmp_path / "mynets.py").write_text("import torch\n\ndef build():\n    return torch.nn.Linear(784, 10)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}extra")
    args = cli.build_parser().parse_args(["compress", "mynets:build", "--data", "mnist", "--recipe", "int8", "--out", "run"])
    # the user's module is found from the folder it was imported from, then the rest of their PYTHONPATH
    assert cli._compress_command(args).startswith(f"PYTHONPATH={tmp_path.resolve()}{os.pathsep}{Path('extra').resolve()} slimlens compress mynets:build")
    (tmp_path / "nsnets").mkdir()  # a namespace package: no __init__.py
    (tmp_path / "nsnets" / "nets.py").write_text((tmp_path / "mynets.py").read_text())
    args = cli.build_parser().parse_args(["compress", "nsnets.nets:build", "--data", "mnist", "--recipe", "int8", "--out", "run"])
    assert cli._compress_command(args).startswith(f"PYTHONPATH={tmp_path.resolve()}{os.pathsep}")
    # slimlens's own packages are found without help
    args = cli.build_parser().parse_args(["compress", "zoo.models.mlp:SimpleNet", "--data", "mnist-ge5", "--recipe", "int8", "--out", "run"])
    assert cli._compress_command(args).startswith("slimlens compress zoo.models.mlp:SimpleNet")


def test_a_terminated_run_removes_its_unfinished_folder(tmp_path: Path):
    import signal
    import time

    out = tmp_path / "run"
    slow = tmp_path / "slow.toml"
    slow.write_text('[[steps]]\nstep = "distill"\nstudent = "self"\nepochs = 50.0\n')
    cmd = [sys.executable, "-m", "cli", "compress", "seed-cnn", "--recipe", str(slow), "--out", str(out), "--no-latency", "--no-report"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=Path(cli.__file__).parent)
    try:
        deadline = time.monotonic() + 120
        # terminate it once the original's files are staged, as `timeout` or a cancelled CI job would
        while not any(tmp_path.glob(".*.partial/**/original.safetensors")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert any(tmp_path.glob(".*.partial/**/original.safetensors")), "the run never staged its original"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and err.strip().endswith("slimlens: terminated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slow.toml"]  # no run, no hidden .partial folder


def test_quiet_keeps_the_warnings(tmp_path: Path, capsys):
    recipe = tmp_path / "ruin.toml"
    recipe.write_text('[[steps]]\nstep = "prune-unstructured"\nsparsity = 0.995\nepochs = 0\n')
    assert cli.main(["compress", "simplenet", "--recipe", str(recipe), "--out", str(tmp_path / "run"), "--no-latency", "--no-report",
                     "--quiet"]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: prune-unstructured: accuracy fell") and "max_drop with a search" in line


def test_out_of_range_numbers_and_unknown_options_are_one_line(tmp_path: Path, recipe: Path, capsys):
    out = str(tmp_path / "run")
    for args, expected in (
        (["--threads", "0"], "argument --threads: 0 is out of range; give a thread count from 1 to 1024"),
        (["--threads", "999999"], "argument --threads: 999999 is out of range"),  # aborted natively, leaving its .partial folder
        (["--seed", "99999999999999999999999"], "argument --seed: 99999999999999999999999 is out of range; give a seed from 0 to 4294967295"),
        (["--seed", "x"], "argument --seed: 'x' is not a whole number"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ):
        with pytest.raises(SystemExit) as exited:
            cli.main(["compress", "simplenet", "--recipe", str(recipe), "--out", out, *args])
        err = capsys.readouterr().err.strip()
        assert exited.value.code == 2 and "\n" not in err and expected in err and err.endswith("--help' lists the options")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.toml"]


def test_force_refuses_to_replace_a_folder_holding_its_own_inputs(tmp_path: Path, recipe: Path, capsys):
    out = tmp_path / "run"
    assert cli.main(["compress", "simplenet", "--recipe", str(recipe), "--out", str(out), "--no-latency", "--no-report", "--quiet"]) == 0
    inside = out / "my-recipe.toml"
    inside.write_text(recipe.read_text())
    err = _fails(["simplenet", "--recipe", str(inside), "--out", str(out), "--force", "--no-latency"], capsys)
    assert f"--recipe {inside} lies inside --out {out.resolve()}, which --force replaces" in err and "move it out" in err
    assert inside.read_text() == recipe.read_text() and (out / "results.json").is_file()


def test_ctrl_c_while_torch_still_imports_is_one_line(tmp_path: Path):
    import signal
    import time

    started = subprocess.Popen([sys.executable, "-c", "import sys, cli; sys.exit(cli.main(sys.argv[1:]))", "compress", "seed-cnn",
                                "--recipe", "int8", "--out", str(tmp_path / "run")],
                               cwd=Path(cli.__file__).parent, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)  # inside main, importing torch (which takes seconds)
    started.send_signal(signal.SIGINT)
    _, err = started.communicate(timeout=120)
    assert started.returncode == 130 and "Traceback" not in err and err.strip().endswith("slimlens: interrupted")
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(os.geteuid() != 0 or subprocess.run(["which", "chattr"], capture_output=True).returncode != 0,
                    reason="making a folder immutable needs root and chattr")
def test_an_out_folder_that_cannot_be_moved_is_refused_before_the_run(tmp_path: Path, recipe: Path, capsys):
    """The finished run replaces --out by renaming it aside: a folder that cannot move failed only after all the work."""
    out = tmp_path / "fixed"
    out.mkdir()
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable flag")
    try:
        err = _fails(["simplenet", "--recipe", str(recipe), "--out", str(out), "--no-latency"], capsys)
        assert f"--out {out} cannot be replaced" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.toml", "fixed"]
    finally:
        subprocess.run(["chattr", "-i", str(out)])


def test_a_weights_folder_and_a_module_path_without_its_function_say_what_to_give(tmp_path: Path, recipe: Path, capsys):
    common = ["--recipe", str(recipe), "--out", str(tmp_path / "run"), "--no-latency"]
    assert f"--weights {tmp_path} is a folder; name the weights file in it" in _fails(["simplenet", "--weights", str(tmp_path), *common], capsys)
    assert "give package.module:function, e.g. userpkg.nets:build" in _fails(["userpkg.nets", "--data", "mnist", *common], capsys)


class _TupleOut(torch.nn.Module):
    """A classifier returning (logits, features), as many research models do."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)), x


def test_a_model_returning_a_tuple_is_told_what_to_return(tmp_path: Path, recipe: Path, capsys):
    err = _fails(["tests.test_cli_compress:_TupleOut", "--data", "mnist", "--recipe", str(recipe), "--out", str(tmp_path / "r"),
                  "--no-latency"], capsys)
    assert "returns tuple" in err and "whose forward returns that tensor alone" in err


def test_an_untrained_users_model_is_warned_about_in_the_terminal_the_results_and_the_report(tmp_path: Path, capsys):
    """QA: without --weights a user's builder was compressed from its random initialisation at 0.100 accuracy, with only a note."""
    recipe = tmp_path / "int8.toml"
    recipe.write_text('[[steps]]\nstep = "quantize_dynamic"\n')
    out = tmp_path / "run"
    assert cli.main(["compress", "zoo.models.lenet:lenet5", "--data", "mnist", "--recipe", str(recipe), "--out", str(out),
                     "--no-latency", "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no better than always answering its most common class" in warnings[0] and "--weights" in warnings[0]
    results = json.loads((out / "results.json").read_text())
    assert [f"warning: original: {w}" for w in results["warnings"]] == warnings
    assert f"Warning: {results['warnings'][0]}" in re.sub(r"<[^>]+>", "", html.unescape((out / "report.html").read_text()))
    trained = tmp_path / "trained"
    assert cli.main(["compress", "zoo.models.lenet:lenet5", "--weights", str(TRAINED_DIR / "lenet5.safetensors"), "--data", "mnist",
                     "--recipe", str(recipe), "--out", str(trained), "--no-latency"]) == 0
    err = capsys.readouterr().err
    assert "warning:" not in err and "warnings" not in json.loads((trained / "results.json").read_text())
    assert err.splitlines()[-1] == f"report: {trained / 'report.html'}"  # the page to open is named, not only results.json
