"""Compressed storage: sparse relative indices, codebook indices and Huffman coding (Han et al., 2016, §2–4).

The ``compressed-storage`` step turns a pruned and/or weight-shared module into a ``CompressedVariant``
whose artifact (``<name>.slz``) is what a deployment would ship; ``load_variant`` decodes it back into
a float module, so it is evaluated, timed and explained like any other TorchVariant. A run does not
export it to ONNX: decoded, it is the float model the step before it exported, zeros and all.

File layout (all integers little-endian)::

    b"SLZ1" | u32 header length | zlib(JSON header) | payload

The header lists each tensor (name, dtype, shape, encoding, byte ranges in the payload). Each tensor
takes whichever of these is smallest, so storage is lossless by construction:

* ``raw``: its bytes as they are (biases, BatchNorm statistics, integer buffers).
* positions ``dense`` (every element has a value) or ``gaps``: the zeros before each nonzero as a
  symbol of ``b`` bits, with symbol ``2**b - 1`` meaning "skip that many zeros, no value" (Han et al.
  insert a filler zero instead); ``b`` is chosen per tensor from 2..8.
* values ``float``: float32 bytes, or ``codebook``: at most 256 distinct values once, then one index
  per value.

Gap and codebook-index streams are Huffman-coded (canonical codes, lengths capped at 16 bits).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from compress.context import CompressionData
from compress.finetune import clone
from compress.steps import register_step
from compress.variant import TorchVariant, VariantError, conv_groups
from zoo.cards import write_atomic
from zoo.errors import first_line

MAGIC = b"SLZ1"
STORAGE = "slimlens-compressed/1"  # the ``storage`` key of a variant's metadata
SUFFIX = ".slz"
MAX_CODE_BITS = 16
MAX_CODEBOOK = 256


# ---------------------------------------------------------------- Huffman coding


def huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Code length per symbol (0 for unused symbols) of a Huffman code, capped at ``MAX_CODE_BITS``."""
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(len(counts), dtype=np.int64)
    if len(used) == 1:
        lengths[used] = 1
        return lengths
    weights = counts[used].copy()
    while True:
        heap = [(int(w), i, [i]) for i, w in enumerate(weights)]
        heapq.heapify(heap)
        depth = np.zeros(len(used), dtype=np.int64)
        while len(heap) > 1:
            w1, i1, a = heapq.heappop(heap)
            w2, i2, b = heapq.heappop(heap)
            depth[a + b] += 1
            heapq.heappush(heap, (w1 + w2, min(i1, i2), a + b))
        if depth.max() <= MAX_CODE_BITS:
            lengths[used] = depth
            return lengths
        weights = (weights + 1) // 2  # flatten the distribution until the deepest code fits


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes: symbols sorted by (length, symbol) get consecutive codes."""
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        codes[symbol], previous = code, int(lengths[symbol])
        code += 1
    return codes


def huffman_encode(symbols: np.ndarray, alphabet: int) -> bytes:
    """``symbols`` (ints in [0, alphabet)) as: u16 alphabet, code lengths (u8 each), u32 count, packed bits."""
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = huffman_lengths(np.bincount(symbols, minlength=alphabet)) if len(symbols) else np.zeros(alphabet, np.int64)
    codes = _canonical_codes(lengths)
    sym_len, sym_code = lengths[symbols], codes[symbols]
    width = int(lengths.max()) if len(symbols) else 0
    shifts = np.arange(width)[None, :]
    # bit j of a code (most significant first) sits in column j; columns past a code's length are dropped
    bits = (sym_code[:, None] >> np.maximum(sym_len[:, None] - 1 - shifts, 0)) & 1
    bits = bits[shifts < sym_len[:, None]]
    head = struct.pack("<H", alphabet) + lengths.astype(np.uint8).tobytes() + struct.pack("<I", len(symbols))
    return head + np.packbits(bits.astype(np.uint8)).tobytes()


def huffman_decode(blob: bytes) -> np.ndarray:
    """The symbols ``huffman_encode`` wrote into ``blob``."""
    (alphabet,) = struct.unpack_from("<H", blob, 0)
    lengths = np.frombuffer(blob, dtype=np.uint8, count=alphabet, offset=2).astype(np.int64)
    (count,) = struct.unpack_from("<I", blob, 2 + alphabet)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    width = int(lengths.max())
    codes = _canonical_codes(lengths)
    table_symbol = np.zeros(1 << width, dtype=np.int64)
    table_length = np.zeros(1 << width, dtype=np.int64)
    for symbol in np.flatnonzero(lengths):
        span = 1 << (width - int(lengths[symbol]))
        start = int(codes[symbol]) * span
        table_symbol[start : start + span], table_length[start : start + span] = symbol, lengths[symbol]
    bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8, offset=6 + alphabet)).astype(np.int64)
    bits = np.concatenate([bits, np.zeros(width, dtype=np.int64)])
    windows = np.zeros(len(bits) - width, dtype=np.int64)  # the next `width` bits read from every bit position
    for j in range(width):
        windows = (windows << 1) | bits[j : j + len(windows)]
    out = np.empty(count, dtype=np.int64)
    pos = 0
    for i in range(count):  # sequential by nature: each code's length decides where the next one starts
        w = windows[pos]
        out[i] = table_symbol[w]
        pos += table_length[w]
    return out


# ---------------------------------------------------------------- sparse positions


def encode_gaps(positions: np.ndarray, bits: int) -> np.ndarray:
    """Relative-index symbols for sorted nonzero ``positions``: the zeros before each, with skip symbols for long runs."""
    skip = (1 << bits) - 1
    gaps = np.diff(np.concatenate([[-1], positions])) - 1
    skips, rest = np.divmod(gaps, skip)
    counts = skips + 1
    symbols = np.full(int(counts.sum()), skip, dtype=np.int64)
    symbols[np.cumsum(counts) - 1] = rest  # each nonzero's own symbol comes after its skips
    return symbols


def decode_gaps(symbols: np.ndarray, bits: int) -> np.ndarray:
    """Nonzero positions back from ``encode_gaps`` symbols."""
    skip = (1 << bits) - 1
    advance = np.where(symbols == skip, skip, symbols + 1)
    ends = np.cumsum(advance)
    return ends[symbols != skip] - 1


# ---------------------------------------------------------------- tensors and files


def _encode_tensor(tensor: torch.Tensor) -> tuple[dict, list[bytes]]:
    """The smallest lossless encoding of one tensor: its header entry and payload sections."""
    array = tensor.detach().cpu().contiguous().numpy()
    entry = {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape)}
    best = ({**entry, "enc": "raw"}, [array.tobytes()])
    if tensor.dtype != torch.float32 or array.size < 64:
        return best
    flat = array.reshape(-1)
    options: list[tuple[dict, list[bytes]]] = []
    positions = np.flatnonzero(flat)
    value_sets = {"dense": flat, "gaps": flat[positions]}
    for layout, values in value_sets.items():
        position_sections: list[tuple[dict, list[bytes]]] = [({}, [])]
        if layout == "gaps":
            position_sections = [({"bits": b}, [huffman_encode(encode_gaps(positions, b), 1 << b)]) for b in range(2, 9)]
            position_sections = [min(position_sections, key=lambda o: len(o[1][0]))]
        codebook, index = np.unique(values, return_inverse=True)
        value_options = [({"val": "float"}, [values.astype(np.float32).tobytes()])]
        if len(codebook) <= MAX_CODEBOOK:
            value_options.append(({"val": "codebook"}, [codebook.astype(np.float32).tobytes(),
                                                       huffman_encode(index.reshape(-1), len(codebook))]))
        for pos_meta, pos_bytes in position_sections:
            for val_meta, val_bytes in value_options:
                options.append(({**entry, "enc": layout, **pos_meta, **val_meta}, pos_bytes + val_bytes))
    return min([best, *options], key=lambda o: sum(len(s) for s in o[1]))


def _decode_tensor(entry: dict, sections: list[bytes]) -> torch.Tensor:
    dtype = getattr(torch, entry["dtype"])
    shape = entry["shape"]
    if entry["enc"] == "raw":
        return torch.frombuffer(bytearray(sections[0]), dtype=dtype).reshape(shape).clone() if sections[0] else torch.zeros(shape, dtype=dtype)
    numel = int(np.prod(shape))
    value_sections = sections[1:] if entry["enc"] == "gaps" else sections
    if entry["val"] == "codebook":
        codebook = np.frombuffer(value_sections[0], dtype=np.float32)
        values = codebook[huffman_decode(value_sections[1])]
    else:
        values = np.frombuffer(value_sections[0], dtype=np.float32)
    flat = np.zeros(numel, dtype=np.float32)
    if entry["enc"] == "gaps":
        flat[decode_gaps(huffman_decode(sections[0]), entry["bits"])] = values
    else:
        flat[:] = values
    return torch.from_numpy(flat.reshape(shape))


def encode_state(state: dict[str, torch.Tensor]) -> bytes:
    """A state dict as compressed-storage bytes (lossless)."""
    header, payload = [], []
    for name, tensor in state.items():
        entry, sections = _encode_tensor(tensor)
        entry["name"], entry["sizes"] = name, [len(s) for s in sections]
        header.append(entry)
        payload += sections
    packed = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    return MAGIC + struct.pack("<I", len(packed)) + packed + b"".join(payload)


def decode_state(blob: bytes) -> dict[str, torch.Tensor]:
    """The state dict ``encode_state`` wrote."""
    if blob[:4] != MAGIC:
        raise VariantError("not a slimlens compressed-storage file (bad magic bytes)")
    (size,) = struct.unpack_from("<I", blob, 4)
    header = json.loads(zlib.decompress(blob[8 : 8 + size]))
    offset, state = 8 + size, {}
    for entry in header:
        sections = []
        for length in entry["sizes"]:
            sections.append(blob[offset : offset + length])
            offset += length
        state[entry["name"]] = _decode_tensor(entry, sections)
    return state


def read_compressed(path: Path, storage: str, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Decode a ``.slz`` artifact into a state dict, checking its storage version and sha256."""
    if storage != STORAGE:
        raise VariantError(f"{path} uses storage {storage!r}; this slimlens reads {STORAGE!r}")
    try:
        blob = Path(path).read_bytes()
    except FileNotFoundError:
        raise VariantError(f"compressed artifact {path} is missing") from None
    if expected_sha256 is not None and hashlib.sha256(blob).hexdigest() != expected_sha256:
        raise VariantError(f"compressed artifact {path} does not match the sha256 in its metadata (corrupt or replaced)")
    try:
        return decode_state(blob)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file fails in struct, zlib, json or numpy alike
        raise VariantError(f"compressed artifact {path} cannot be decoded ({type(exc).__name__}: {first_line(exc)}); "
                           "it is damaged or not a slimlens .slz file: compress the model again") from None


