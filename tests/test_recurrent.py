"""A user's recurrent model (a GRU, which the zoo has none of): every preset step routes and compresses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress import run
from compress.context import data_for
from compress.distill import slimmer
from compress.prune import PruneStructuredConfig, prune_structured
from compress.quantize import DynamicInt8Config, OrtDynamicInt8Config, quantize_dynamic, quantize_dynamic_onnx
from compress.quantize.common import QuantizationError
from compress.variant import TorchVariant, load_variant
from zoo.errors import SlimlensError

BUILDER = "test_recurrent:RowGRU"  # importable: pytest puts tests/ on sys.path


class RowGRU(torch.nn.Module):
    """Reads a digit as 28 rows of 28 pixels with a GRU; the last hidden state feeds a linear head."""

    kind, layers = torch.nn.GRU, 1

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.rnn = self.kind(28, hidden, num_layers=self.layers, batch_first=True)
        self.head = torch.nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x[:, 0])[0][:, -1])


class TwoLayerLSTM(RowGRU):
    """The same with two stacked LSTM layers."""

    kind, layers = torch.nn.LSTM, 2


class FedGRU(RowGRU):
    """A GRU reading a linear layer's features: on the CPU a GRU runs step by step, which Torch-Pruning cannot trace alone."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(28, 24)
        self.rnn = torch.nn.GRU(24, 32, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(torch.relu(self.embed(x[:, 0])))[0][:, -1])


class BiLSTM(torch.nn.Module):
    """Reads the rows both ways: its output holds two directions' hidden units, which Torch-Pruning cannot trace."""

    def __init__(self):
        super().__init__()
        self.rnn, self.head = torch.nn.LSTM(28, 8, bidirectional=True, batch_first=True), torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x[:, 0])[0][:, -1])


def _with_dead_units(model: RowGRU, dead: list[int]) -> RowGRU:
    """Zero every weight into, out of and inside ``dead`` hidden units in every layer: they stay 0 and change nothing."""
    rnn, gates = model.rnn, 4 if isinstance(model.rnn, torch.nn.LSTM) else 3
    with torch.no_grad():
        for unit in dead:
            rows = [unit + gate * rnn.hidden_size for gate in range(gates)]
            for k in range(rnn.num_layers):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(rnn, f"{name}_l{k}")[rows] = 0
                rnn.get_parameter(f"weight_hh_l{k}")[:, unit] = 0
                if k > 0:  # layer k reads layer k - 1's units
                    rnn.get_parameter(f"weight_ih_l{k}")[:, unit] = 0
            model.head.weight[:, unit] = 0
    return model


@pytest.mark.parametrize("architecture", [RowGRU, TwoLayerLSTM, FedGRU])
def test_structured_pruning_removes_hidden_units_from_every_gate_and_layer(architecture: type, tmp_path: Path):
    torch.manual_seed(0)
    model = _with_dead_units(architecture(), dead=list(range(0, 32, 2))).eval()
    if architecture is FedGRU:  # half the features it reads are dead too: they and their GRU input columns go
        with torch.no_grad():
            model.embed.weight[::2], model.embed.bias[::2] = 0, 0
    data = data_for(f"test_recurrent:{architecture.__name__}", data="mnist")
    pruned = prune_structured(model, PruneStructuredConfig(ratio=0.5, steps=1, epochs=0), data)
    gates = 4 if architecture is TwoLayerLSTM else 3
    assert pruned.rnn.hidden_size == 16 and pruned.head.in_features == 16
    assert pruned.rnn.weight_hh_l0.shape == (gates * 16, 16) and pruned.get_parameter(f"rnn.weight_ih_l{model.layers - 1}").shape[0] == gates * 16
    if architecture is FedGRU:
        assert pruned.embed.out_features == pruned.rnn.input_size == 12
    assert "forward" not in vars(pruned.rnn)  # the tracing patch is gone: the layer trains with its own forward
    x = data.inputs(64, split="test")
    with torch.no_grad():
        # the dead units went and nothing else: a gate or layer sliced by the wrong rows would change the outputs
        assert torch.allclose(pruned(x), model(x), atol=1e-5)
    variant = TorchVariant(name="rnn", source=data.source, module=pruned)
    variant.save(tmp_path)
    reloaded = load_variant(tmp_path / "rnn.variant.json", trust_code=True)
    with torch.no_grad():
        assert torch.equal(reloaded.module(x), pruned(x))


