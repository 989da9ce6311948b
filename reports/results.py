"""results.json: the versioned schema, reading it back with clear errors, and which metric leads."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from compress.results import SCHEMA  # compress writes the schema; reports reads it and adds latency
from reports.errors import ReportError
from zoo.cards import write_atomic

RESULTS_FILE = "results.json"
REQUIRED_VARIANT_KEYS = ("name",)
# metric name -> higher is better; the first one a run has leads its summary
METRIC_DIRECTION = {
    "accuracy": True,
    "macro_f1": True,
    "fd": False,
    "confident_fraction": True,
    "fidelity": False,
    "fidelity_mse": False,  # its name in results.json files written before 2026-12-07
    "mse": False,
}


def schema_major(schema: str) -> str:
    """The schema without its minor version: ``slimlens.results/1.2`` -> ``slimlens.results/1``."""
    family, _, version = schema.rpartition("/")
    return f"{family}/{version.split('.')[0]}"


def read_results(path: str | Path) -> dict[str, Any]:
    """Read and check a run's results.json (``path`` is the run folder or the file); its folder is kept in ``_dir``."""
    path = Path(path)
    file = path / RESULTS_FILE if path.is_dir() else path
    if not path.exists():
        raise ReportError(f"{path} does not exist; name a run folder written by `slimlens compress` or `slimlens bench`")
    if not file.is_file():
        raise ReportError(f"{path} holds no {RESULTS_FILE}; name a run folder written by `slimlens compress` or `slimlens bench`")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{file} is not valid JSON ({exc}); re-run the command that wrote it") from None
    if not isinstance(data, dict) or "schema" not in data:
        raise ReportError(f"{file} is not a slimlens results file (no 'schema': 'slimlens.results/N' key)")
    if not str(data["schema"]).startswith("slimlens.results/"):
        raise ReportError(f"{file} has schema {data['schema']!r}, not a slimlens results schema; this slimlens reads {SCHEMA!r}")
    variants = data.get("variants")
    if not isinstance(variants, list) or not variants or not all(isinstance(v, dict) and "name" in v for v in variants):
        raise ReportError(f"{file} has no list of named variants; re-run the command that wrote it")
    if schema_major(data["schema"]) != SCHEMA:
        raise ReportError(f"{file} has schema {data['schema']!r}; this slimlens reads {SCHEMA!r}")
    problem = _shape_problem(data)
    if problem:
        raise ReportError(f"{file}: {problem}; it was edited or damaged, re-run the command that wrote it")
    data["_dir"] = str(file.parent)
    return data


def _json_kind(value: Any) -> str:
    """How JSON names ``value``'s type, for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), "a number")


def _shape_problem(data: dict[str, Any]) -> str | None:
    """What in a results file has a type the report cannot use (None if nothing): edits and damage give one line, not a traceback."""
    for key in ("recipe", "environment", "timings", "timing"):
        if key in data and not isinstance(data[key], dict):
            return f"'{key}' is {_json_kind(data[key])}, not an object"
    for entry in data["variants"]:
        name = entry["name"]
        for key, kind in (("metrics", dict), ("parity", dict), ("latency", dict), ("steps", list)):
            if key in entry and not isinstance(entry[key], kind):
                return f"variant {name!r}: '{key}' is {_json_kind(entry[key])}, not {'an object' if kind is dict else 'a list'}"
        for device, figures in (entry.get("latency") or {}).items():
            if not isinstance(figures, dict):
                return f"variant {name!r}: latency of {device!r} is {_json_kind(figures)}, not an object"
        for key in ("size_bytes", "gzip_bytes", "params", "nonzero_params", "macs", "seconds"):
            if entry.get(key) is not None and (isinstance(entry[key], bool) or not isinstance(entry[key], (int, float))):
                return f"variant {name!r}: '{key}' is {_json_kind(entry[key])}, not a number"
            if entry.get(key) is not None and not 0 <= entry[key] < math.inf:  # NaN fails too; the report drew -7.5e+04x smaller
                return f"variant {name!r}: '{key}' is {entry[key]}, not a count of 0 or more"
        metrics = entry.get("metrics") or {}
        for key, value in metrics.items():
            if isinstance(value, float) and not math.isfinite(value):
                return f"variant {name!r}: metric '{key}' is {value}, not a finite number"
        recall = metrics.get("per_class_recall")
        if recall is not None and not (isinstance(recall, list) and all(isinstance(r, (int, float)) and not isinstance(r, bool)
                                                                         and 0 <= r <= 1 for r in recall)):
            return f"variant {name!r}: 'per_class_recall' must list fractions from 0 to 1"
        confusion = (entry.get("metrics") or {}).get("confusion")
        if confusion is not None and not (isinstance(confusion, list) and all(isinstance(row, list) and len(row) == len(confusion)
                                                                            for row in confusion)):
            return f"variant {name!r}: 'confusion' is not a square matrix"
    return None


def write_results(results: dict[str, Any], folder: str | Path) -> Path:
    """Write ``results`` as ``folder/results.json`` atomically (keys starting with ``_`` are not written)."""
    path = Path(folder) / RESULTS_FILE
    clean = {k: v for k, v in results.items() if not k.startswith("_")}
    write_atomic(path, (json.dumps(clean, indent=2, default=str) + "\n").encode())
    return path


def primary_metric(results: dict[str, Any]) -> tuple[str | None, bool]:
    """The metric that leads a run's summary, and whether higher is better."""
    if results.get("primary_metric"):
        name = results["primary_metric"]
        return name, bool(results.get("higher_is_better", METRIC_DIRECTION.get(name, True)))
    metrics = (results["variants"][0].get("metrics") or {}) if results.get("variants") else {}
    for name, higher in METRIC_DIRECTION.items():
        if isinstance(metrics.get(name), (int, float)):
            return name, higher
    return None, True


def check_comparable(runs: list[dict[str, Any]]) -> None:
    """Refuse run sets a side-by-side report cannot honestly show."""
    if not runs:
        raise ReportError("no runs to report; name at least one run folder")
    seen: dict[str, str] = {}
    for run in runs:
        key = str(Path(run.get("_dir", "")).resolve())
        if key in seen:
            raise ReportError(f"run folder {run['_dir']} is named twice")
        seen[key] = run["_dir"]
    majors = {schema_major(r["schema"]) for r in runs}
    if len(majors) > 1:
        raise ReportError(f"runs have different results schemas ({', '.join(sorted(majors))}) and cannot be compared; re-run the older ones")
