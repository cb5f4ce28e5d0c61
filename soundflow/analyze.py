"""Where the offline-to-streaming gap is bridged: the paper's two analyses (§Additional Analysis).

Both run on a model (a checkpoint folder or a backend name) over stream samples (any data spec),
teacher-forced: each stream becomes its Alg. 2 training sequence, built by training's own
`train.collate` (text instruction, a spoken instruction's audio slots if the sample has one, then
per chunk 10 audio slots and the gold control token, with the gold reply after `<response>`) and goes
through the decoder in one causal forward — the same keys and values a KV-cache decoder sees
chunk by chunk, so "cross-chunk KV-cache access" is exactly what the attention does here.

**Obs. 1, continuity ratio.** "the cosine similarity of boundary pairs relative to intra-chunk
pairs (1.0 denoting seamless continuity)". For a stage's audio-slot vectors x[t, s] (chunk t
of the stream — a spoken instruction's chunks are context, not pairs —, slot s = 0..9, in time
order):

    intra    = mean cos(x[t, s], x[t, s+1])        over all chunks t and s = 0..8
    boundary = mean cos(x[t, 9], x[t+1, 0])         over all chunk boundaries
    ratio    = boundary / intra

pooled over all pairs of all streams, at the encoder output, the adapter (projector) output
and the output of every decoder layer. The paper: 0.25 at the encoder, the projector moves it
by < 0.02, decoder layer 0 lifts it to 0.80. Hidden states of an LM share a large common
direction that pushes every cosine towards 1, so a variant with the stream's mean vector
subtracted first (`centered`) is reported beside the paper's definition.

**Obs. 2, decision heads.** At each chunk's decision position (the last audio slot, whose
hidden state predicts `<silent>` / `<response>`):

- attention share: where each head's attention mass goes — the chunk just heard
  (`attn_current_chunk`), earlier audio (a spoken instruction's too), text (instruction,
  control and reply tokens) — and the head's share of its layer's attention output there
  (`output_share`: the norm of its slice of o_proj's output over the sum of all heads' norms);
- single-head ablation ("we zero each attention head in turn and measure the degradation in
  streaming-control-token generation"): the head's output is zeroed before o_proj at every
  position, and the decision is read again. Reported: the mean absolute change of the decision
  log-odds log P(<response>)/P(<silent>) (`delta_logodds`, the effect size used to rank heads),
  the fraction of decisions that flip (`flip_rate`) and the drop in token match — the fraction
  of chunks whose control token equals the gold one (`token_match_drop`; the paper's L35H14
  ablation drops S2TT token match by 0.88).

The head analysis runs the decoder layers itself (to read attention weights and zero heads) and
so supports the Llama / Qwen2-style bodies of `mini` and `tiny` (`AudioLM.supports_ragged`); its
forward is checked against the model's own on every run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import StreamSample
from .dataspec import load_streams
from .tokens import MASK

PAPER = {
    "continuity": {"encoder": 0.25, "adapter_shift_below": 0.02, "layer_0": 0.80, "layer_0_real_recordings": 0.78},
    "heads": {"model": "Audio-Interaction (Qwen2.5-Omni-3B thinker, 36 layers x 16 heads = 576)",
              "dominant_head": "L35H14", "token_match_drop_s2tt": 0.88, "token_match_drop_real": 0.86},
}
FORWARD_CHECK_ATOL = 1e-3  # the hand-run decoder must match the model's forward to this (fp32)


# --------------------------------------------------------------------------- shared: teacher-forced streams


@dataclass
class StreamInputs:
    """One stream laid out as its Alg. 2 sequence, with the positions the analyses read."""

    id: str
    task: str
    enc: torch.Tensor  # (N, S, d_enc) frozen encoder output per chunk of the stream
    adapted: torch.Tensor  # (N, S, d) adapter (projector) output of the stream
    embeds: torch.Tensor  # (T, d) decoder input: token embeddings with the audio slots filled
    audio_pos: torch.Tensor  # (N, S) sequence positions of the stream's audio slots
    decision_pos: torch.Tensor  # (N,) the position whose hidden state predicts chunk t's control token
    gold: torch.Tensor  # (N,) 1 where the gold control token is <response>
    text_mask: torch.Tensor  # (T,) positions that are not audio slots
    audio_mask: torch.Tensor  # (T,) every audio slot: a spoken instruction's (before the stream), then the stream's
    instruction_chunks: int = 0  # chunks of spoken instruction (A^ins) heard before the stream


@torch.no_grad()
def prepare(model, sample: StreamSample, max_chunks: int) -> StreamInputs:
    """The sample's teacher-forced sequence, built by training's own `collate` (a batch of one):
    text instruction, spoken instruction (if any), then the stream — the inputs the model was
    trained on and is served with."""
    from .train import FeatureCache, collate

    tok = model.tokenizer
    b = collate(model, [sample], FeatureCache(model, 2), max_chunks)
    ids, am, ys = b["input_ids"][0], b["audio_mask"][0], b["y_stream"][0]
    ctrl = (ys != MASK).nonzero().flatten()
    n = len(ctrl)  # one control token per chunk of the stream
    enc_all = b["enc"].to(model.device)
    adapted_all = model.adapt(enc_all).float()
    m, s = enc_all.shape[0] - n, enc_all.shape[1]
    embeds = model.embed(ids[None].to(model.device), am[None].to(model.device), adapted_all)[0].float()
    audio_pos = am.nonzero().flatten()[m * s :].view(n, s)
    if not torch.equal(ctrl - 1, audio_pos[:, -1]):
        raise AssertionError("Alg. 2 layout: a control token must follow each chunk's last audio slot")
    return StreamInputs(id=sample.id, task=sample.task, enc=enc_all[m:].float().cpu(), adapted=adapted_all[m:].cpu(),
                        embeds=embeds, audio_pos=audio_pos, decision_pos=ctrl - 1,
                        gold=(ys[ctrl] == tok.response_id).long(), text_mask=~am, audio_mask=am.clone(),
                        instruction_chunks=m)


def _samples(data: str | Sequence[StreamSample], limit: int | None) -> list[StreamSample]:
    samples = load_streams(data) if isinstance(data, str) else list(data)
    if limit is not None and limit < len(samples):  # evenly spaced: a manifest sorted by task keeps its tasks
        samples = [samples[int(i * len(samples) / limit)] for i in range(limit)]
    return samples


def _load(model):
    if isinstance(model, (str, Path)):
        from .loading import load_model

        model = load_model(str(model))
    return model.eval()


def _model_info(model) -> dict:
    cfg = model.body.config
    return {"backend": model.cfg.backend, "checkpoint": model.info.source,
            "trained": model.info.trained, "layers": len(model.body.layers),
            "heads": int(cfg.num_attention_heads)}


# --------------------------------------------------------------------------- Obs. 1: continuity


def _pair_cosines(x: torch.Tensor, center: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, S, d) → (boundary cosines (N-1,), intra-chunk cosines (N, S-1))."""
    x = x.float()
    if center:
        x = x - x.reshape(-1, x.shape[-1]).mean(0)
    x = F.normalize(x, dim=-1)
    intra = (x[:, :-1] * x[:, 1:]).sum(-1)
    boundary = (x[:-1, -1] * x[1:, 0]).sum(-1)
    return boundary, intra