def test_structured_pruning_refuses_a_bidirectional_lstm_in_one_line():
    with pytest.raises(SlimlensError, match=r"cannot remove hidden units from tests:BiLSTM's bidirectional LSTM 'rnn'.*prune-unstructured"):
        prune_structured(BiLSTM(), PruneStructuredConfig(steps=1, epochs=0), data_for("tests:BiLSTM", data="mnist"))


@pytest.mark.parametrize("architecture", [RowGRU, FedGRU])
def test_a_slimmer_student_of_a_gru_narrows_its_hidden_units(architecture: type):
    student, shape = slimmer(architecture(), 0.5, torch.rand(2, 1, 28, 28))
    assert student.rnn.hidden_size == 16 and shape == {"width": 0.5} and student(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_pytorch_dynamic_int8_quantizes_the_gru_and_reloads_exactly(tmp_path: Path):
    torch.manual_seed(0)
    model, data = RowGRU().eval(), data_for(BUILDER, data="mnist")
    variant = quantize_dynamic(model, DynamicInt8Config(), data)
    variant.save(tmp_path)
    reloaded = load_variant(tmp_path / "int8-dynamic.variant.json", trust_code=True)
    stored = json.loads((tmp_path / "int8-dynamic.variant.json").read_text())["int8_weights"]
    assert {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"} <= set(stored)
    float_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert (tmp_path / "int8-dynamic.safetensors").stat().st_size < float_bytes / 2.5
    x = data.inputs(32, split="test")
    with torch.no_grad():
        assert torch.equal(reloaded.module(x), variant.module(x))
        assert (reloaded.module(x).argmax(1) == model(x).argmax(1)).float().mean() > 0.9


def test_onnx_runtime_dynamic_int8_refuses_a_gru_it_would_leave_in_float():
    with pytest.raises(QuantizationError, match=r"not GRU: test_recurrent:RowGRU's GRU layer 'rnn' would stay in float; use quantize_dynamic"):
        quantize_dynamic_onnx(RowGRU().eval(), OrtDynamicInt8Config(), data_for(BUILDER, data="mnist"))


def test_a_users_recurrent_model_takes_the_recurrent_route_of_a_recipe(tmp_path: Path):
    recipe = [{"step": "quantize_static_onnx", "samples": 8, "families": ["cnn", "mlp"]},
              {"step": "quantize_dynamic_onnx", "families": ["lstm"], "optional": True},
              {"step": "quantize_dynamic", "families": ["lstm"]}]
    variants = run(RowGRU().eval(), recipe, data_for(BUILDER, data="mnist"), out_dir=tmp_path, export=False)
    results = variants.results
    steps = {s["step"]: s for s in results["timings"]["steps"]}
    assert results["family"] == "lstm" and steps["quantize_static_onnx"]["skipped"] == "runs on cnn, mlp models only, not lstm"
    assert "would stay in float" in steps["quantize_dynamic_onnx"]["skipped"]
    assert [v["name"] for v in results["variants"]] == ["original", "int8-dynamic"]
    from compress.pipeline import user_family

    # fine-tuned with the gradient clipping the zoo's LSTM trained and its presets were tuned with
    assert user_family(RowGRU(), data_for(BUILDER, data="mnist")).clip_grad_norm == 1.0


@pytest.mark.parametrize("architecture", [RowGRU, TwoLayerLSTM])
def test_onnx_macs_count_every_recurrent_layer(architecture: type, tmp_path: Path):
    from compress.export import export_onnx
    from compress.onnx_utils import quantize_dynamic_file
    from zoo.footprint import module_macs, onnx_macs

    model, example = architecture().eval(), torch.rand(1, 1, 28, 28)
    macs = module_macs(model, example)
    assert macs > 28 * 3 * 32 * (28 + 32)  # at least one layer's gates over 28 rows
    fp32 = export_onnx(model, example, tmp_path / "m.onnx")
    assert onnx_macs(fp32, example) == macs  # a GRU, or the second of two stacked LSTMs, counted too
    if architecture is TwoLayerLSTM:  # ONNX Runtime's int8 LSTM leaves the batch unknown to shape inference downstream
        assert onnx_macs(quantize_dynamic_file(fp32, tmp_path / "int8.onnx"), example) == macs


class FinalStateGRU(RowGRU):
    """Its head reads the GRU's final state h_n, which Torch-Pruning does not trace back to the GRU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x[:, 0])[1][-1])


class _OwnGRU(torch.nn.GRU):
    """A user's subclass of nn.GRU with a forward of its own: Torch-Pruning matches layer types exactly."""

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().forward(rows)


class SubclassedGRU(RowGRU):
    kind = _OwnGRU


def test_a_head_on_the_final_state_is_refused_before_any_fine_tuning():
    said: list[str] = []
    data = data_for("test_recurrent:FinalStateGRU", data="mnist")
    with pytest.raises(SlimlensError, match=r"removed no channels from .* at ratio=0.5; .*final state h_n") as refused:
        prune_structured(FinalStateGRU().eval(), PruneStructuredConfig(ratio=0.5, steps=2, epochs=4.0), data, progress=said.append)
    assert "raise ratio" not in str(refused.value)  # QA: a higher ratio can never trace h_n, yet the message led with it
    assert not said  # refused after the first pruning round, before its fine-tuning
    with pytest.raises(SlimlensError, match=r"distill derives no smaller student from .*could not trace .*h_n"):
        from compress.distill import DistillConfig, distill

        distill(FinalStateGRU().eval(), DistillConfig(student="auto", width=0.25, epochs=0.01), data)


def test_a_subclass_of_gru_is_pruned_by_the_recurrent_pruner():
    torch.manual_seed(0)
    model = _with_dead_units(SubclassedGRU(), dead=list(range(0, 32, 2))).eval()
    data = data_for("test_recurrent:SubclassedGRU", data="mnist")
    pruned = prune_structured(model, PruneStructuredConfig(ratio=0.5, steps=1, epochs=0), data)
    x = data.inputs(16, split="test")
    with torch.no_grad():
        assert pruned.rnn.hidden_size == 16 and torch.allclose(pruned(x), model(x), atol=1e-5)
    assert "forward" not in vars(pruned.rnn)


def test_bench_times_a_run_of_a_users_model(tmp_path: Path):
    import reports

    run(RowGRU().eval(), [{"step": "quantize_dynamic"}], data_for(BUILDER, data="mnist"), out_dir=tmp_path / "run", export=False)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["input_shape"] == [1, 28, 28]
    cfg = reports.TimingConfig(warmup=1, min_repetitions=3, max_repetitions=5, min_seconds=0.01, compile=False, rounds=1)
    reports.bench(str(tmp_path / "run"), tmp_path / "bench", "cpu", cfg, memory=False, html=False, trust_code=True)
    timed = json.loads((tmp_path / "bench" / "results.json").read_text())["variants"]
    assert [v["name"] for v in timed] == ["original", "int8-dynamic"] and all(v["latency"]["cpu"]["batch1_p50_ms"] > 0 for v in timed)


def test_a_users_cnn_and_dense_model_take_the_zoos_cnn_and_mlp_routes(tmp_path: Path):
    """QA: a user's CNN was family 'custom', so the README's own example step, families = ["cnn"], skipped it silently."""
    import zoo

    recipe = [{"step": "quantize_static_onnx", "samples": 8, "families": ["cnn"], "name": "int8-cnn"},
              {"step": "quantize_dynamic", "families": ["mlp"], "name": "int8-mlp"}]
    model = zoo.load("lenet5")  # its weights, built as a user's own network would be
    cnn = run(model, recipe, data_for("zoo.models.lenet:lenet5", data="mnist"), out_dir=tmp_path / "cnn", export=False).results
    assert cnn["family"] == "cnn" and [v["name"] for v in cnn["variants"]] == ["original", "int8-cnn"]
    mlp = run(zoo.load("softmax-regression"), recipe, data_for("zoo.models.mlp:softmax_regression", data="mnist"),
              out_dir=tmp_path / "mlp", export=False).results
    assert mlp["family"] == "mlp" and [v["name"] for v in mlp["variants"]] == ["original", "int8-mlp"]
    from compress.recipe import Recipe

    with pytest.raises(SlimlensError, match=r"families must be .*'custom' names none"):  # no run has that family any more
        Recipe.from_steps([{"step": "quantize_dynamic", "families": ["custom"]}])
