"""What a model costs: bytes on disk (and gzipped), parameters, nonzero parameters, MACs.

One set of counters for PyTorch modules (float, pruned, quantized) and ONNX files, used by
``compress`` when it writes results.json and by ``reports`` when it measures a run again, so the two
can never disagree about the same variant.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def disk_bytes(path: str | Path) -> dict[str, int]:
    """Bytes of the artifact on disk and gzip-compressed (level 9); a folder counts all its files."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    raw = sum(p.stat().st_size for p in files)
    zipped = sum(len(gzip.compress(p.read_bytes(), compresslevel=9, mtime=0)) for p in files)
    return {"size_bytes": raw, "gzip_bytes": zipped}


def _module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The weight tensors of a module, unpacking quantized layers whose weights are not Parameters."""
    tensors = [p.detach() for p in module.parameters()]
    for sub in module.modules():
        # torch.ao quantized Linear/Conv keep packed weights reachable through weight()/bias() methods
        if callable(getattr(sub, "weight", None)) and not isinstance(getattr(sub, "weight"), torch.Tensor):
            for getter in ("weight", "bias"):
                try:
                    t = getattr(sub, getter)()
                except Exception:  # noqa: BLE001 - a layer without that packed tensor
                    continue
                if isinstance(t, torch.Tensor):
                    tensors.append(t.detach())
        if hasattr(sub, "_all_weight_values") and hasattr(sub, "_weight_bias"):  # quantized dynamic LSTM/GRU
            for group in sub._weight_bias().values():
                tensors.extend(t.detach() for t in group.values() if isinstance(t, torch.Tensor))
    return tensors


def _count(tensors: list[torch.Tensor]) -> tuple[int, int]:
    total = nonzero = 0
    for t in tensors:
        values = t.int_repr() if t.is_quantized else t
        total += values.numel()
        # a quantized zero is its zero point, not the integer 0
        zero: Any = 0
        if t.is_quantized and t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            zero = t.q_zero_point()
        elif t.is_quantized:  # per channel: one zero point along q_per_channel_axis
            shape = [1] * t.dim()
            shape[t.q_per_channel_axis()] = -1
            zero = t.q_per_channel_zero_points().reshape(shape)
        nonzero += int((values != zero).sum())
    return total, nonzero


def module_params(module: nn.Module) -> dict[str, int]:
    """Parameter count and nonzero parameter count of a PyTorch module (quantized weights included)."""
    total, nonzero = _count(_module_tensors(module))
    return {"params": total, "nonzero_params": nonzero}


def onnx_params(path: str | Path) -> dict[str, int]:
    """Parameter count and nonzeros of an ONNX file: its initializers, less scales and zero points."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    zero_points = _weight_zero_points(model.graph)
    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    total = nonzero = 0
    for name, arr in arrays.items():
        if "scale" in name or "zero_point" in name:
            continue  # quantization bookkeeping, not weights
        if arr.ndim == 0 or arr.dtype.kind not in "fiu" or arr.dtype.itemsize > 4 and arr.dtype.kind in "iu":
            continue  # scalars and int64 shape constants: weights are float or 8-bit integers (a [1] bias is a weight)
        total += arr.size
        zero: Any = 0
        if name in zero_points and zero_points[name][0] in arrays:  # a quantized zero is its zero point (128 for uint8 weights)
            zp_name, axis = zero_points[name]
            zero = _broadcast_zero_point(arrays[zp_name], arr.shape, axis)
        nonzero += int(np.count_nonzero(arr != zero))
    return {"params": total, "nonzero_params": nonzero}


# Per operator that reads quantized weights: (weight input, its zero-point input, the weight's channel axis for a
# per-channel zero point; None: DequantizeLinear's own axis attribute)
_ZERO_POINT_INPUTS: dict[str, list[tuple[int, int, int | None]]] = {
    "DequantizeLinear": [(0, 2, None)], "ConvInteger": [(1, 3, 0)], "QLinearConv": [(3, 5, 0)],
    "MatMulInteger": [(1, 3, -1)], "QLinearMatMul": [(3, 5, -1)], "DynamicQuantizeMatMul": [(1, 3, -1)],
    "DynamicQuantizeLSTM": [(1, 9, 0), (2, 11, 0)],  # W, R: [directions, in, 4*hidden]; zero points per direction (and gate column)
}


def _weight_zero_points(graph: Any) -> dict[str, tuple[str, int]]:
    """Each quantized initializer's zero-point initializer and channel axis, from the nodes that read it."""
    found: dict[str, tuple[str, int]] = {}
    for node in graph.node:
        for weight, zero_point, axis in _ZERO_POINT_INPUTS.get(node.op_type, []):
            if axis is None:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)  # DequantizeLinear's default axis
            if len(node.input) > zero_point and node.input[zero_point]:
                found[node.input[weight]] = (node.input[zero_point], axis)
    return found