def continuity_ratio(x: torch.Tensor, center: bool = False) -> float:
    """Obs. 1 for one stage of one stream: mean boundary cosine / mean intra-chunk cosine."""
    b, i = _pair_cosines(x, center)
    return float(b.mean() / i.mean())


class _Sums:
    """Pooled sums of cosines per stage (ratio of means over all pairs of all streams)."""

    def __init__(self):
        self.v: dict[str, list[float]] = {}

    def add(self, stage: str, b: torch.Tensor, i: torch.Tensor) -> None:
        acc = self.v.setdefault(stage, [0.0, 0, 0.0, 0])
        acc[0] += float(b.sum()); acc[1] += b.numel(); acc[2] += float(i.sum()); acc[3] += i.numel()  # noqa: E702

    def ratios(self) -> dict[str, float]:
        return {k: (a[0] / a[1]) / (a[2] / a[3]) for k, a in self.v.items() if a[1] and a[3]}


@torch.no_grad()
def layer_outputs(model, embeds: torch.Tensor) -> list[torch.Tensor]:
    """Every decoder layer's output hidden states (T, d) for one sequence, via forward hooks
    (any body with `.layers`)."""
    outs: list[torch.Tensor] = []

    def hook(_m, _inp, out):
        outs.append((out[0] if isinstance(out, tuple) else out)[0].float())

    handles = [layer.register_forward_hook(hook) for layer in model.body.layers]
    try:
        model.hidden(embeds[None].to(next(model.body.parameters()).dtype))
    finally:
        for h in handles:
            h.remove()
    return outs


