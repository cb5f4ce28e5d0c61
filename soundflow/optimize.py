"""Inference optimisation for serving: precision, device, attention kernel (measured in
`soundflow bench latency`).

The decode path of a 135 M LM on 11 new tokens is bound by reading the weights and by per-op
overhead, not by FLOPs. `optimize_for_inference` applies what measured faster here:

- `quant="int8"`: dynamic int8 quantisation of the decoder body's nn.Linear layers
  (`torch.ao.quantization.quantize_dynamic`, per-tensor weights, activations quantised on the
  fly): 4x fewer weight bytes to read; fbgemm int8 GEMM with VNNI. The LM head, embeddings,
  the encoder and the adapter stay fp32 (the head is only read for 2 rows per decision).
  `encoder=True` also quantises the Whisper encoder: not by default, because it destroys a
  trained model's decisions (2026-12-01, 50 held-out bench clips, teacher-forced p_max AUC:
  fp32 0.81, int8 decoder 0.77, int8 decoder + encoder 0.56). The shipped `mini` of that day
  lost more to the int8 decoder alone (0.88 -> 0.69), so serving defaults to fp32 and int8 is
  an opt-in for speed. `quant="auto"` (the default everywhere) serves a checkpoint at the
  precision it was calibrated at (`calibrate --quant`), else fp32 (`resolve_quant`).
- `quant="bf16"`: the body in bfloat16 (2x fewer bytes; on CPUs without native bf16 GEMM it
  is slower than fp32 — measure).
- `attention.gqa_attention` for the LM body (always): grouped-query attention without copying
  K/V per query head, ~2x faster than SDPA's CPU kernel on a 11-query chunk step (measured).
- eval mode, no grad anywhere (the engine already runs under `torch.inference_mode`).

It modifies `model` in place (and returns it). Training code must not use an optimised model.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from .attention import use_gqa_attention
from .device import resolve_device

QUANTS = ("auto", "int8", "bf16", "none")  # what `--quant` accepts


def resolve_quant(model, quant: str | None) -> str | None:
    """The precision `quant` names for this model: "auto" is the one its checkpoint was
    calibrated at (`calibrate --quant`; its threshold holds there), else fp32; fp32 is None."""
    if quant == "auto":
        quant = (model.info.calibration or {}).get("quant")
    if quant not in (None, "none", "fp32", "int8", "bf16"):
        raise ValueError(f"quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    return None if quant in (None, "none", "fp32") else quant


def apply_precision(model, quant: str | None = "auto", device=None):
    """What `listen`, `serve`, `calibrate` and the benches do with a model they loaded: optimise it
    when a precision other than fp32 (`resolve_quant`; "auto": as calibrated) or a device is
    asked for, else leave it as loaded. Returns the model."""
    quant = resolve_quant(model, quant)
    if quant or device:
        optimize_for_inference(model, quant, device=device)
    return model


def optimize_for_inference(model, quant: str | None = "auto", encoder: bool = False, device=None):
    """In place: eval, requires_grad off, onto `device`, optional int8/bf16 decoder body (see
    module doc; "auto": `resolve_quant`). int8 dynamic quantisation is a CPU kernel: on a GPU it
    becomes bf16. The precision applied is recorded as `model.info.optimized`."""
    quant = resolve_quant(model, quant)
    model.eval()
    model.requires_grad_(False)
    if device is not None:
        dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
        model.to(dev)
        if dev.type != "cpu" and quant == "int8":
            quant = "bf16"
    use_gqa_attention(model)
    if quant is None or model.info.optimized == quant:  # fp32, or already at this precision
        pass
    elif quant == "int8":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic

            model.body = quantize_dynamic(model.body, {nn.Linear}, dtype=torch.qint8)
            if encoder:
                model.encoder = quantize_dynamic(model.encoder, {nn.Linear}, dtype=torch.qint8)
    elif quant == "bf16":
        model.body.to(torch.bfloat16)
    model.info = dataclasses.replace(model.info, optimized=quant or "fp32")
    return model
