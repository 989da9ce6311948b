"""How compression moves explanations: map-to-map similarity per sample and per class.

Three views of "the same map": Spearman rank correlation (same ordering of pixels), top-k%
intersection over union (same most important pixels) and SSIM (same structure). All compare
|attribution| by default, each map scaled to its own maximum, since a variant's outputs may be on
a different scale while the explanation means the same. Everything is computed per sample,
because pruning and quantization can move some maps a lot while the average barely moves (Park et
al., NeurIPS 2020).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _flat(maps: torch.Tensor, absolute: bool) -> torch.Tensor:
    m = maps.detach().float().cpu().reshape(len(maps), -1)
    return m.abs() if absolute else m


def _average_ranks(row: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of a vector, ties sharing their average rank (as Spearman's coefficient requires)."""
    order = np.argsort(row, kind="stable")
    sorted_row = row[order]
    starts = np.r_[True, sorted_row[1:] != sorted_row[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], len(row)] - 1
    out = np.empty(len(row), dtype=np.float64)
    out[order] = ((first + last) / 2.0)[group]
    return out


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2:
        return 1.0 if np.array_equal(x, y) else 0.0
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    nx, ny = np.sqrt((rx**2).sum()), np.sqrt((ry**2).sum())
    if nx == 0 or ny == 0:
        return 1.0 if nx == ny else 0.0
    return float((rx * ry).sum() / (nx * ny))


def rank_correlation(a: torch.Tensor, b: torch.Tensor, *, absolute: bool = True) -> torch.Tensor:
    """Spearman rank correlation between each pair of maps (N,), over the elements where either map is non-zero.

    Elements that are exactly zero in both maps are left out: an input-multiplied method (Input x
    Gradient, IntegratedGradients with a black baseline) or Occlusion gives exactly zero on the
    black background of any digit, and counting those agreeing zeros would make any two maps of
    the same digit look alike. Two all-zero maps correlate 1; a constant map against a varying one 0.
    """
    fa, fb = _flat(a, absolute).double().numpy(), _flat(b, absolute).double().numpy()
    rho = []
    for x, y in zip(fa, fb):
        keep = (x != 0) | (y != 0)
        rho.append(_spearman(x[keep], y[keep]))
    return torch.tensor(rho, dtype=torch.float32)


def topk_iou(a: torch.Tensor, b: torch.Tensor, *, k: float = 0.1, absolute: bool = True) -> torch.Tensor:
    """Intersection over union of each pair's top ``k`` fraction of elements by attribution (N,)."""
    fa, fb = _flat(a, absolute), _flat(b, absolute)
    count = max(1, int(round(k * fa.shape[1])))
    top_a = torch.zeros_like(fa, dtype=torch.bool).scatter_(1, fa.topk(count, dim=1).indices, True)
    top_b = torch.zeros_like(fb, dtype=torch.bool).scatter_(1, fb.topk(count, dim=1).indices, True)
    return (top_a & top_b).sum(1).float() / (top_a | top_b).sum(1).float()


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def _unit_maps(maps: torch.Tensor, absolute: bool) -> torch.Tensor:
    m = maps.detach().float().cpu()
    m = m.reshape(len(m), -1, *m.shape[-2:]).sum(1, keepdim=True)  # channels summed: one map per sample
    m = m.abs() if absolute else m
    peak = m.reshape(len(m), -1).abs().amax(1).clamp_min(1e-12)
    return m / peak[:, None, None, None]