def analyze_continuity(model, data, *, max_chunks: int = 30, limit: int | None = None,
                       progress: bool = True) -> dict:
    """Obs. 1 over the streams of `data`: continuity ratio per stage (encoder, adapter, every
    decoder layer), pooled, per task and per stream, plain (the paper's) and centered."""
    model = _load(model)
    samples = [s for s in _samples(data, limit)]
    stages = ["encoder", "adapter"] + [f"layer_{i}" for i in range(len(model.body.layers))]
    pooled = {False: _Sums(), True: _Sums()}
    tasks: dict[str, dict[bool, _Sums]] = {}
    streams = []
    t0 = time.perf_counter()
    for k, s in enumerate(samples):
        x = prepare(model, s, max_chunks)
        if x.enc.shape[0] < 2:
            print(f"[analyze] skipping {s.id}: fewer than 2 chunks", file=sys.stderr)
            continue
        hidden = layer_outputs(model, x.embeds)
        per_stage = {"encoder": x.enc, "adapter": x.adapted}
        for i, h in enumerate(hidden):
            per_stage[f"layer_{i}"] = h.cpu()[x.audio_pos]
        row = {"id": s.id, "task": s.task, "chunks": int(x.enc.shape[0]), "ratio": {}, "centered": {}}
        for st in stages:
            for center in (False, True):
                b, i = _pair_cosines(per_stage[st], center)
                pooled[center].add(st, b, i)
                tasks.setdefault(s.task, {False: _Sums(), True: _Sums()})[center].add(st, b, i)
                row["centered" if center else "ratio"][st] = round(float(b.mean() / i.mean()), 4)
        streams.append(row)
        if progress:
            print(f"[analyze] continuity {k + 1}/{len(samples)} {s.id}: encoder {row['ratio']['encoder']:.3f} "
                  f"layer_0 {row['ratio'].get('layer_0', float('nan')):.3f}", file=sys.stderr)
    if not streams:
        raise ValueError("no stream with at least 2 chunks to analyse")
    r, c = pooled[False].ratios(), pooled[True].ratios()
    return {
        "analysis": "continuity", "definition": "mean cos(boundary pairs) / mean cos(intra-chunk pairs) of audio-slot "
        "vectors, pooled over all pairs; centered: the stream's mean vector subtracted first",
        "model": _model_info(model), "data": data if isinstance(data, str) else None, "max_chunks": max_chunks,
        "n_streams": len(streams), "stages": stages,
        "ratio": {k: round(v, 4) for k, v in r.items()}, "centered": {k: round(v, 4) for k, v in c.items()},
        "encoder_to_layer0": round(r["layer_0"] - r["encoder"], 4),
        "adapter_shift": round(r["adapter"] - r["encoder"], 4),
        "per_task": {t: {"ratio": {k: round(v, 4) for k, v in d[False].ratios().items()},
                         "centered": {k: round(v, 4) for k, v in d[True].ratios().items()}} for t, d in tasks.items()},
        "streams": streams, "paper": PAPER["continuity"], "wall_s": round(time.perf_counter() - t0, 1),
    }


