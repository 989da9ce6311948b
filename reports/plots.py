"""Matplotlib figures for the report, each returned as a base64 PNG data URI (no pyplot global state)."""

from __future__ import annotations

import base64
import io
import math
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter, ScalarFormatter

from reports.pareto import pareto_front

# Metrics that are a share of the inputs: they lie in [0, 1], so their axes do too.
FRACTION_METRICS = frozenset({"accuracy", "balanced_accuracy", "top1", "top5", "recall", "precision", "f1"})
MARKER_ROOM_PT = 6  # room for a scatter marker, in points: radius about 4.6 (s=60 and the Pareto ring) plus a margin

DPI = 110  # the report's PNGs are drawn at this resolution
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def to_data_uri(fig: Figure, dpi: int = DPI) -> str:
    """Render ``fig`` to PNG and return it as a ``data:image/png;base64,...`` URI."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def tradeoff(names: Sequence[str], costs: Sequence[float | None], metrics: Sequence[float | None], *, cost_label: str,
             metric_label: str, higher_is_better: bool, log_x: bool = False) -> str | None:
    """Metric against a cost (latency or size), Pareto front drawn and its points ringed; None if nothing to plot."""
    fig = tradeoff_figure(names, costs, metrics, cost_label=cost_label, metric_label=metric_label,
                          higher_is_better=higher_is_better, log_x=log_x)
    return to_data_uri(fig) if fig is not None else None


MARKER_SIZE = 60


def _stacked_sizes(points: Sequence[tuple[float, float]], log_x: bool) -> list[float]:
    """Marker areas, each drawn smaller than the earlier markers it would cover, so every variant stays visible.

    original and original-onnx often have the same size and accuracy: drawn alike, the second hid the first.
    """
    costs = [math.log(c) if log_x and c > 0 else c for c, _ in points]
    metrics = [m for _, m in points]
    span_c = (max(costs) - min(costs)) or 1.0
    span_m = (max(metrics) - min(metrics)) or 1.0
    sizes: list[float] = []
    for i, (c, m) in enumerate(zip(costs, metrics)):
        under = [sizes[j] for j in range(i) if abs(costs[j] - c) < 0.02 * span_c and abs(metrics[j] - m) < 0.02 * span_m]
        sizes.append(min(under) * 0.4 if under else MARKER_SIZE)
    return sizes


def tradeoff_figure(names: Sequence[str], costs: Sequence[float | None], metrics: Sequence[float | None], *, cost_label: str,
                    metric_label: str, higher_is_better: bool, log_x: bool = False) -> Figure | None:
    """The figure of ``tradeoff``, labels placed, before it is rendered to PNG."""
    pts = [(n, c, m) for n, c, m in zip(names, costs, metrics) if c is not None and m is not None]
    if not pts:
        return None
    front = pareto_front([p[1] for p in pts], [p[2] for p in pts], higher_is_better)
    # at the PNG's resolution, so the names are placed with the widths they are drawn at: at the default
    # 100 dpi 'original' fitted by a pixel, at 110 dpi it ran past the frame (text widths do not scale exactly)
    fig = Figure(figsize=(5.2, 3.6), dpi=DPI)
    ax = fig.add_subplot()
    sizes = _stacked_sizes([(p[1], p[2]) for p in pts], log_x)
    for i, (name, cost, metric) in enumerate(pts):
        ax.scatter(cost, metric, s=sizes[i], color=PALETTE[i % len(PALETTE)], zorder=3 + i * 0.01,
                   edgecolors="black" if front[i] else "none", linewidths=1.5)
    line = sorted((p[1], p[2]) for p, on in zip(pts, front) if on)
    if len(line) > 1:
        ax.step([c for c, _ in line], [m for _, m in line], where="post", color="#444", lw=1, ls="--", zorder=2, label="Pareto front")
    costs_drawn = [p[1] for p in pts]
    if log_x and min(costs_drawn) > 0 and max(costs_drawn) / min(costs_drawn) > 4:  # log only when sizes span a range
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1-2-5 ticks, plain numbers, no crowded minor labels
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.15, y=0.2)
    if metric_label.lower() in FRACTION_METRICS:
        clip_to_fraction(fig, ax)
    ax.set_xlabel(cost_label)
    ax.set_ylabel(f"{metric_label} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.grid(alpha=0.3)
    if len(line) > 1:
        legend_below(fig, ax, fontsize=7)
    # names beside the points (a reader should not have to match colours to a legend), placed so none overlap
    _place_labels(fig, ax, [(name, cost, metric) for name, cost, metric in pts])
    return fig


def clip_to_fraction(fig: Figure, ax: Any) -> None:
    """Hold the y axis of a fraction to [0, 1]: no tick beyond, and only the room a marker on the bound needs."""
    # Autoscaling pads past the data, and equal values (int8 often matches the original exactly) get
    # ±7%: accuracy drew ticks up to 1.06.
    low, high = ax.get_ylim()
    inner_low, inner_high = max(low, 0.0), min(high, 1.0)
    if inner_high <= inner_low:
        return
    cut = (low < 0.0) + (high > 1.0)
    share = MARKER_ROOM_PT * fig.dpi / 72 / ax.get_window_extent().height  # of the axis height, per bound that was cut
    room = (inner_high - inner_low) * share / (1 - cut * share)
    ax.set_ylim(inner_low - room if low < 0.0 else low, inner_high + room if high > 1.0 else high)
    ticks = ax.yaxis.get_major_locator().tick_values(inner_low, inner_high)
    ax.yaxis.set_major_locator(FixedLocator([t for t in ticks if inner_low - 1e-9 <= t <= inner_high + 1e-9]))


def legend_below(fig: Figure, ax: Any, **kwargs: Any) -> None:
    """Put the legend under the axes and their x label, where it can cover no point, bar or line whatever the data."""
    # Inside the axes a fixed corner or "best" still landed on data (a slow, dominated variant sits
    # at the lower right; bars or curves can fill every corner). bbox_inches="tight" grows the PNG to hold it.
    renderer = FigureCanvasAgg(fig).get_renderer()
    bottom = ax.xaxis.get_tightbbox(renderer).y0 - 4 * fig.dpi / 72  # pixels, under the tick labels and the x label
    y = ax.transAxes.inverted().transform((0, bottom))[1]
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, y), frameon=False, **kwargs)


# Places to try for a label, in points from its marker, nearest first: the four corners beside the
# point, then further out (with a leader line) so that a dense cluster of variants still gets every
# name legible somewhere near its point.
_OFFSETS = sorted(((dx, dy) for dx in (7, -7, 24, -24, 48, -48, 80, -80) for dy in (3, -11, 13, -21, 23, -31, 33, -41, 43, -51, 53, -61)),
                  key=lambda o: (abs(o[0]) > 7 or o[1] not in (3, -11), math.hypot(o[0], o[1] + 4)))


def _overlap_area(box: Any, others: Sequence[Any]) -> float:
    return sum(max(0.0, min(box.x1, o.x1) - max(box.x0, o.x0)) * max(0.0, min(box.y1, o.y1) - max(box.y0, o.y0)) for o in others)


LABEL_GAP = 3  # points kept free between two names
EDGE_GAP = 2  # points kept free between a name's backing and the axes frame, so no name touches the frame
LABEL_SIZE, LABEL_PAD = 7, 0.05  # a name's font size in points, and its white backing's pad as a share of it


def _outside_area(box: Any, room: Any) -> float:
    """Pixels of ``box`` that lie outside ``room``."""
    inside = max(0.0, min(box.x1, room.x1) - max(box.x0, room.x0)) * max(0.0, min(box.y1, room.y1) - max(box.y0, room.y0))
    return box.width * box.height - inside


def _place_labels(fig: Figure, ax: Any, points: Sequence[tuple[str, float, float]]) -> None:
    """Label each point at the nearest offset whose text stays inside the axes and overlaps no label or marker (greedy).

    Labels pushed beyond the four places around their point get a thin leader line, so a reader
    still sees which point a name belongs to. Where no place is free, the label goes where it
    overlaps least, and where none is inside the axes, where the least of it is outside.
    """
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # view limits are autoscaled lazily, at draw: before it, data-to-pixel positions are stale
    renderer = canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    # the words must keep their backing and a gap clear of the frame: the words alone may end on it
    # ('original' at the far right of a size plot ran into the frame)
    inset = (EDGE_GAP + LABEL_PAD * LABEL_SIZE) * fig.dpi / 72
    room = Bbox.from_extents(frame.x0 + inset, frame.y0 + inset, frame.x1 - inset, frame.y1 - inset)
    radius = MARKER_ROOM_PT * fig.dpi / 72  # the markers, in pixels
    taken = [Bbox.from_extents(x - radius, y - radius, x + radius, y + radius)
             for x, y in (ax.transData.transform((c, m)) for _, c, m in points)]
    boxes: list[Any] = []
    for name, cost, metric in points:
        best: tuple[tuple[float, float], int] = ((math.inf, math.inf), 0)
        for rank, (dx, dy) in enumerate(_OFFSETS):
            label = _annotate(ax, name, cost, metric, dx, dy, leader=rank >= 4)
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer)  # the words only, not the leader line
            label.remove()
            score = (_outside_area(box, room), _overlap_area(box, boxes + taken))
            if score < best[0]:
                best = (score, rank)
            if score == (0.0, 0.0):
                break
        dx, dy = _OFFSETS[best[1]]
        chosen = _annotate(ax, name, cost, metric, dx, dy, leader=best[1] >= 4)
        chosen.update_positions(renderer)
        # padded, so that two names cannot touch end to end and read as one ("int8-dynamicoriginal")
        boxes.append(Text.get_window_extent(chosen, renderer).expanded(1.0, 1.0).padded(LABEL_GAP * fig.dpi / 72))


def _annotate(ax: Any, name: str, cost: float, metric: float, dx: int, dy: int, leader: bool) -> Any:
    arrow = {"arrowprops": {"arrowstyle": "-", "color": "#999", "lw": 0.6, "shrinkA": 0, "shrinkB": 4}} if leader else {}
    # a light backing keeps the name readable where a grid or Pareto line passes under it
    return ax.annotate(name, (cost, metric), xytext=(dx, dy), textcoords="offset points", fontsize=LABEL_SIZE,
                       ha="left" if dx > 0 else "right", va="bottom", zorder=4,
                       bbox={"boxstyle": f"square,pad={LABEL_PAD}", "fc": "white", "ec": "none", "alpha": 0.8}, **arrow)


def size_bars(names: Sequence[str], sizes: Sequence[int | None], gzip_sizes: Sequence[int | None]) -> str | None:
    """Artifact size per variant on disk and gzipped, in KiB."""
    fig = size_bars_figure(names, sizes, gzip_sizes)
    return to_data_uri(fig) if fig is not None else None


def size_bars_figure(names: Sequence[str], sizes: Sequence[int | None], gzip_sizes: Sequence[int | None]) -> Figure | None:
    """The figure of ``size_bars``, before it is rendered to PNG; None if no size is known."""
    if not any(s for s in sizes):
        return None
    fig = Figure(figsize=(5.2, 0.5 + 0.42 * len(names)), dpi=DPI)
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y + 0.2, [(s or 0) / 1024 for s in sizes], height=0.4, color="#1f77b4", label="on disk")
    ax.barh(y - 0.2, [(s or 0) / 1024 for s in gzip_sizes], height=0.4, color="#9ecae1", label="gzip -9")
    ax.set_yticks(y, labels=list(names))
    ax.invert_yaxis()
    ax.set_xlabel("KiB")
    ax.grid(axis="x", alpha=0.3)
    legend_below(fig, ax, fontsize=7, ncol=2)
    return fig


def confusion(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str, reference: Sequence[Sequence[int]] | None = None) -> str:
    """A confusion matrix (rows true, columns predicted) with counts in the cells; with ``reference``, the change from it."""
    m = np.asarray(matrix)
    n = len(m)
    diff = reference is not None
    if diff:
        m = m - np.asarray(reference)
    fig = Figure(figsize=(1.6 + 0.2 * n, 1.5 + 0.2 * n), dpi=DPI)
    ax = fig.add_subplot()
    if diff:
        lim = max(int(np.abs(m).max()), 1)
        ax.imshow(m, cmap="RdBu", vmin=-lim, vmax=lim)  # blue: more in that cell than the original, red: fewer
    else:
        ax.imshow(m, cmap="Blues")
    labels = list(class_names) if len(class_names) == n else [str(i) for i in range(n)]
    ax.set_xticks(range(n), labels=labels, fontsize=6)
    ax.set_yticks(range(n), labels=labels, fontsize=6)
    ax.set_xlabel("predicted", fontsize=7)
    ax.set_ylabel("true", fontsize=7)
    ax.set_title(title if not diff else f"{title}: change" + ("" if m.any() else " (none)"), fontsize=8)
    top = np.abs(m).max() if m.size else 1
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                text = f"{m[i, j]:+d}" if diff else str(m[i, j])
                ax.text(j, i, text, ha="center", va="center", fontsize=5.5, color="white" if abs(m[i, j]) > top / 2 else "black")
    return to_data_uri(fig)


def _points(curve: Any) -> tuple[list[float], list[float]] | None:
    """(x, y) from the shapes a sensitivity curve may take: [[x, y], ...], [{ratio, metric}], {x: [...], y: [...]}, {x: y}."""
    if isinstance(curve, dict):
        xs_key = next((k for k in ("ratios", "ratio", "x", "strengths", "bits") if k in curve), None)
        ys_key = next((k for k in ("metric", "metrics", "values", "y", "accuracy", "score") if k in curve), None)
        if xs_key and ys_key and isinstance(curve[xs_key], list):
            return [float(v) for v in curve[xs_key]], [float(v) for v in curve[ys_key]]
        try:
            pairs = sorted((float(k), float(v)) for k, v in curve.items())
        except (TypeError, ValueError):
            return None
        return ([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else None
    if isinstance(curve, list) and curve:
        if all(isinstance(p, (list, tuple)) and len(p) == 2 for p in curve):
            return [float(p[0]) for p in curve], [float(p[1]) for p in curve]
        if all(isinstance(p, dict) for p in curve):
            xk = next((k for k in ("ratio", "x", "strength", "bits", "amount") if k in curve[0]), None)
            yk = next((k for k in ("metric", "y", "accuracy", "value", "score") if k in curve[0]), None)
            if xk and yk:
                return [float(p[xk]) for p in curve], [float(p[yk]) for p in curve]
    return None


def _curve(curve: Any, xs: Sequence[float] | None) -> tuple[list[float], list[float]] | None:
    """One layer's (x, metric) points: compress's {"values": [...]} against shared ``xs``, or any shape _points reads."""
    values = curve.get("values") if isinstance(curve, dict) else None
    if isinstance(values, list) and xs is not None and len(values) == len(xs):
        return [float(x) for x in xs], [float(v) for v in values]
    return _points(curve)


def sensitivity(layers: dict[str, Any], title: str, metric_label: str, *, xs: Sequence[float] | None = None, xlabel: str = "strength",
                baseline: float | None = None, higher_is_better: bool = True, invert_x: bool = False, highlight: int = 6) -> str | None:
    """Per-layer sensitivity: metric when only that layer is compressed, one line per layer; the most sensitive named."""
    fig = sensitivity_figure(layers, title, metric_label, xs=xs, xlabel=xlabel, baseline=baseline, higher_is_better=higher_is_better,
                             invert_x=invert_x, highlight=highlight)
    return to_data_uri(fig) if fig is not None else None


def sensitivity_figure(layers: dict[str, Any], title: str, metric_label: str, *, xs: Sequence[float] | None = None,
                       xlabel: str = "strength", baseline: float | None = None, higher_is_better: bool = True,
                       invert_x: bool = False, highlight: int = 6) -> Figure | None:
    """The figure of ``sensitivity``, before it is rendered to PNG; None if no curve could be read."""
    curves = {name: c for name, c in ((n, _curve(c, xs)) for n, c in layers.items()) if c and c[0]}
    if not curves:
        return None
    sign = 1.0 if higher_is_better else -1.0
    # the layers that lose most at their strongest setting get colours and a legend entry; the rest stay grey
    worst = sorted(curves, key=lambda n: sign * min(curves[n][1], key=lambda v: sign * v))[:highlight]
    fig = Figure(figsize=(5.2, 3.6), dpi=DPI)
    ax = fig.add_subplot()
    for name, (x, y) in curves.items():
        if name not in worst:
            ax.plot(x, y, color="#bbbbbb", lw=0.8, zorder=1)
    for i, name in enumerate(worst):
        x, y = curves[name]
        ax.plot(x, y, marker="o", ms=3, lw=1.4, color=PALETTE[i % len(PALETTE)], label=name, zorder=2)
    if baseline is not None:
        ax.axhline(baseline, color="black", lw=0.8, ls="--", label="unchanged model")
    if invert_x:
        ax.invert_xaxis()
    if metric_label.lower() in FRACTION_METRICS:
        clip_to_fraction(fig, ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric_label} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    entries = len(worst) + (baseline is not None)
    legend_below(fig, ax, fontsize=6, ncol=3 if entries > 4 else 2)
    return fig


def image_grid(rows: Sequence[Sequence[Any]], column_titles: Sequence[str], row_titles: Sequence[str], diverging: Sequence[bool]) -> str:
    """A grid of 2-D arrays (heatmaps): one row per input, columns e.g. original | variant | difference."""
    n_rows, n_cols = len(rows), len(column_titles)
    fig = Figure(figsize=(1.6 * n_cols + 0.6, 1.6 * n_rows + 0.3), dpi=DPI)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = fig.add_subplot(n_rows, n_cols, r * n_cols + c + 1)
            arr = np.asarray(image, dtype=float).squeeze()
            if diverging[c]:
                lim = float(np.abs(arr).max()) or 1.0
                ax.imshow(arr, cmap="RdBu_r", vmin=-lim, vmax=lim)
            else:
                ax.imshow(arr, cmap="inferno")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_titles[r], fontsize=7)
    return to_data_uri(fig)
