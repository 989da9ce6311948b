"""Pictures of attributions: matplotlib Figures a person can read, and PNG files written atomically.

Conventions across every figure: zero attribution is white; a map with signs uses red for
evidence for the target and blue against it; a map without signs uses reds. The digit is drawn as
a thin grey outline over the map so the map itself is never washed out. Figures are built with
``matplotlib.figure.Figure`` (no pyplot), so no global state or GUI backend is involved.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, ScalarFormatter

from zoo.cards import write_atomic

DPI = 100
HEATMAP_SIZE = (3.6, 3.0)  # inches: 360 x 300 px at DPI
SIGNED_CMAP = "RdBu_r"
UNSIGNED_CMAP = "Reds"


def to_map(attribution: torch.Tensor) -> np.ndarray:
    """A (H, W) numpy map from an attribution of shape (H, W), (C, H, W) or (1, C, H, W); channels summed."""
    a = attribution.detach().float().cpu()
    while a.dim() > 2:
        a = a.sum(0)
    return a.numpy()


def to_image(image: torch.Tensor) -> np.ndarray:
    """A (H, W) numpy greyscale image from (H, W), (C, H, W) or (1, C, H, W) pixels; channels averaged."""
    x = image.detach().float().cpu()
    while x.dim() > 2:
        x = x.mean(0)
    return x.numpy()


def scale_of(attribution: torch.Tensor | np.ndarray, percentile: float = 99.5) -> float:
    """A robust colour-scale limit: the ``percentile`` of |attribution| (never 0)."""
    values = np.abs(np.asarray(attribution, dtype=np.float64)).ravel()
    limit = float(np.percentile(values, percentile)) if values.size else 0.0
    return limit if limit > 0 else float(values.max(initial=0.0)) or 1.0


def is_signed(attribution: torch.Tensor | np.ndarray) -> bool:
    """Whether a map carries meaningful negative values (more than a rounding error below zero)."""
    a = np.asarray(attribution, dtype=np.float64)
    return bool(a.min(initial=0.0) < -1e-3 * max(np.abs(a).max(initial=0.0), 1e-12))


def draw_map(ax, image: np.ndarray | None, attribution: np.ndarray, vmax: float | None = None, signed: bool | None = None, outline: bool = True):
    """Draw one attribution map on ``ax`` with the digit's outline; returns the image artist for a colour bar."""
    signed = is_signed(attribution) if signed is None else signed
    vmax = scale_of(attribution) if vmax is None else vmax
    artist = ax.imshow(attribution, cmap=SIGNED_CMAP if signed else UNSIGNED_CMAP, vmin=-vmax if signed else 0.0, vmax=vmax, interpolation="nearest")
    if outline and image is not None and image.max() > image.min():
        level = image.min() + 0.5 * (image.max() - image.min())
        ax.contour(image, levels=[level], colors="0.35", linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    if not np.any(attribution):  # a blank map would otherwise read as "nothing here matters"
        ax.text(0.5, 0.5, "all zero", transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.2",
                bbox={"boxstyle": "round,pad=0.25", "facecolor": "white", "edgecolor": "0.6", "linewidth": 0.6})
    return artist


def heatmap(
    image: torch.Tensor,
    attribution: torch.Tensor,
    *,
    title: str | None = None,
    vmax: float | None = None,
    signed: bool | None = None,
    overlay: bool = True,
) -> Figure:
    """One attribution map beside its input, with a colour bar; pass ``vmax`` to share a scale across maps.

    Example::

        >>> import torch, zoo, explain
        >>> model = zoo.load("seed-cnn"); x = zoo.dataset("mnist", "test")[0][0][None]
        >>> fig = explain.heatmap(x[0], explain.attribute(model, x, method="saliency")[0], title="saliency")
        >>> fig.savefig("/tmp/saliency.png")
    """
    # Fixed axes positions rather than a layout engine: rendering stays fast and every PNG the same size.
    fig = Figure(figsize=HEATMAP_SIZE, dpi=DPI)
    # each title line wrapped to the figure's width (a long one was cut off at both sides); the maps make room for them
    title = "\n".join(_wrapped(line, HEATMAP_SIZE[0] - 0.2, 9) for line in title.splitlines()) if title else None
    lines = len(title.splitlines()) if title else 0
    height = 0.61 - 0.06 * max(0, lines - 1)
    left = fig.add_axes((0.03, 0.23, 0.45, height))
    right = fig.add_axes((0.52, 0.23, 0.45, height))
    img = to_image(image)
    left.imshow(img, cmap="gray", vmin=0.0, vmax=max(1.0, float(img.max())), interpolation="nearest")
    left.set_title("input", fontsize=9)
    left.set_xticks([])
    left.set_yticks([])
    amap = to_map(attribution)
    artist = draw_map(right, img if overlay else None, amap, vmax=vmax, signed=signed)
    right.set_title("attribution", fontsize=9)
    _colour_bar(fig, artist, fig.add_axes((0.1, 0.13, 0.8, 0.045)), 7)
    if title:
        fig.suptitle(title, fontsize=10 if lines == 1 else 9, y=0.98)
    return fig


def _colour_bar(fig: Figure, artist, cax, fontsize: float):
    """A horizontal colour bar in ``cax`` whose ticks of a tiny map (0-6) carry their scale (×10⁻⁸) where it can be read.

    ``cax`` sits high enough above the figure's bottom for the scale text under the tick labels: at 0.08 of
    a heatmap's height it fell off the PNG, and a map of 6e-8 read 0 to 6.
    """
    bar = fig.colorbar(artist, cax=cax, orientation="horizontal", format=_scale_formatter())
    bar.ax.tick_params(labelsize=fontsize)
    bar.ax.xaxis.get_offset_text().set_fontsize(fontsize + 1)
    return bar


def _scale_formatter() -> ScalarFormatter:
    """Tick labels with their power of ten written once as ×10ⁿ, from 1e-3 down and 1e4 up (600000 ran into its neighbours)."""
    formatter = ScalarFormatter(useMathText=True)
    formatter.set_powerlimits((-3, 4))
    return formatter


ROW_LABEL_CHARS = 22  # what a rotated label at fontsize 8 fits along one grid row


def _fit_row_label(label: str) -> str:
    """A row label with each over-long line broken at its ' · ' separators, and what is still too long shortened in
    the middle (a long file name ran off the top and bottom of its row), so it fits beside its row."""
    lines = [part for line in label.splitlines()
             for part in (line.split(" · ") if len(line) > ROW_LABEL_CHARS else [line])]
    half = ROW_LABEL_CHARS // 2
    return "\n".join(line if len(line) <= ROW_LABEL_CHARS else f"{line[:half - 1]}…{line[-half:]}" for line in lines)


def _wrapped(text: str, inches: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``inches`` of width at ``fontsize`` (about 0.55 em a character)."""
    import textwrap

    return textwrap.fill(text, max(8, int(inches * 72 / (0.55 * fontsize))), break_long_words=True)


def grid(
    images: torch.Tensor,
    maps: dict[str, torch.Tensor],
    *,
    row_labels: Sequence[str] | None = None,
    shared_scale: bool = False,
) -> Figure:
    """Samples as rows, the input then one column per method; each map is scaled on its own unless ``shared_scale``.

    With ``shared_scale`` every map of a method uses one colour limit, so rows compare in absolute
    terms; otherwise each map shows its own pattern at full contrast (the colour bar then reads
    "relative").
    """
    names = list(maps)
    n = len(images)
    fig = Figure(figsize=(1.55 * (len(names) + 1) + 0.3, 1.45 * n + 0.9), dpi=DPI, layout="constrained")
    axes = np.asarray(fig.subplots(n, len(names) + 1, squeeze=False))
    for col, name in enumerate(names):
        column = maps[name].detach().float()
        signed = is_signed(column.numpy())
        column_vmax = scale_of(column.numpy()) if shared_scale else None
        artist = None
        for row in range(n):
            amap = to_map(column[row])
            vmax = column_vmax
            if vmax is None:  # per-map contrast: show it as a fraction of its own robust maximum
                amap = amap / scale_of(amap)
                vmax = 1.0
            artist = draw_map(axes[row, col + 1], to_image(images[row]), amap, vmax=vmax, signed=signed)
        axes[0, col + 1].set_title(_wrapped(name.replace("noise_tunnel:", "smooth ").replace("_", " "), 1.4, 9), fontsize=9)
        # three ticks at 7 pt: five at 6 pt were hard to read, and neighbouring bars' end labels ran together ("1.0 0.0")
        bar = fig.colorbar(artist, ax=axes[:, col + 1].tolist(), orientation="horizontal", fraction=0.9 / (n + 4), aspect=12, shrink=0.9,
                           format=_scale_formatter())
        bar.locator = FixedLocator([-1.0, 0.0, 1.0] if signed else [0.0, 0.5, 1.0]) if column_vmax is None else MaxNLocator(2, symmetric=signed)
        bar.ax.tick_params(labelsize=7)
        bar.ax.xaxis.get_offset_text().set_fontsize(7)
        bar.set_label("attribution" if shared_scale else "relative", fontsize=7)
    for row in range(n):
        ax = axes[row, 0]
        ax.imshow(to_image(images[row]), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if row_labels is not None:
            ax.set_ylabel(_fit_row_label(row_labels[row]), fontsize=8)
    axes[0, 0].set_title("input", fontsize=9)
    return fig


def row_heatmap(image: torch.Tensor, attribution: torch.Tensor, *, title: str | None = None) -> Figure:
    """An LSTM's view: the pixel map over the digit, and beside it the total attribution of each row (time step)."""
    img, amap = to_image(image), to_map(attribution)
    per_step = amap.sum(axis=1)
    fig = Figure(figsize=(4.8, 3.0), dpi=DPI)
    # square image axes (1.44 in) and a bar axis of the same height, so bar t sits beside row t
    left = fig.add_axes((0.02, 0.27, 0.30, 0.48))
    mid = fig.add_axes((0.34, 0.27, 0.30, 0.48))
    right = fig.add_axes((0.76, 0.27, 0.22, 0.48))
    left.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    left.set_title("input", fontsize=9)
    left.set_xticks([])
    left.set_yticks([])
    artist = draw_map(mid, img, amap)
    mid.set_title("pixel x step", fontsize=9)
    steps = np.arange(len(per_step))
    colours = np.where(per_step >= 0, "#c0392b", "#2e6da4")
    right.barh(steps, per_step, color=colours, height=0.85)
    right.set_ylim(len(per_step) - 0.5, -0.5)  # row 0 at the top, as in the image
    right.axvline(0.0, color="0.3", linewidth=0.6)
    right.set_title("per time step", fontsize=9)
    right.set_ylabel("row (time step)", fontsize=7)
    right.tick_params(labelsize=6)
    right.xaxis.set_major_formatter(_scale_formatter())
    right.xaxis.get_offset_text().set_fontsize(6)
    _colour_bar(fig, artist, fig.add_axes((0.05, 0.13, 0.54, 0.045)), 6)
    if title:
        fig.suptitle(title, fontsize=10, y=0.97)
    return fig


def bars(values: torch.Tensor, *, title: str | None = None, xlabel: str = "latent dimension", top: int = 8) -> Figure:
    """Attribution per input dimension (e.g. a GAN's latent units) as bars, the ``top`` largest labelled."""
    v = values.detach().float().cpu().reshape(-1).numpy()
    fig = Figure(figsize=(6.4, 2.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.bar(np.arange(len(v)), v, color=np.where(v >= 0, "#c0392b", "#2e6da4"), width=0.85)
    ax.axhline(0.0, color="0.3", linewidth=0.6)
    for i in np.argsort(-np.abs(v))[:top]:
        ax.annotate(str(i), (i, v[i]), fontsize=6, ha="center", va="bottom" if v[i] >= 0 else "top")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("attribution", fontsize=8)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def panel(images: torch.Tensor, maps: torch.Tensor, *, labels: Sequence[str], title: str | None = None, columns: int = 8, shared_scale: bool = True) -> Figure:
    """Several maps over their inputs in a grid (each labelled), e.g. one per latent code unit; one colour scale unless told otherwise.

    A shared scale keeps a weak map faint (a dead code unit stays blank) instead of blowing its
    noise up to full contrast.
    """
    n = len(maps)
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(1.3 * cols + 0.2, 1.4 * rows + 0.5), dpi=DPI, layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
    all_maps = [to_map(m) for m in maps]
    signed = any(is_signed(m) for m in all_maps)
    limit = scale_of(np.stack(all_maps)) if shared_scale else None
    artist = None
    for i, ax in enumerate(axes):
        if i >= n:
            ax.axis("off")
            continue
        image = images[i] if len(images) == n else images[0]
        amap = all_maps[i]
        artist = draw_map(ax, to_image(image), amap / (limit or scale_of(amap)), vmax=1.0, signed=signed)
        ax.set_title(labels[i], fontsize=7)
    if artist is not None:
        bar = fig.colorbar(artist, ax=axes.tolist(), orientation="horizontal", fraction=0.5 / (rows + 3), aspect=40)
        bar.ax.tick_params(labelsize=6)
        bar.set_label("relative attribution (one scale for all maps)" if shared_scale else "relative attribution (per map)", fontsize=7)
    if title:
        fig.suptitle(_wrapped(title, fig.get_figwidth() - 0.3, 10), fontsize=10)
    return fig


def image_panel(images: torch.Tensor, *, labels: Sequence[str], title: str | None = None, columns: int = 8) -> Figure:
    """Images themselves (e.g. a generator's digits) in a labelled grid, in grey with a pixel-value bar: no attribution is drawn."""
    n = len(images)
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(1.3 * cols + 0.2, 1.4 * rows + 0.6), dpi=DPI, layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
    artist = None
    for i, ax in enumerate(axes):
        if i >= n:
            ax.axis("off")
            continue
        artist = ax.imshow(to_image(images[i]), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(labels[i], fontsize=7)
    if artist is not None:
        bar = fig.colorbar(artist, ax=axes.tolist(), orientation="horizontal", fraction=0.5 / (rows + 3), aspect=40)
        bar.ax.tick_params(labelsize=6)
        bar.set_label("pixel value (the images themselves, not attributions)", fontsize=7)
    if title:
        fig.suptitle(_wrapped(title, fig.get_figwidth() - 0.3, 10), fontsize=10)
    return fig


def drift_figure(images: torch.Tensor, original: torch.Tensor, variant: torch.Tensor, *, labels: Sequence[str], names: tuple[str, str] = ("original", "variant"),
                 title: str | None = None) -> Figure:
    """Rows of input | original map | variant map | difference, on one scale per row so the difference is honest; ``title`` above."""
    n = len(images)
    fig = Figure(figsize=(6.2, 1.5 * n + 0.6), dpi=DPI, layout="constrained")
    axes = np.asarray(fig.subplots(n, 4, squeeze=False))
    for row in range(n):
        img = to_image(images[row])
        a, b = to_map(original[row]), to_map(variant[row])
        # Each map is scaled to its own robust maximum first: drift is about where, not how much.
        a, b = a / scale_of(a), b / scale_of(b)
        axes[row, 0].imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[row, 0].set_ylabel(labels[row], fontsize=7)
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
        signed = is_signed(a) or is_signed(b)
        draw_map(axes[row, 1], img, a, vmax=1.0, signed=signed)
        draw_map(axes[row, 2], img, b, vmax=1.0, signed=signed)
        diff_artist = draw_map(axes[row, 3], img, b - a, vmax=1.0, signed=True)
        # on a white backing: over a saturated difference map grey text could not be read
        axes[row, 3].text(0.5, 0.03, f"max |diff| {np.abs(b - a).max():.2f}", transform=axes[row, 3].transAxes, ha="center", va="bottom", fontsize=6,
                          color="0.15", bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "0.6", "linewidth": 0.5, "alpha": 0.9})
    for col, heading in enumerate(("input", names[0], names[1], f"difference\n({names[1].split(chr(10))[0]} - {names[0]})")):
        axes[0, col].set_title(heading, fontsize=8)
    bar = fig.colorbar(diff_artist, ax=axes[:, 1:].ravel().tolist(), orientation="horizontal", fraction=0.6 / (n + 3), aspect=30)
    bar.ax.tick_params(labelsize=6)
    bar.set_label("relative attribution", fontsize=7)
    if title:
        fig.suptitle(_title_lines(title, fig.get_figwidth() - 0.3, 8), fontsize=8)
    return fig


def _title_lines(title: str, inches: float, fontsize: float) -> str:
    """A drift title as lines: what the mean is over, then its figures, broken only between items (``, ``), so a figure
    keeps its floor beside it ('SSIM 0.04' ended one line and '(floor 0.04)' made the next)."""
    lines = title.splitlines() if "\n" in title else title.replace(": ", ":\n", 1).splitlines()
    width = max(8, int(inches * 72 / (0.55 * fontsize)))
    out: list[str] = []
    for line in lines:
        current = ""
        for item in line.split(", "):
            if current and len(current) + 2 + len(item) > width:
                out.append(current + ",")
                current = item
            else:
                current = f"{current}, {item}" if current else item
        out.extend(_wrapped(current, inches, fontsize).splitlines())  # an item longer than a line still fits
    return "\n".join(out)


def png_bytes(fig: Figure) -> bytes:
    """The figure rendered as PNG bytes at its own size (no tight cropping, so sizes are predictable)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    write_atomic(path, png_bytes(fig))
    return path
