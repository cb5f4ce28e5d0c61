"""The sound trigger: the part of the <silent>/<response> decision that says "a sound that needs a
reply is here", from what the frozen encoder heard in the last few chunks.

Why it exists (BENCHMARKS.md, issue 10): on this project's CPU budget the LM's control-token
readout learns *when* a reply was placed but hardly *which sounds* need one (per-clip AUC 0.58-0.68
on held-out clips after thousands of steps), while a logistic regression on the very encoder
features the model hears reaches AUC 0.91 on the same clips. The trigger is that regression,
made streaming and causal:

- every chunk is summarised as the mean and the max of its encoder slots (`chunk_summary`);
- the evidence at chunk t pools the summaries of the last w chunks since the last reply, for each
  w in `windows` (mean of the means, max of the maxes: the whole-clip probe's pooling over what
  has been heard, at a few time scales), concatenated; a reply empties it, since the sound that
  caused it has been answered;
- P_trigger = sigmoid(w · standardise(evidence) + b).

The decision the engine thresholds is then P = 1 − (1 − P_LM)(1 − P_trigger): either the LM's
own control readout (a word ended, a question was asked — Alg. 2's decisions) or the trigger
(a sound to warn about) can call for `<response>`; the LM writes the reply either way. A model
without a trigger decides with P_LM alone, as the paper does. `fit_trigger` fits it in seconds
on built streams (labels: every counted chunk of a RESPOND clip, docs/formats.md) and on
bench-style streams of train-split catalog clips; `soundflow trigger fit` writes it into a
checkpoint folder (docs/formats.md#checkpoint).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

# Chunks pooled: 0.4, 2.4 and 4.8 s. One window of 6 chunks had the best held-out AUC of 1-10
# (0.85); adding 1 and 12 kept it and cut false alarms on ambient chunks 3x (BENCHMARKS.md).
TRIGGER_WINDOWS = (1, 6, 12)
TRIGGER_C = 0.01  # inverse L2 strength of the logistic regression (0.01 beat 0.001-1.0 held out)


def chunk_summary(enc: torch.Tensor) -> torch.Tensor:
    """(N, slots, d) encoder output → (N, 2d): each chunk's slot mean, then its slot max."""
    return torch.cat([enc.mean(1), enc.amax(1)], -1).float()


def pool(summaries: torch.Tensor) -> torch.Tensor:
    """(k, 2d) chunk summaries → (2d,) evidence: the means' mean, the maxes' max."""
    d = summaries.shape[-1] // 2
    return torch.cat([summaries[:, :d].mean(0), summaries[:, d:].amax(0)])


def evidence(recent: torch.Tensor, windows: Sequence[int]) -> torch.Tensor:
    """(k, 2d) summaries heard since the last reply, oldest first → (len(windows) · 2d,): the
    pool of the last w of them for each w."""
    return torch.cat([pool(recent[-w:]) for w in windows])


def pooled_stream(summaries: torch.Tensor, resets: Iterable[int] = (),
                  windows: Sequence[int] = TRIGGER_WINDOWS) -> torch.Tensor:
    """(T, 2d) → (T, len(windows) · 2d) evidence at every chunk, as `TriggerState` builds it live:
    `resets` are the chunks a reply was given at (their successors start afresh)."""
    resets, start, out, longest = set(resets), 0, [], max(windows)
    for t in range(summaries.shape[0]):
        out.append(evidence(summaries[max(start, t - longest + 1): t + 1], windows))
        if t in resets:
            start = t + 1
    return torch.stack(out) if out else summaries.new_zeros(0, len(windows) * summaries.shape[-1])


class Trigger(nn.Module):
    """w · (evidence − mean) / scale + b. Parameters, so a checkpoint stores them with the rest."""

    def __init__(self, d_summary: int, windows: Sequence[int] = TRIGGER_WINDOWS):
        super().__init__()
        self.windows = tuple(int(w) for w in windows)
        if not self.windows or min(self.windows) < 1:
            raise ValueError(f"trigger windows must be chunk counts >= 1, got {windows!r}")
        self.d_summary = d_summary
        n = len(self.windows) * d_summary
        self.mean = nn.Parameter(torch.zeros(n), requires_grad=False)
        self.scale = nn.Parameter(torch.ones(n), requires_grad=False)
        self.weight = nn.Parameter(torch.zeros(n), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(()), requires_grad=False)

    def config(self) -> dict:
        return {"windows": list(self.windows), "d_summary": self.d_summary}

    def logit(self, evidence: torch.Tensor) -> torch.Tensor:
        return ((evidence.float() - self.mean) / self.scale) @ self.weight + self.bias

    def prob(self, evidence: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(evidence))