def _broadcast_zero_point(zero: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """A zero point shaped to compare with a weight of ``shape``: a scalar, one per channel along ``axis``, or per direction and column."""
    if zero.size <= 1:
        return zero.reshape(())
    if zero.ndim == 2 and len(shape) == 3:  # DynamicQuantizeLSTM per channel: [directions, 4*hidden]
        return zero.reshape(zero.shape[0], 1, zero.shape[1])
    target = [1] * len(shape)
    target[axis % len(shape)] = -1
    return zero.reshape(target)


_QUANTIZED_LAYERS = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.nn.quantized")


def _hook_macs(module: nn.Module, example: torch.Tensor, counted: Callable[[nn.Module], bool]) -> int:
    """MACs of the layers ``counted`` selects, from their shapes, by forward hooks."""
    total = 0
    hooks = []

    def hook(sub: nn.Module, inputs: tuple, output: Any) -> None:
        nonlocal total
        out = output[0] if isinstance(output, tuple) else output
        name = type(sub).__name__
        if name == "Linear":
            total += out.numel() * sub.in_features
        elif name.startswith("Conv"):
            w = sub.weight()
            total += out.numel() * w[0].numel()
        elif name in ("LSTM", "GRU", "RNN"):
            x = inputs[0]
            steps_batch = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
            gates = {"LSTM": 4, "GRU": 3}.get(name, 1)
            dirs = 2 if sub.bidirectional else 1
            for layer in range(sub.num_layers):
                inp = sub.input_size if layer == 0 else sub.hidden_size * dirs
                total += steps_batch * gates * sub.hidden_size * (inp + sub.hidden_size) * dirs

    for sub in module.modules():
        if counted(sub):
            hooks.append(sub.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            module(example)
    finally:
        for h in hooks:
            h.remove()
    return int(total)


def module_macs(module: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example`` (batch 1): FLOPs/2 from FlopCounterMode, plus hooks
    for what it cannot see (quantized layers, whose kernels are not aten ops, and fused CPU RNN kernels)."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        module(example)
    per_module = counter.get_flop_counts()
    root = type(module).__name__
    uncounted = {id(sub) for name, sub in module.named_modules()
                 if isinstance(sub, nn.RNNBase) and name and not sum(per_module.get(f"{root}.{name}", {}).values())}
    return int(counter.get_total_flops() // 2) + _hook_macs(
        module, example, lambda sub: type(sub).__module__.startswith(_QUANTIZED_LAYERS) or id(sub) in uncounted)


def onnx_macs(path: str | Path, example: torch.Tensor) -> int:
    """Multiply-accumulates of one ONNX forward pass on ``example``'s shape, from shape-inferred node shapes."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph_input = model.graph.input[0]
    for dim, size in zip(graph_input.type.tensor_type.shape.dim, example.shape):
        dim.ClearField("dim_param")
        dim.dim_value = int(size)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)  # data_prop: Reshape targets computed from Shape ops
    shapes: dict[str, list[int]] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    attrs = lambda node: {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}  # noqa: E731
    batch = int(example.shape[0])
    # ONNX Runtime's int8 LSTM (a contrib op) leaves the batch unknown to shape inference downstream; only
    # there is an unknown leading dimension taken to be the batch (elsewhere it may be a sequence length)
    batch_lost = any(node.op_type == "DynamicQuantizeLSTM" for node in model.graph.node)
    total = 0
    for node in model.graph.node:
        op = node.op_type
        ins = [shapes.get(n) for n in node.input]
        out = shapes.get(node.output[0]) if node.output else None
        if batch_lost and out and not out[0] and all(out[1:]):
            out = [batch, *out[1:]]
        if op in ("Conv", "ConvInteger", "QLinearConv") and out and all(out):
            w = ins[3] if op == "QLinearConv" else ins[1]
            if w:
                total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif op == "ConvTranspose" and ins[0] and ins[1] and all(ins[0]):
            w = ins[1]  # (C_in, C_out/groups, kh, kw): every input element feeds C_out/groups*kh*kw outputs
            total += int(np.prod(ins[0])) * int(np.prod(w[1:]))
        elif op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul") and out and all(out):
            a = ins[0]
            k = a[-1] if a else 0
            if op == "Gemm" and attrs(node).get("transA", 0) and a:
                k = a[0]
            total += int(np.prod(out)) * int(k)
        elif op in ("LSTM", "GRU", "RNN", "DynamicQuantizeLSTM") and ins[0] and ins[0][0] and len(ins) > 2 and ins[1] and ins[2]:
            # every step multiplies the input by W and the state by R, all gates and directions at once; W and
            # R are initializers, so their shapes are known where a stacked layer's input size is not
            total += ins[0][0] * (ins[0][1] or batch) * (int(np.prod(ins[1])) + int(np.prod(ins[2])))
    del numpy_helper
    return int(total)
