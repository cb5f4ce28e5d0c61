"""Device choice for inference: a device name from the command line or an API call → a usable
`torch.device`, or an error that says why not."""

from __future__ import annotations

import torch


def resolve_device(name: str | None) -> torch.device:
    """"cpu", "cuda", "cuda:1", "mps" or "auto" (CUDA when there is one) → a usable device,
    or a ValueError saying why not."""
    name = (name or "cpu").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: no CUDA device is available here (torch {torch.__version__})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available here")
    return dev
