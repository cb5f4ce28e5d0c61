"""Inference speed-ups for CPU serving (measured in `soundflow bench latency`).

The decode path of a 135 M LM on 11 new tokens is bound by reading the weights and by per-op
overhead, not by FLOPs. `optimize_for_inference` applies what measured faster here:

- `quant="int8"`: dynamic int8 quantisation of the decoder body's nn.Linear layers
  (`torch.ao.quantization.quantize_dynamic`, per-tensor weights, activations quantised on the
  fly): 4x fewer weight bytes to read; fbgemm int8 GEMM with VNNI. The LM head, embeddings,
  the encoder and the adapter stay fp32 (the head is only read for 2 rows per decision).
- `quant="bf16"`: the body in bfloat16 (2x fewer bytes; on CPUs without native bf16 GEMM it
  is slower than fp32 — measure).
- eval mode, no grad anywhere (the engine already runs under `torch.inference_mode`).

It modifies `model` in place (and returns it). Training code must not use an optimised model.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def optimize_for_inference(model, quant: str | None = "int8", encoder: bool = False):
    """In place: eval, requires_grad off, optional int8/bf16 decoder body (see module doc)."""
    model.eval()
    model.requires_grad_(False)
    if quant in (None, "none", "fp32"):
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
    else:
        raise ValueError(f"quant must be None, 'int8' or 'bf16', not {quant!r}")
    model.optimized = quant or "fp32"
    return model
