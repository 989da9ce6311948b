"""Model cards: what a trained zoo model is and how well it did, stored as JSON beside its weights."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from zoo.errors import SlimlensError, WeightsError
from zoo.registry import spec

TRAINED_DIR = Path(__file__).parent / "trained"
# ``zoo train`` of a GAN moves its finished pair here first, then file by file into place, then removes
# it: files left in it mean an install was interrupted and the pair in the folder may be mixed.
GAN_PAIR_INSTALLING = ".dcgan-pair.installing"


@dataclass(frozen=True)
class ModelCard:
    """The facts of one trained zoo model, like torchvision's ``Weights.meta``."""

    name: str
    family: str
    task: str
    description: str
    dataset: dict[str, Any]
    input: dict[str, Any]
    class_names: list[str]
    params: int
    metrics: dict[str, Any]
    primary_metric: str
    higher_is_better: bool
    weights: dict[str, Any]
    training: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> float:
        """The value of the card's primary metric."""
        return float(self.metrics[self.primary_metric])

    def to_dict(self) -> dict[str, Any]:
        """The card as plain JSON-ready data."""
        return asdict(self)


def card_path(name: str, root: str | Path | None = None) -> Path:
    """Where the card of ``name`` lives (``root`` defaults to the package's trained/ folder)."""
    return Path(root or TRAINED_DIR) / f"{name}.card.json"


def weights_path(name: str, root: str | Path | None = None) -> Path:
    """Where the safetensors weights of ``name`` live."""
    return Path(root or TRAINED_DIR) / f"{name}.safetensors"


def card(name: str, root: str | Path | None = None) -> ModelCard:
    """Read the model card of zoo model ``name``."""
    model_spec = spec(name)  # a clear error for an unknown name before looking for files
    path = card_path(name, root)
    pending = path.parent / GAN_PAIR_INSTALLING
    if model_spec.family == "gan" and pending.is_dir() and any(pending.iterdir()):
        raise WeightsError(f"{path.parent} holds a GAN pair whose install was interrupted ({pending} is not empty), so "
                           f"{name} may not match its partner; run `slimlens zoo train {name} --out {path.parent}` again")
    try:
        data = json.loads(path.read_text())
        return ModelCard(**data)
    except FileNotFoundError:
        raise WeightsError(f"no model card {path}; train it with `slimlens zoo train {name} --out {path.parent}`") from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise WeightsError(f"model card {path} is not a valid card ({exc}); restore it or retrain with `slimlens zoo train {name}`") from None


def usual_mode(path: str | Path, mode: int = 0o777) -> None:
    """Give ``path`` the permissions a plain mkdir (0o777) or open (0o666) would: mkdtemp/mkstemp make it private."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        usual_mode(tmp, 0o666)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_out(out: str | Path, folder: bool, example: str = "samples.png") -> Path:
    """Raise a one-line SlimlensError if ``out`` (a folder to fill, or else a file such as ``example``) cannot be written; return it as a Path."""
    out = Path(out)
    if folder and out.exists() and not out.is_dir():
        raise SlimlensError(f"--out {out} is a file; name a folder")
    if not folder and out.is_dir():
        raise SlimlensError(f"--out {out} is a folder; name a file to write, e.g. {out / example}")
    if not folder and out.exists() and not out.is_file():
        # os.replace would swap a device or pipe (e.g. /dev/null) for a regular file
        raise SlimlensError(f"--out {out} is not a regular file; name a file to write")
    where = out if folder and out.is_dir() else out.parent
    while not where.exists() and where != where.parent:  # missing folders are created on writing: test the nearest that exists
        where = where.parent
    if not where.is_dir():
        raise SlimlensError(f"cannot write {out}: {where} is not a folder; name an --out inside a folder")
    # A real file is the only reliable test (root ignores permission bits, read-only mounts, /proc); it is removed at once.
    try:
        fd, probe = tempfile.mkstemp(dir=where, prefix=".slimlens-probe-")
    except OSError as exc:
        raise SlimlensError(f"cannot write {out}: {exc.strerror or exc} in {where}; name an --out in a folder you can write to") from None
    os.close(fd)
    os.unlink(probe)
    return out


def check_replaceable(out: str | Path, marker: str) -> None:
    """Raise a one-line SlimlensError unless ``--force`` may replace ``out``: missing, empty, or an earlier output holding ``marker``."""
    out = Path(out).absolute()
    if not out.is_dir():
        return
    if any(out.iterdir()) and not written_by_slimlens(out / marker):
        # --force replaces a folder wholesale: only one slimlens wrote, never a user's folder that happens to be named
        raise SlimlensError(f"--out {out} holds files but no {marker} of an earlier slimlens run, so --force will not replace it; "
                            "name a new folder")


def written_by_slimlens(marker: Path) -> bool:
    """Whether ``marker`` is a results.json or explain.json that slimlens wrote (its own key), not any file of that name."""
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and (str(data.get("schema", "")).startswith("slimlens.results/") or "slimlens_explain" in data)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` (a full or vanished disk, after check_out) into one line."""
    try:
        yield
    except OSError as exc:
        raise SlimlensError(f"cannot write {path}: {exc.strerror or exc}; make room or name another --out") from None


def write_card(model_card: ModelCard, root: str | Path | None = None) -> Path:
    """Write ``model_card`` as JSON (atomically) and return its path."""
    path = card_path(model_card.name, root)
    write_atomic(path, (json.dumps(model_card.to_dict(), indent=2) + "\n").encode())
    return path