def plot_continuity(result: dict, path: str | Path) -> None:
    plt = _plt()
    stages = result["stages"]
    xs = np.arange(len(stages))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(stages) + 2), 3.8))
    ax.plot(xs, [result["ratio"][s] for s in stages], "o-", color="k", lw=2, label="all streams (paper's definition)")
    ax.plot(xs, [result["centered"][s] for s in stages], "s--", color="0.5", lw=1, label="centered")
    if len(result["per_task"]) > 1:
        for t, d in result["per_task"].items():
            ax.plot(xs, [d["ratio"][s] for s in stages], lw=1, alpha=0.7, label=t)
    ax.plot([0, 2], [PAPER["continuity"]["encoder"], PAPER["continuity"]["layer_0"]], "r*", ms=12, label="paper")
    ax.axhline(1.0, color="0.8", lw=0.8)
    labels = [s.replace("layer_", "L") for s in stages]
    ax.set_xticks(xs, labels, rotation=90 if len(stages) > 12 else 0, fontsize=7)
    ax.set_ylabel("continuity ratio (boundary / intra)")
    m = result["model"]
    ax.set_title(f"Obs. 1 continuity — {m['backend']}{'' if m['trained'] else ' (untrained)'}, "
                 f"{result['n_streams']} streams", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- Obs. 2: decision heads


def _check_supported(model) -> None:
    if not model.supports_ragged:
        raise ValueError(f"the head analysis runs Llama/Qwen2-style decoder layers; {type(model.body).__name__} "
                         "is not one (the continuity analysis works on any body)")


@dataclass
class _Capture:
    """What the base (unablated) run keeps: each layer's input and per-head figures at the
    decision positions."""

    layer_inputs: list[torch.Tensor] = field(default_factory=list)
    attn: list[torch.Tensor] = field(default_factory=list)  # per layer (H, Q, T) attention at decision queries
    out_norm: list[torch.Tensor] = field(default_factory=list)  # per layer (H, Q) norm of each head's o_proj slice


def run_layers(model, x: torch.Tensor, start: int = 0, head_mask: torch.Tensor | None = None,
               queries: torch.Tensor | None = None, capture: _Capture | None = None) -> torch.Tensor:
    """Decoder layers `start`.. on (B, T, d) inputs, causal, positions 0..T-1, by hand.

    head_mask (B, H): multiplies each head's attention output (before o_proj) in layer `start`
    (single-head ablation: a row with one zero). capture: records the base run at `queries`."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    body = model.body
    B, T, _ = x.shape
    pos = torch.arange(T, device=x.device)[None]
    cos, sin = body.rotary_emb(x, pos)
    causal = torch.full((T, T), float("-inf"), device=x.device).triu(1)
    for i in range(start, len(body.layers)):
        layer = body.layers[i]
        att = layer.self_attn
        if capture is not None:
            capture.layer_inputs.append(x[0].clone())
        h = layer.input_layernorm(x)
        q = att.q_proj(h).view(B, T, -1, att.head_dim).transpose(1, 2)
        k = att.k_proj(h).view(B, T, -1, att.head_dim).transpose(1, 2)
        v = att.v_proj(h).view(B, T, -1, att.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        probs = ((q @ k.transpose(-1, -2)) * att.scaling + causal).softmax(-1)
        o = probs @ v  # (B, H, T, hd)
        if head_mask is not None and i == start:
            o = o * head_mask[:, :, None, None]
        if capture is not None:
            capture.attn.append(probs[0][:, queries].clone())
            w = att.o_proj.weight.view(att.o_proj.weight.shape[0], -1, att.head_dim)  # (d, H, hd)
            capture.out_norm.append(torch.einsum("hqe,dhe->hqd", o[0][:, queries], w).norm(dim=-1))
        x = x + att.o_proj(o.transpose(1, 2).reshape(B, T, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return body.norm(x)


def _control_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """(..., 2) logits of <silent>, <response>: the model's own `control_logits` when it has one
    (the decision exactly as the engine computes it), else the LM head's two rows."""
    fn = getattr(model, "control_logits", None)
    if fn is not None:
        return fn(hidden).float()
    tok = model.tokenizer
    w = model.head.weight[[tok.silent_id, tok.response_id]].float()
    two = hidden.float() @ w.T
    if model.head.bias is not None:
        two = two + model.head.bias[[tok.silent_id, tok.response_id]].float()
    return two


def _logodds(model, hidden: torch.Tensor) -> torch.Tensor:
    """log P(<response>) / P(<silent>) from final hidden states (..., d)."""
    two = _control_logits(model, hidden)
    return two[..., 1] - two[..., 0]


@torch.no_grad()
def analyze_heads(model, data, *, max_chunks: int = 20, limit: int | None = None, threshold: float | None = None,
                  progress: bool = True) -> dict:
    """Obs. 2 over the streams of `data`: per-head attention share at the decision position and
    the effect of zeroing each head alone on the control-token decision."""
    from .calibrate import default_threshold

    model = _load(model)
    _check_supported(model)
    model = model.float()
    threshold = default_threshold(model) if threshold is None else float(threshold)
    cut = math.log(threshold / (1 - threshold))  # respond iff log-odds ≥ this (P ≥ threshold)
    L, H = len(model.body.layers), int(model.body.config.num_attention_heads)
    # Fresh control tokens start from one shared row (model._add_special_tokens): with a tied or
    # untouched head their logits are equal, the log-odds is 0 for every input and no ablation can
    # move it. Say so instead of spending L x H forwards per stream on zeros.
    ablate = not _control_rows_equal(model)
    keys = ["attn_current_chunk", "attn_past_audio", "attn_text", "output_share"]
    keys += ["delta_logodds", "flips", "match_ablated"] if ablate else []
    sums = {k: torch.zeros(L, H, dtype=torch.float64) for k in keys}
    n_dec = 0
    base_match = 0
    base_respond = 0
    base_abs = 0.0  # Σ |log-odds|: how far decisions sit from the 50/50 point, to read Δ against
    gold_respond = 0
    max_err = 0.0
    t0 = time.perf_counter()
    samples = _samples(data, limit)
    for k, s in enumerate(samples):
        x = prepare(model, s, max_chunks)
        T = x.embeds.shape[0]
        qpos = x.decision_pos.to(x.embeds.device)
        cap = _Capture()
        hid = run_layers(model, x.embeds[None], queries=qpos, capture=cap)
        err = float((hid[0] - model.hidden(x.embeds[None])[0]).abs().max())
        max_err = max(max_err, err)
        if err > FORWARD_CHECK_ATOL * max(1.0, float(hid.abs().max())):
            raise RuntimeError(f"hand-run decoder differs from the model's forward by {err:.2e}: unsupported body")
        base = _logodds(model, hid[0, qpos])  # (Q,)
        base_dec = (base >= cut).long().cpu()
        gold = x.gold
        base_match += int((base_dec == gold).sum())
        base_respond += int(base_dec.sum())
        base_abs += float(base.abs().sum())
        gold_respond += int(gold.sum())
        n_dec += len(gold)
        # where each head looks from the decision position
        audio = x.audio_mask  # a spoken instruction's slots are earlier audio too
        cur = torch.zeros(len(qpos), T, dtype=torch.bool)
        for t in range(len(qpos)):
            cur[t, x.audio_pos[t]] = True
        past = audio[None] & ~cur
        for layer in range(L):
            a = cap.attn[layer].cpu().double()  # (H, Q, T)
            sums["attn_current_chunk"][layer] += (a * cur).sum(-1).sum(-1)
            sums["attn_past_audio"][layer] += (a * past).sum(-1).sum(-1)
            sums["attn_text"][layer] += (a * x.text_mask).sum(-1).sum(-1)
            nrm = cap.out_norm[layer].cpu().double()  # (H, Q)
            sums["output_share"][layer] += (nrm / nrm.sum(0, keepdim=True).clamp_min(1e-12)).sum(-1)
        # single-head ablation: one batch per layer, row h has head h zeroed
        mask = 1.0 - torch.eye(H, device=x.embeds.device, dtype=x.embeds.dtype)
        for layer in range(L if ablate else 0):
            xin = cap.layer_inputs[layer][None].expand(H, -1, -1)
            abl = _logodds(model, run_layers(model, xin, start=layer, head_mask=mask)[:, qpos])  # (H, Q)
            sums["delta_logodds"][layer] += (abl - base[None]).abs().sum(-1).double().cpu()
            dec = (abl >= cut).long().cpu()
            sums["flips"][layer] += (dec != base_dec[None]).sum(-1).double()
            sums["match_ablated"][layer] += (dec == gold[None]).sum(-1).double()
        if progress:
            print(f"[analyze] heads {k + 1}/{len(samples)} {s.id}: {len(gold)} decisions, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if not n_dec:
        raise ValueError("no decisions to analyse")
    per = {k: (v / n_dec) for k, v in sums.items()}
    base_tm = base_match / n_dec
    top, dominance, note = [], None, None
    if ablate:
        per["token_match_drop"] = base_tm - per.pop("match_ablated")
        per["flip_rate"] = per.pop("flips")
        flat = per["delta_logodds"].flatten()
        order = torch.argsort(flat, descending=True)
        for j in order[:10].tolist():
            layer, head = divmod(j, H)
            top.append({"head": f"L{layer}H{head}", "layer": layer, "index": head,
                        **{k: round(float(v[layer, head]), 4) for k, v in per.items()}})
        total = float(flat.sum()) or 1.0
        dominance = {"top1_over_top2": round(float(flat[order[0]] / max(float(flat[order[1]]), 1e-12)), 3)
                     if len(flat) > 1 else None,
                     "top1_share_of_total_effect": round(float(flat[order[0]]) / total, 4),
                     "median_head_effect": round(float(flat.median()), 5)}
    else:
        note = ("the <silent> and <response> output rows are identical (control tokens never trained): the decision "
                "log-odds is 0 for every input, so single-head ablation cannot change it and was not run")
    return {
        "analysis": "heads", "model": _model_info(model), "data": data if isinstance(data, str) else None,
        "max_chunks": max_chunks, "n_streams": len(samples), "n_decisions": n_dec, "threshold": threshold,
        "base": {"token_match": round(base_tm, 4), "respond_rate": round(base_respond / n_dec, 4),
                 "gold_respond_rate": round(gold_respond / n_dec, 4), "mean_abs_logodds": round(base_abs / n_dec, 4)},
        "ablation": ablate, "note": note, "top_heads": top, "dominance": dominance,
        "per_head": {k: [[round(float(x), 5) for x in row] for row in v] for k, v in per.items()},
        "forward_check_max_abs_err": max_err, "paper": PAPER["heads"], "wall_s": round(time.perf_counter() - t0, 1),
    }


def _control_rows_equal(model) -> bool:
    """Whether <silent> and <response> score alike for any hidden state (probed with random ones;
    equal rows still differ by matmul round-off, hence the relative tolerance)."""
    d = model.body.config.hidden_size
    probe = torch.randn(16, d, generator=torch.Generator().manual_seed(0)).to(next(model.body.parameters()).device)
    two = _control_logits(model, probe * 10)
    return bool((two[:, 1] - two[:, 0]).abs().max() <= 1e-5 * (two.abs().max() + 1e-12))


def plot_heads(result: dict, path: str | Path) -> None:
    plt = _plt()
    panels = [("delta_logodds", "ablation: mean |Δ log-odds| of the decision"),
              ("attn_current_chunk", "attention on the chunk just heard"),
              ("output_share", "share of the layer's attention output")]
    panels = [p for p in panels if p[0] in result["per_head"]]
    L = len(result["per_head"]["attn_current_chunk"])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), max(3.0, 0.16 * L + 1.5)))
    for ax, (key, title) in zip(axes, panels):
        mat = np.asarray(result["per_head"][key])
        im = ax.imshow(mat, aspect="auto", cmap="viridis", origin="lower")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    m = result["model"]
    title = (f"Obs. 2 decision heads — {m['backend']}{'' if m['trained'] else ' (untrained)'}, "
             f"{result['n_decisions']} decisions")
    if result["top_heads"]:
        best = result["top_heads"][0]
        axes[0].plot(best["index"], best["layer"], "r+", ms=12)
        title += f"; top {best['head']}"
    else:
        title += "; no ablation (control tokens untrained)"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- output


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_result(result: dict, out: str | Path) -> tuple[Path, Path]:
    """`<out>/<analysis>.json` and `<out>/<analysis>.png`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = result["analysis"]
    js, png = out / f"{name}.json", out / f"{name}.png"
    js.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    (plot_continuity if name == "continuity" else plot_heads)(result, png)
    return js, png


def headline(result: dict) -> dict:
    """The figures a CLI prints (no per-stream / per-head tables)."""
    if result["analysis"] == "continuity":
        keys = ("analysis", "model", "n_streams", "ratio", "centered", "encoder_to_layer0", "adapter_shift", "paper")
    else:
        keys = ("analysis", "model", "n_streams", "n_decisions", "base", "note", "top_heads", "dominance", "paper")
    out = {k: result[k] for k in keys}
    if result["analysis"] == "heads":
        out["top_heads"] = out["top_heads"][:3]
    return out