def combine(p_lm: torch.Tensor | float, p_trigger: torch.Tensor | float):
    """Either path can call for a reply: 1 − (1 − P_LM)(1 − P_trigger)."""
    return 1 - (1 - p_lm) * (1 - p_trigger)


@dataclass
class TriggerState:
    """One stream's evidence: the summaries heard since the last reply (at most the longest window)."""

    windows: tuple[int, ...] = TRIGGER_WINDOWS
    heard: deque = field(default_factory=deque)

    def push(self, summaries: torch.Tensor) -> None:
        for s in summaries:
            self.heard.append(s)
            while len(self.heard) > max(self.windows):
                self.heard.popleft()

    def evidence(self) -> torch.Tensor | None:
        return evidence(torch.stack(list(self.heard)), self.windows) if self.heard else None

    def reset(self) -> None:
        self.heard.clear()

    def copy(self) -> "TriggerState":
        return TriggerState(self.windows, deque(self.heard))


# ---------------------------------------------------------------- fitting


@dataclass
class TriggerExample:
    """One stream for fitting: chunk summaries (T, 2d), 0/1 labels (T,), the reply chunks."""

    summaries: torch.Tensor
    labels: np.ndarray
    resets: list[int]


def respond_labels(n_chunks: int, clips: Sequence[tuple[int, int, bool]], chunk_samples: int,
                   window_chunks: int) -> np.ndarray:
    """1 at every chunk a reply to a RESPOND clip counts at (the bench's counted range: the clip's
    chunks and `window_chunks` after), 0 elsewhere. `clips`: (start sample, end sample, respond)."""
    from .bench.proactive import counted_chunk_range

    y = np.zeros(n_chunks, dtype=np.int64)
    for a, b, respond in clips:
        if respond:
            lo, hi = counted_chunk_range(a, b, chunk_samples, window_chunks)
            y[lo: hi + 1] = 1
    return y


def examples_from_streams(model, samples, max_chunks: int = 60, window_chunks: int = 2) -> list[TriggerExample]:
    """Built training streams (`StreamSample`s): foreground sound-event clips labelled by their
    gold decision; resets at the stream's gold replies (what the LM is taught to answer)."""
    from .audio import SAMPLE_RATE
    from .train import FeatureCache

    feats, out = FeatureCache(model, 1), []
    for s in samples:
        enc = feats(s, max_chunks)
        c = s.chunk_ms * SAMPLE_RATE // 1000
        clips = [(int(e["offset_s"] * SAMPLE_RATE), int((e["offset_s"] + e["length_s"]) * SAMPLE_RATE),
                  e["provenance"].get("decision") == "RESPOND")
                 for e in s.events if e.get("provenance", {}).get("type") == "clip" and e.get("role") == "foreground"]
        y = respond_labels(enc.shape[0], clips, c, window_chunks)
        out.append(TriggerExample(chunk_summary(enc), y, [t["chunk"] for t in s.timeline if t["chunk"] < enc.shape[0]]))
    return out