@dataclass
class CompressedVariant(TorchVariant):
    """A float module whose saved artifact is compressed storage (``.slz``); it runs as its decoded dense module."""

    def save(self, directory: str | Path) -> Path:
        """Write ``<name>.slz`` and metadata (format "torch", storage "slimlens-compressed/1")."""
        directory = Path(directory)
        self.artifact = directory / f"{self.name}{SUFFIX}"
        state = self.module.state_dict()
        blob = encode_state(state)
        write_atomic(self.artifact, blob)
        shapes = {k: list(v.shape) for k, v in state.items()}
        return self._write_metadata(directory, {"sha256": hashlib.sha256(blob).hexdigest(), "shapes": shapes, "storage": STORAGE,
                                                "groups": conv_groups(self.module)})


@dataclass(frozen=True)
class CompressedStorageConfig:
    """Compressed storage has no knobs: every tensor takes its smallest lossless encoding."""


@register_step("compressed-storage", CompressedStorageConfig)
def compressed_storage(model: nn.Module, config: CompressedStorageConfig, data: CompressionData,
                       progress: Callable[[str], None] = lambda message: None) -> CompressedVariant:
    """Wrap ``model`` so it is saved as compressed storage; ends the recipe branch's size-reducing steps."""
    progress("compressed storage: sparse indices, codebooks and Huffman coding chosen per tensor at save time")
    return CompressedVariant(name="", source=dict(data.source), module=clone(model).eval())
