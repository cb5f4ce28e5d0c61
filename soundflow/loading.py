"""`load_model(name)`: a model from whatever names one — the front door of the Python API.

A name is, in this order: a backend with a checkpoint shipped inside the package
(`soundflow/assets/mini`: the trained, calibrated default); a checkpoint folder written by
`train.py` (docs/formats.md#checkpoint), or a training run's folder holding one in `model/`;
else a backend name (`mini`, `tiny`, `tiny-qwen`, `qwen2.5-omni`), built with an untrained
adapter. `model.build_model(name)` always gives the untrained backend.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_checkpoint
from .model import BUILDERS, AudioLM, build_model

# Trained checkpoints shipped inside the package: `load_model(name)` uses them by default.
PACKAGED = {"mini": Path(__file__).resolve().parent / "assets" / "mini"}


def packaged_checkpoint(name: str) -> Path | None:
    """The folder of the checkpoint shipped for backend `name`, or None when there is none."""
    d = PACKAGED.get(name)
    return d if d is not None and (d / "model.json").exists() else None


def resolve_model(name: str) -> Path | str:
    """The checkpoint folder `name` stands for, or `name` itself when it is a backend to build.

    Raises FileNotFoundError for a path that exists but holds no checkpoint, and for a path-like
    name (one with a `/`) that is not a backend."""
    shipped = packaged_checkpoint(name)
    if shipped is not None:
        return shipped
    p = Path(name)
    if p.is_dir() and not (p / "model.json").exists() and (p / "model" / "model.json").exists():
        p = p / "model"  # a training run's folder: its final model
    if p.is_dir() and (p / "model.json").exists():
        return p
    if p.exists() or "/" in name and name not in BUILDERS:
        raise FileNotFoundError(f"{name}: not a soundflow checkpoint folder (no model.json)")
    return name


def load_model(name: str = "mini") -> AudioLM:
    """A checkpoint folder written by `train.py`; a backend name: its shipped trained checkpoint
    when the package has one (`mini`), else the backend with an untrained adapter
    (`build_model(name)` always gives the untrained one)."""
    where = resolve_model(name)
    return load_checkpoint(where) if isinstance(where, Path) else build_model(where)
