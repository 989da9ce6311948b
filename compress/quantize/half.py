"""fp16 and bf16 variants: the whole module in half precision, float32 in and out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compress.context import CompressionData
from compress.finetune import clone
from compress.quantize.common import Progress, QuantizationError, no_progress, step_record
from compress.steps import register_step
from compress.variant import TorchVariant, _fit_shapes, _rebuild_module
from zoo.weights import read_state_dict

HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class HalfPrecisionConfig:
    """All weights and computation in float16 or bfloat16; the variant still takes and returns float32."""

    dtype: str = "float16"
    name: str = ""  # defaults to the dtype's name

    def __post_init__(self) -> None:
        if self.dtype not in HALF_DTYPES:
            raise QuantizationError(f"dtype={self.dtype!r} must be one of {', '.join(HALF_DTYPES)}")


@dataclass
class HalfTorchVariant(TorchVariant):
    """A module whose weights are float16/bfloat16; inputs are cast on the way in, outputs back to float32."""

    dtype: str = "float16"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        device = next(self.module.parameters()).device
        with torch.inference_mode():
            return self.module(batch.to(device=device, dtype=HALF_DTYPES[self.dtype])).float().cpu()

    def metadata(self) -> dict[str, Any]:
        """Metadata naming the half-precision loader and dtype."""
        return {**super().metadata(), "loader": "compress.quantize:load_half_variant", "dtype": self.dtype}


@register_step("half_precision", HalfPrecisionConfig)
def half_precision(model: nn.Module, config: HalfPrecisionConfig, data: CompressionData,
                   progress: Progress = no_progress) -> HalfTorchVariant:
    """A copy of ``model`` in float16/bfloat16 (halves the file; faster on GPUs, and in bf16 on CPUs with AVX-512 BF16 or AMX)."""
    progress(f"casting to {config.dtype}")
    module = clone(model).eval().to(HALF_DTYPES[config.dtype])
    return HalfTorchVariant(name=config.name or config.dtype, steps=[step_record("half_precision", config)],
                            source=dict(data.source), module=module, stand_in=clone(model).eval(), dtype=config.dtype)


def load_half_variant(meta: dict[str, Any], common: dict[str, Any]) -> HalfTorchVariant:
    """Rebuild a saved fp16/bf16 variant in its own dtype (a plain load would silently upcast to float32)."""
    state = read_state_dict(common["artifact"], expected_sha256=meta.get("sha256"))
    module = _rebuild_module(meta["source"])
    _fit_shapes(module, state, meta.get("groups"))
    module.load_state_dict(state)
    stand_in = clone(module).eval()
    return HalfTorchVariant(**common, module=module.to(HALF_DTYPES[meta["dtype"]]).eval(), stand_in=stand_in, dtype=meta["dtype"])
