"""The explanation section's data: trust metrics, drift per variant and per class, and the heatmap gallery.

explain/ writes explain.json; results.json may embed it or name it (a path relative to the run folder).
This module reads whichever it is tolerantly, because a report must still render when a field is
absent: each part appears only when its data is there.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from reports import plots

DATA_URI_PREFIX = "data:image/png;base64,"


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool) or isinstance(value, bool)


def table(mapping: Any) -> dict[str, Any] | None:
    """A {row: {column: scalar}} mapping (or a list of row dicts with 'name'/'variant') as columns and rows."""
    if isinstance(mapping, list) and all(isinstance(r, dict) for r in mapping):
        key = next((k for k in ("variant", "name", "method", "class") if mapping and k in mapping[0]), None)
        mapping = {str(r.get(key, i)): {k: v for k, v in r.items() if k != key} for i, r in enumerate(mapping)}
    if not isinstance(mapping, dict) or not mapping:
        return None
    if all(_scalar(v) for v in mapping.values()):
        return {"columns": ["value"], "rows": [{"name": k, "cells": [v]} for k, v in mapping.items()]}
    rows = {k: v for k, v in mapping.items() if isinstance(v, dict)}
    columns: list[str] = []
    for v in rows.values():
        for col, cell in v.items():
            if _scalar(cell) and col not in columns:
                columns.append(col)
    if not columns:
        return None
    return {"columns": columns, "rows": [{"name": k, "cells": [v.get(c) for c in columns]} for k, v in rows.items()]}


def _image(value: Any, base: Path) -> Any:
    """An image given as a PNG data URI, a PNG path (relative to ``base``), or an array; None if unreadable."""
    if isinstance(value, str):
        if value.startswith(DATA_URI_PREFIX):
            return value
        path = base / value
        if path.suffix.lower() == ".png" and path.is_file():
            return DATA_URI_PREFIX + base64.b64encode(path.read_bytes()).decode("ascii")
        return None
    if isinstance(value, list):
        return value
    return None


def gallery(items: Any, base: Path) -> list[dict[str, Any]]:
    """Heatmap gallery rows: original | variant | difference, per input; arrays are drawn here."""
    out = []
    if isinstance(items, dict):  # {variant: [items]} -> flat list with the variant named
        items = [{**it, "variant_name": name} for name, group in items.items() if isinstance(group, list) for it in group if isinstance(it, dict)]
    if not isinstance(items, list):
        return out
    for item in items[:24]:
        if not isinstance(item, dict):
            continue
        title = " · ".join(str(item[k]) for k in ("variant_name", "variant", "method", "label", "class", "index") if k in item)
        cells = {k: _image(item.get(k), base) for k in ("input", "original", "variant", "difference")}
        cells = {k: v for k, v in cells.items() if v is not None}
        if not cells:
            continue
        if all(isinstance(v, str) for v in cells.values()):
            out.append({"title": title, "images": [{"label": k, "uri": v} for k, v in cells.items()]})
        else:
            arrays = {k: v for k, v in cells.items() if isinstance(v, list)}
            uri = plots.image_grid([list(arrays.values())], list(arrays), [title[:30]], [k == "difference" for k in arrays])
            out.append({"title": title, "images": [{"label": " | ".join(arrays), "uri": uri}]})
    return out


def explain_context(explain: Any, run_dir: Path) -> dict[str, Any] | None:
    """Trust, drift (overall and per class), gallery and other figures of an explanation run, or None."""
    base = run_dir
    if isinstance(explain, str):
        path = run_dir / explain
        if not path.is_file():
            return {"error": f"explain results {explain} named in results.json are missing"}
        try:
            explain = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            return {"error": f"explain results {explain} are not valid JSON ({exc})"}
        base = path.parent
    if not isinstance(explain, dict) or not explain:
        return None
    drift = explain.get("drift")
    per_class = None
    if isinstance(drift, dict):
        per_class = {v: d.get("per_class") for v, d in drift.items() if isinstance(d, dict) and isinstance(d.get("per_class"), (dict, list))}
        per_class = {v: (dict(enumerate(pc)) if isinstance(pc, list) else pc) for v, pc in per_class.items()} or None
    used = {"drift", "trust", "gallery", "heatmaps", "schema"}
    others = {k: table(v) for k, v in explain.items() if k not in used and isinstance(v, (dict, list))}
    return {
        "error": None,
        "methods": explain.get("methods") if isinstance(explain.get("methods"), list) else None,
        "trust": table(explain.get("trust")),
        "drift": table(drift),
        "drift_per_class": table(per_class) if per_class else None,
        "gallery": gallery(explain.get("gallery", explain.get("heatmaps")), base),
        "others": {k: v for k, v in others.items() if v},
    }
