"""Static int8 calibration methods on real zoo models: entropy really searches, odd sample counts work."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import numpy_helper

import zoo
from compress.context import data_for
from compress.quantize.ort_int8 import StaticInt8Config, quantize_static_onnx


def _activation_scales(path) -> dict[str, float]:
    model = onnx.load(str(path))
    scales = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_scale")}
    return {name: float(s) for name, s in scales.items() if s.size == 1}  # per-tensor: activations


@pytest.fixture(scope="module")
def cnn():
    return zoo.load("seed-cnn"), data_for("seed-cnn")


def test_entropy_calibration_chooses_narrower_ranges_than_minmax(cnn):
    model, data = cnn
    minmax = quantize_static_onnx(model, StaticInt8Config(calibration="minmax"), data)
    entropy = quantize_static_onnx(model, StaticInt8Config(calibration="entropy"), data)
    by_minmax, by_entropy = _activation_scales(minmax.artifact), _activation_scales(entropy.artifact)
    assert by_minmax.keys() == by_entropy.keys()
    pairs = [(by_entropy[name], by_minmax[name]) for name in by_minmax]
    # KL calibration clips the long tails MinMax keeps: several activation scales shrink, none grows
    assert sum(e < 0.9 * m for e, m in pairs) >= 2
    assert all(e <= 1.0001 * m for e, m in pairs)
    assert data.evaluate(entropy)["accuracy"] >= data.evaluate(model)["accuracy"] - 0.01


@pytest.mark.parametrize("calibration", ["percentile", "entropy"])
def test_histogram_calibration_takes_a_sample_count_that_is_no_multiple_of_the_batch(cnn, calibration):
    model, data = cnn
    variant = quantize_static_onnx(model, StaticInt8Config(calibration=calibration, samples=97), data)
    assert data.evaluate(variant)["accuracy"] > 0.97


def test_entropy_calibration_of_a_generator():
    model, data = zoo.load("dcgan-g"), data_for("dcgan-g")
    variant = quantize_static_onnx(model, StaticInt8Config(calibration="entropy"), data)
    z = data.inputs(16)
    with torch.no_grad():
        assert (variant(z) - model(z)).abs().mean() < 0.05