def ssim(a: torch.Tensor, b: torch.Tensor, *, absolute: bool = True, window: int = 7) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004) of each pair of maps (N,), each scaled to its own maximum first.

    A 7x7 Gaussian window (sigma 1.5) suits 28x28 maps; the constants are SSIM's usual ones for a
    data range of 1.
    """
    x, y = _unit_maps(a, absolute), _unit_maps(b, absolute)
    w = _gaussian_window(min(window, x.shape[-1], x.shape[-2]))
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mu_x**2
    syy = F.conv2d(y * y, w) - mu_y**2
    sxy = F.conv2d(x * y, w) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return value.reshape(len(x), -1).mean(1)


def metric_names(k: float = 0.1) -> list[str]:
    """The names :func:`compare` gives its three similarities for top-``k`` fraction ``k``."""
    return ["spearman", f"top{int(round(k * 100))}_iou", "ssim"]


FLOOR_SHIFTS = 5  # pairings per sample for the floor: enough for a steady mean, each as cheap as the drift itself


def floor(original: torch.Tensor, variant: torch.Tensor, *, k: float = 0.1, absolute: bool = True, shifts: int = FLOOR_SHIFTS) -> dict[str, Any] | None:
    """What :func:`compare`'s three similarities score between maps of *different* inputs: the level drift figures mean nothing below.

    Each original map is paired with the variant's maps of the next ``shifts`` samples (cyclically),
    so every pair shows two different digits, by the same measures as the drift itself. Maps of
    digits on a blank background share that background whatever the digit, which keeps top-k IoU
    and SSIM well above zero for unrelated maps; a drift figure near this floor says the variant's
    map is no more like the original's than another digit's map is. None for fewer than two maps.

    Example::

        >>> import torch, explain.drift as drift
        >>> sorted(drift.floor(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)))
        ['pairs', 'spearman', 'ssim', 'top10_iou']
    """
    n = len(original)
    if n < 2:
        return None
    steps = range(1, min(shifts, n - 1) + 1)
    mine = torch.arange(n).repeat(len(steps))
    other = torch.cat([(torch.arange(n) + s) % n for s in steps])
    spearman, iou, structural = metric_names(k)
    a, b = original[mine], variant[other]
    return {
        spearman: float(rank_correlation(a, b, absolute=absolute).mean()),
        iou: float(topk_iou(a, b, k=k, absolute=absolute).mean()),
        structural: float(ssim(a, b, absolute=absolute).mean()),
        "pairs": len(mine),
    }


def floor_record(original: torch.Tensor, variant: torch.Tensor, *, k: float = 0.1, absolute: bool = True, shifts: int = FLOOR_SHIFTS) -> dict[str, Any]:
    """:func:`floor` as explain.json records it: the three figures with how they were taken, or, under one
    compared input, empty figures and why there are none (a floor left out with no word read as one not wanted).

    Example::

        >>> import torch, explain.drift as drift
        >>> drift.floor_record(torch.rand(1, 1, 28, 28), torch.rand(1, 1, 28, 28))["unavailable"][:36]
        'needs at least two compared inputs: '
    """
    spearman, iou, structural = metric_names(k)
    measured = floor(original, variant, k=k, absolute=absolute, shifts=shifts)
    if measured is None:
        return {spearman: None, iou: None, structural: None, "pairs": 0,
                "unavailable": (f"needs at least two compared inputs: it pairs each input's map with another input's, and "
                                f"{len(original)} {'was' if len(original) == 1 else 'were'} compared")}
    others = min(shifts, len(original) - 1)
    if others == 1:
        partners = "the variant's map of the other input"
    elif others == len(original) - 1:
        partners = f"the variant's maps of {'both' if others == 2 else f'all {others}'} other inputs"
    else:
        partners = f"the variant's maps of the next {others} other inputs (cyclically)"
    # maps of digits on a blank background share it, so IoU and SSIM between unrelated maps are far from 0
    measured["how"] = (f"the same measures between each original map and {partners}: what maps of different inputs score, "
                       "so a drift figure near it means no more alike than another input's map")
    return measured


def headline(mean: dict[str, float], floor: dict[str, Any] | None) -> str:
    """The three drift figures in one line, each beside its floor (``SSIM 0.91 (floor 0.45)``), or saying why there is no floor."""
    labels = {"spearman": "Spearman", "ssim": "SSIM"}
    has_floor = bool(floor) and all(floor.get(key) is not None for key in mean)
    parts = []
    for key, value in mean.items():
        label = labels.get(key) or f"top-{key[3:-4]}% IoU"
        parts.append(f"{label} {value:.2f}" + (f" (floor {floor[key]:.2f})" if has_floor else ""))
    line = ", ".join(parts)
    if floor and not has_floor:
        line += " (no floor: " + (floor.get("unavailable") or "not measured").split(":")[0] + ")"
    return line


def figure_title(method: str, mean: dict[str, float], floor: dict[str, Any] | None, compared: int, total: int) -> str:
    """A drift figure's title: what the mean is over (and what was left out), then :func:`headline` on a line of its own."""
    over = f"mean of {compared}" if compared == total else (
        f"mean of {compared} of {total} ({total - compared} all-zero map{'' if total - compared == 1 else 's'} left out)")
    return f"{method} drift, {over}:\n{headline(mean, floor)}"


def compare(
    original: torch.Tensor,
    variant: torch.Tensor,
    labels: Sequence[int] | torch.Tensor | None = None,
    *,
    k: float = 0.1,
    absolute: bool = True,
    worst: int = 5,
) -> dict[str, Any]:
    """Drift between two sets of maps of the same inputs: per sample, mean, per class, and the ``worst`` samples.

    Example::

        >>> import torch, explain.drift as drift
        >>> maps = torch.rand(4, 1, 28, 28)
        >>> drift.compare(maps, maps)["mean"]["spearman"]
        1.0
    """
    spearman, iou, structural = metric_names(k)
    per_sample = {
        spearman: rank_correlation(original, variant, absolute=absolute),
        iou: topk_iou(original, variant, k=k, absolute=absolute),
        structural: ssim(original, variant, absolute=absolute),
    }
    result: dict[str, Any] = {
        "settings": {"absolute": absolute, "top_k_fraction": k, "ssim_window": 7},
        "per_sample": {name: [round(float(v), 6) for v in values] for name, values in per_sample.items()},
        "mean": {name: float(values.mean()) for name, values in per_sample.items()},
        "min": {name: float(values.min()) for name, values in per_sample.items()},
    }
    if labels is not None:
        labels = torch.as_tensor(labels).reshape(-1)
        result["per_class"] = {
            str(int(c)): {name: float(values[labels == c].mean()) for name, values in per_sample.items()} | {"n": int((labels == c).sum())}
            for c in torch.unique(labels)
        }
    order = torch.argsort(per_sample["spearman"], stable=True)  # lowest rank correlation = most drift
    result["most_drifting"] = [
        {"position": int(i), **{name: float(values[i]) for name, values in per_sample.items()}} for i in order[:worst]
    ]
    return result
