"""The explanation section's data, read from explain/'s explain.json files: trust, drift, heatmap gallery.

An explain run covers one model and at most one compressed variant, so a compression run may hold
several. They are found from results.json's ``explain`` key (explain.json content, a path relative to
the run folder, or a list or {variant: ...} mapping of those) or, without it, as ``*/explain.json``
inside the run folder. Every part is optional: a table appears only when its data is there.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

DATA_URI_PREFIX = "data:image/png;base64,"
MAX_GALLERY = 12


def _mean(value: Any) -> float | None:
    """A number, or the mean of explain's {mean, median, std} summaries."""
    if isinstance(value, dict):
        value = value.get("mean")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _png(path: Path) -> str | None:
    if path.suffix.lower() != ".png" or not path.is_file():
        return None
    return DATA_URI_PREFIX + base64.b64encode(path.read_bytes()).decode("ascii")


def _documents(spec: Any, run_dir: Path) -> tuple[list[tuple[dict[str, Any], Path]], list[str]]:
    """(explain.json content, folder it came from) pairs, and problems worth telling the reader."""
    docs: list[tuple[dict[str, Any], Path]] = []
    problems: list[str] = []

    def add(item: Any) -> None:
        if isinstance(item, dict) and ("drift" in item or "trust" in item or "methods" in item):
            docs.append((item, run_dir))
        elif isinstance(item, dict):
            for value in item.values():  # {variant: path-or-content}
                add(value)
        elif isinstance(item, list):
            for value in item:
                add(value)
        elif isinstance(item, str):
            path = run_dir / item
            path = path / "explain.json" if path.is_dir() else path
            if not path.is_file():
                problems.append(f"explain results {item} named in results.json are missing")
                return
            try:
                docs.append((json.loads(path.read_text()), path.parent))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                problems.append(f"explain results {item} are not valid JSON ({exc})")

    if spec is not None:
        add(spec)
    elif run_dir.is_dir():
        for path in sorted([*run_dir.glob("*/explain.json"), *run_dir.glob("*/*/explain.json")]):
            add(str(path.relative_to(run_dir)))
    return docs, problems


def _trust_rows(trust: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for method, entry in trust.items():
        if method == "settings" or not isinstance(entry, dict):
            continue
        rand = dict(entry.get("randomisation")) if isinstance(entry.get("randomisation"), dict) else {}
        if "randomisation_final_ssim" in entry:  # explain's headline scalars, when the details are absent
            rand.setdefault("final_ssim", entry["randomisation_final_ssim"])
            rand.setdefault("flagged", entry.get("randomisation_flagged"))
            rand.setdefault("inconclusive", entry.get("randomisation_inconclusive"))
        rows.append({
            "method": "random order (baseline)" if method == "random_order" else method,
            "deletion_auc": _mean(entry.get("deletion_auc")),
            "insertion_auc": _mean(entry.get("insertion_auc")),
            "infidelity": _mean(entry.get("infidelity")),
            "sensitivity_max": _mean(entry.get("sensitivity_max")),
            "randomised_ssim": _mean(rand.get("final_ssim")),
            "verdict": (rand.get("verdict") or ("flagged" if rand.get("flagged") else "inconclusive" if rand.get("inconclusive") else "passes")) if rand else "",
            "flagged": bool(rand.get("flagged")),
            "inconclusive": bool(rand.get("inconclusive")),
            "not_measured": entry.get("not_measured"),
        })
    return rows


def explain_context(spec: Any, run_dir: Path) -> dict[str, Any] | None:
    """Methods, trust table, drift per variant and per class, and the gallery of a run's explanations; None without any."""
    docs, problems = _documents(spec, run_dir)
    if not docs and not problems:
        return None
    methods: list[str] = []
    trust: list[dict[str, Any]] = []
    trust_note: str | None = None
    drift: list[dict[str, Any]] = []
    per_class: list[dict[str, Any]] = []
    classes: list[str] = []
    gallery: list[dict[str, str]] = []
    variant_warnings: list[str] = []  # what a reader of the drift must know first, as explain printed it
    for doc, base in docs:
        for m in doc.get("methods") or {}:
            if m not in methods:
                methods.append(m)
        if isinstance(doc.get("trust"), dict) and not trust:  # trust describes the original model: once is enough
            trust = _trust_rows(doc["trust"])
            trust_note = trust_note or doc["trust"].get("not_measured")  # a generator or autoencoder: why there is none
        variant = doc.get("variant") if isinstance(doc.get("variant"), dict) else {}
        name = variant.get("name", "variant")
        said = variant.get("warnings")
        weights = variant.get("original_weights")
        if isinstance(said, list):  # an unchecked origin, a variant that mostly predicts otherwise
            variant_warnings += [f"{name}: {w}" for w in said if isinstance(w, str)]
        elif isinstance(weights, dict) and weights.get("checked") is False and doc.get("drift"):  # written before warnings were listed
            variant_warnings.append(f"{name}: {weights.get('note') or 'which weights it was made from was not checked'}")
        for method, d in (doc.get("drift") or {}).items():
            if not isinstance(d, dict):
                continue
            mean, low, faith = d.get("mean") or {}, d.get("min") or {}, (d.get("faithfulness") or {}).get("change") or {}
            floor = d.get("floor") if isinstance(d.get("floor"), dict) else {}  # absent before explain measured it, null for one sample
            iou_key = next((k for k in mean if k.startswith("top") and k.endswith("_iou")), None)
            drift.append({
                "variant": name, "method": method, "agreement": _mean(variant.get("agreement_with_original")),
                "spearman": _mean(mean.get("spearman")), "iou": _mean(mean.get(iou_key)) if iou_key else None,
                "iou_label": iou_key or "top-k IoU", "ssim": _mean(mean.get("ssim")), "min_spearman": _mean(low.get("spearman")),
                "deletion_change": _mean(faith.get("deletion_auc")), "insertion_change": _mean(faith.get("insertion_auc")),
                "ran_on": d.get("variant_ran_on", ""),
                "spearman_floor": _mean(floor.get("spearman")), "iou_floor": _mean(floor.get(iou_key)) if iou_key else None,
                "ssim_floor": _mean(floor.get("ssim")),
                "no_floor": floor.get("unavailable") if isinstance(floor.get("unavailable"), str) else None,
            })
            if isinstance(d.get("per_class"), dict):
                cells = {}
                for c, v in d["per_class"].items():
                    cells[str(c)] = _mean(v.get("spearman")) if isinstance(v, dict) else _mean(v)
                    if str(c) not in classes:
                        classes.append(str(c))
                per_class.append({"name": f"{name} · {method}", "cells": cells})
            figure = _png(base / d["figure"]) if isinstance(d.get("figure"), str) else None
            if figure and len(gallery) < MAX_GALLERY:
                gallery.append({"title": f"{name} · {method}", "uri": figure,
                                "caption": "input | original's map | variant's map | difference, for the samples whose maps moved most"})
        grid = _png(base / "grid.png")
        if grid and not any(g["title"].startswith("original") for g in gallery) and len(gallery) < MAX_GALLERY:
            gallery.insert(0, {"title": "original · every method", "uri": grid, "caption": "the original model's maps on the explained inputs"})
    return {
        "problems": problems,
        "methods": methods,
        "trust": trust,
        "trust_note": trust_note,
        "drift": drift,
        "variant_warnings": variant_warnings,
        "iou_label": next((r["iou_label"] for r in drift), "top-k IoU"),
        "per_class": {"classes": sorted(classes, key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else c)), "rows": per_class} if per_class else None,
        "gallery": gallery,
    }