def examples_from_bench_streams(model, streams, chunk_ms: int = 400, window_chunks: int = 2) -> list[TriggerExample]:
    """Bench-style streams (`bench.proactive.Stream`: ambient lead-in, whole clips, a tail) of
    train-split clips; resets where a RESPOND clip's last chunk would be answered."""
    from .audio import SAMPLE_RATE
    from .data import split_chunks

    c, out = chunk_ms * SAMPLE_RATE // 1000, []
    for s in streams:
        with torch.inference_mode():
            enc = model.encode_audio(model.features(torch.from_numpy(split_chunks(s.wave, chunk_ms))))
        clips = [(e.start_sample, e.end_sample, e.item.decision == "RESPOND") for e in s.events]
        y = respond_labels(enc.shape[0], clips, c, window_chunks)
        resets = [-(-b // c) - 1 for a, b, r in clips if r]
        out.append(TriggerExample(chunk_summary(enc), y, resets))
    return out


def fit_trigger(examples: Sequence[TriggerExample], windows: Sequence[int] = TRIGGER_WINDOWS, C: float = TRIGGER_C,
                seed: int = 0) -> tuple[Trigger, dict]:
    """Class-balanced L2 logistic regression on standardised evidence at every chunk."""
    from sklearn.linear_model import LogisticRegression

    if not examples:
        raise ValueError("no streams to fit the trigger on")
    X = torch.cat([pooled_stream(e.summaries, e.resets, windows) for e in examples]).numpy().astype(np.float64)
    y = np.concatenate([e.labels for e in examples])
    if y.min() == y.max():
        raise ValueError("the trigger needs chunks of both kinds (RESPOND clips and the rest)")
    mean, scale = X.mean(0), X.std(0)
    scale[scale < 1e-6] = 1.0
    clf = LogisticRegression(C=C, max_iter=3000, class_weight="balanced", random_state=seed)
    clf.fit((X - mean) / scale, y)
    trig = Trigger(examples[0].summaries.shape[1], windows)
    with torch.no_grad():
        trig.mean.copy_(torch.from_numpy(mean))
        trig.scale.copy_(torch.from_numpy(scale))
        trig.weight.copy_(torch.from_numpy(clf.coef_[0]))
        trig.bias.fill_(float(clf.intercept_[0]))
    return trig, {"chunks": int(len(y)), "respond_chunks": int(y.sum()), "streams": len(examples),
                  "windows": list(trig.windows), "C": C}


def fit_into_checkpoint(checkpoint, out, data: Sequence[str] = (), bench_manifest: str | None = None,
                        noise_manifest: str | None = None, windows: Sequence[int] | None = None, C: float | None = None,
                        max_chunks: int = 60, seed: int = 0, progress: bool = True) -> dict:
    """Fit a trigger for `checkpoint` and write the checkpoint with it to `out` (atomically; the
    trained tensors are copied, not re-saved). Streams: built `data` specs and, from a bench
    manifest of train-split clips, bench-style streams — single clips over pink noise, over
    `noise_manifest` ambience when given, and same-macro sequences. Calibration is dropped: the
    decision changed, so run `soundflow calibrate` on the result."""
    import json
    import shutil
    import sys
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    from .checkpoint import atomic_dir, commit_dir, resolve_dir
    from .loading import load_model

    windows = TRIGGER_WINDOWS if not windows else tuple(windows)
    C = TRIGGER_C if C is None else C
    src = resolve_dir(Path(checkpoint))
    if src is None:
        raise FileNotFoundError(f"no soundflow checkpoint (model.json) in {checkpoint}")
    model = load_model(str(src))
    examples: list[TriggerExample] = []
    if data:
        from .dataspec import load_streams

        examples += examples_from_streams(model, load_streams(list(data)), max_chunks)
        if progress:
            print(f"[trigger] {len(examples)} built streams", file=sys.stderr)
    if bench_manifest:
        from .bench.proactive import ClipLoader, StreamConfig, build_multi_streams, build_single_streams, load_manifest

        items, loader = load_manifest(bench_manifest), ClipLoader()
        streams = build_single_streams(items, StreamConfig(), seed, loader) + build_multi_streams(items, StreamConfig(), seed, loader)
        if noise_manifest:
            streams += build_single_streams(items, StreamConfig(noise_manifest=noise_manifest), seed + 1, loader)
        examples += examples_from_bench_streams(model, streams)
        if progress:
            print(f"[trigger] + {len(streams)} bench-style streams of {bench_manifest}", file=sys.stderr)
    trig, stats = fit_trigger(examples, windows, C, seed)
    stats.update(data=list(data), bench_manifest=bench_manifest, noise_manifest=noise_manifest)
    tmp = atomic_dir(Path(out))
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "model.json"):
            shutil.copy2(f, tmp / f.name)
    state = {k: v for k, v in load_file(str(src / "model.safetensors")).items() if not k.startswith("trigger.")}
    state.update({f"trigger.{n}": p.detach().cpu().contiguous() for n, p in trig.named_parameters()})
    save_file(state, str(tmp / "model.safetensors"))
    meta = json.loads((src / "model.json").read_text())
    meta.pop("calibration", None)
    meta["trained"] = sorted(set(meta.get("trained", [])) | {k for k in state if k.startswith("trigger.")})
    meta["trigger"] = {**trig.config(), "fit": stats}
    (tmp / "model.json").write_text(json.dumps(meta, indent=1))
    commit_dir(tmp, Path(out))
    return stats
