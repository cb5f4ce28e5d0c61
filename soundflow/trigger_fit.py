"""Fitting the sound trigger (trigger.py) after training: `soundflow trigger fit`.

Streams of train recording groups only — built training streams and bench-style streams of
train-split catalog clips — give per-chunk examples: the trigger's evidence as a live stream
builds it (emptied at each reply), labelled 1 at every chunk a reply to a RESPOND clip counts at
(`bench proactive`'s counted range), 0 elsewhere (IGNORE sounds, speech, music, ambience). A
class-balanced L2 logistic regression on the standardised evidence is the trigger; it is written
into a copy of the checkpoint, whose other tensors are copied unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .trigger import TRIGGER_C, TRIGGER_WINDOWS, Trigger, chunk_summary, pooled_stream


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
    from .calibrate import counted_chunk_range

    y = np.zeros(n_chunks, dtype=np.int64)
    for a, b, respond in clips:
        if respond:
            lo, hi = counted_chunk_range(a, b, chunk_samples, window_chunks)
            y[lo: hi + 1] = 1
    return y


def examples_from_streams(model, samples, max_chunks: int = 60, window_chunks: int = 2) -> list[TriggerExample]:
    """Built training streams (`StreamSample`s): foreground sound-event clips labelled by their
    gold decision; resets at the stream's gold replies (what the LM is taught to answer)."""
    from .calibrate import clip_ranges
    from .train import FeatureCache

    feats, out = FeatureCache(model, 1), []
    for s in samples:
        enc = feats(s, max_chunks)
        y = np.zeros(enc.shape[0], dtype=np.int64)
        for lo, hi, respond in clip_ranges(s, window_chunks):  # the calibration's and the bench's ranges
            if respond:
                y[lo: hi + 1] = 1
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
