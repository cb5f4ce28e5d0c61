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


# Instruction-set extensions that change CPU inference speed several-fold (int8 VNNI, bf16 GEMM,
# AMX tiles); the same 2-core slot may land on hosts with or without them between sessions.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_description() -> dict:
    """What this CPU is, for benchmark records: model name, torch's dispatch level and which of
    `ISA_FLAGS` it has (from /proc/cpuinfo where there is one)."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = val.strip()
                elif key == "flags":
                    flags = set(val.split())
                    break
    except OSError:
        pass
    return {"model": name or "unknown", "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "isa": [f for f in ISA_FLAGS if f in flags]}
