"""Fitting the sound trigger (trigger.py) after training: `soundflow trigger fit`.

Streams of train recording groups only — built training streams and bench-style streams of
train-split catalog clips — give per-chunk examples: the trigger's evidence as a live stream
builds it (emptied at each reply), labelled 1 at every chunk a reply to a RESPOND clip counts at
(`bench proactive`'s counted range), 0 elsewhere (IGNORE sounds, speech, music, ambience). A
class-balanced MLP on the standardised evidence is the trigger (`fit_trigger`), its floor set on
held-out folds of recorded ambience (`ambient_floor`); it is written into a copy of the
checkpoint, whose other tensors are copied unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .audio import SAMPLE_RATE, chunk_samples, frame_levels_db
from .model import encoder_fingerprint
from .trigger import (
    SHORT_SOUND_S,
    SOUND_DB,
    TRIGGER_CLASS_FLOOR_P,
    TRIGGER_DECAY,
    TRIGGER_DROPOUT,
    TRIGGER_HIDDEN,
    TRIGGER_HOLDOFF,
    TRIGGER_MAX_FALSE_PER_HOUR,
    TRIGGER_STEPS,
    TRIGGER_WINDOWS,
    VERIFY_C,
    VERIFY_CHUNKS,
    VERIFY_CONFIRM,
    VERIFY_DEPTH,
    VERIFY_GATE,
    VERIFY_HEADS,
    Trigger,
    Verifier,
    chunk_summary,
    pooled_stream,
    window_summary,
)


@dataclass
class TriggerExample:
    """One stream for fitting: chunk summaries (T, 2d), 0/1 labels (T,), the reply chunks, the
    class of the RESPOND sound at each labelled chunk ("" elsewhere or when unknown), and where
    its audio came from (ambient negatives: "recorded", "augmented" or "synthetic")."""

    summaries: torch.Tensor
    labels: np.ndarray
    resets: list[int]
    names: list[str] | None = None
    source: str = "stream"


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
        names = [""] * enc.shape[0]
        for lo, hi, respond, cls in clip_ranges(s, window_chunks, classes=True):  # the calibration's and the bench's ranges
            if respond:
                y[lo: hi + 1] = 1
                names[lo: hi + 1] = [cls] * len(names[lo: hi + 1])
        out.append(TriggerExample(chunk_summary(enc), y, [t["chunk"] for t in s.timeline if t["chunk"] < enc.shape[0]],
                                  names[: enc.shape[0]]))
    return out


def noise_ids(sample) -> set[str]:
    """Ids of the noise-library files a built stream is bedded on (its provenance records them)."""
    return {str(e.get("id")) for e in sample.events if e.get("type") == "noise"}


def examples_from_bench_streams(model, streams, chunk_ms: int = 400, window_chunks: int = 2) -> list[TriggerExample]:
    """Bench-style streams (`bench.proactive.Stream`: ambient lead-in, whole clips, a tail) of
    train-split clips; resets where a RESPOND clip's last chunk would be answered."""
    from .calibrate import counted_chunk_range
    from .data import split_chunks

    c, out = chunk_samples(chunk_ms), []
    for s in streams:
        with torch.inference_mode():
            enc = model.encode_audio(model.features(torch.from_numpy(split_chunks(s.wave, chunk_ms))))
        clips = [(e.start_sample, e.end_sample, e.item.decision == "RESPOND") for e in s.events]
        y = respond_labels(enc.shape[0], clips, c, window_chunks)
        names = [""] * enc.shape[0]
        for e in s.events:
            if e.item.decision == "RESPOND":
                lo, hi = counted_chunk_range(e.start_sample, e.end_sample, c, window_chunks)
                names[lo: hi + 1] = [e.item.sound_class] * len(names[lo: hi + 1])
        resets = [-(-b // c) - 1 for a, b, r in clips if r]
        out.append(TriggerExample(chunk_summary(enc), y, resets, names))
    return out


def bench_style_streams(items, noise_manifest: str | None = None, seed: int = 0) -> list:
    """The bench's streams of train-split clips (`items`: BenchItems), as both fits hear them:
    each clip alone over pink noise, same-macro sequences, and, with a noise library, each clip
    alone again over its training side's ambience."""
    from .bench.proactive import ClipLoader, StreamConfig, build_multi_streams, build_single_streams

    loader = ClipLoader()
    streams = build_single_streams(items, StreamConfig(), seed, loader) + build_multi_streams(items, StreamConfig(), seed, loader)
    if noise_manifest:
        streams += build_single_streams(items, StreamConfig(noise_manifest=noise_manifest, noise_split="train"),
                                        seed + 1, loader)
    return streams


def _adamw(params, n: int, steps: int, seed: int, loss_of) -> None:
    """Minimise `loss_of(batch indices)` over n rows with AdamW: whole seeded epochs of 512-row
    batches, at least `steps` of them."""
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=TRIGGER_DECAY)
    g = torch.Generator().manual_seed(seed)
    for _ in range(-(-steps * 512 // n)):
        for idx in torch.randperm(n, generator=g).split(512):
            loss = loss_of(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()


def fit_trigger(examples: Sequence[TriggerExample], windows: Sequence[int] = TRIGGER_WINDOWS,
                hidden: int = TRIGGER_HIDDEN, seed: int = 0, steps: int = TRIGGER_STEPS) -> tuple[Trigger, dict]:
    """The trigger's head on standardised evidence at every chunk: class-balanced binary
    cross-entropy, AdamW with weight decay, dropout on the input and hidden units; seed-pure."""
    if not examples:
        raise ValueError("no streams to fit the trigger on")
    X = torch.cat([pooled_stream(e.summaries, e.resets, windows) for e in examples]).float()
    y = torch.from_numpy(np.concatenate([e.labels for e in examples])).float()
    if y.min() == y.max():
        raise ValueError("the trigger needs chunks of both kinds (RESPOND clips and the rest)")
    mean, scale = X.mean(0), X.std(0)
    scale[scale < 1e-6] = 1.0
    torch.manual_seed(seed)
    trig = Trigger(examples[0].summaries.shape[1], windows, hidden=hidden)
    trig.mean.copy_(mean)
    trig.scale.copy_(scale)
    params = [p for n, p in trig.named_parameters() if n not in ("mean", "scale")]
    for p in params:
        p.requires_grad_(True)
    Z = (X - mean) / scale
    pos = float(y.mean())
    w = torch.where(y > 0, 0.5 / pos, 0.5 / (1 - pos))  # each class weighs half
    _adamw(params, len(y), steps, seed, lambda idx: nn.functional.binary_cross_entropy_with_logits(
        trig.head(Z[idx], TRIGGER_DROPOUT), y[idx], weight=w[idx], reduction="sum") / w[idx].sum())
    trig.requires_grad_(False)
    return trig, {"chunks": int(len(y)), "respond_chunks": int(y.sum()), "streams": len(examples),
                  "windows": list(trig.windows), "hidden": hidden, "steps": steps, "seed": seed}


NAMER_MIN_CHUNKS = 20  # a class the namer learns needs at least this many RESPOND chunks


def namer_classes(examples: Sequence[TriggerExample], min_chunks: int = NAMER_MIN_CHUNKS) -> list[str]:
    """The classes a namer fitted on `examples` tells apart: RESPOND sounds with a trained reply
    (`replies.PROACTIVE_REPLIES`) and at least `min_chunks` chunks, sorted."""
    from .replies import PROACTIVE_REPLIES

    counts: dict[str, int] = {}
    for e in examples:
        for t, n in enumerate(e.names or ()):
            if n in PROACTIVE_REPLIES and e.labels[t]:
                counts[n] = counts.get(n, 0) + 1
    return sorted(c for c, k in counts.items() if k >= min_chunks)


def fit_namer(trig: Trigger, examples: Sequence[TriggerExample], seed: int = 0, steps: int = 500,
              min_chunks: int = NAMER_MIN_CHUNKS) -> dict:
    """The trigger's namer: a softmax regression on its standardised evidence at the chunks of
    RESPOND sounds whose class has a trained reply (`replies.PROACTIVE_REPLIES`: what the LM was
    taught to say about it) and at least `min_chunks` chunks; fitted in place."""
    from .replies import PROACTIVE_REPLIES

    X, names = [], []
    for e in examples:
        if e.names is None:
            continue
        ev = pooled_stream(e.summaries, e.resets, trig.windows)
        keep = [t for t, n in enumerate(e.names) if n in PROACTIVE_REPLIES and e.labels[t]]
        X.append(ev[keep])
        names += [e.names[t] for t in keep]
    classes = namer_classes(examples, min_chunks)
    if len(classes) < 2:
        raise ValueError("the namer needs RESPOND chunks of at least two classes with a trained reply")
    rows = [i for i, n in enumerate(names) if n in classes]
    Z = trig.standardise(torch.cat(X)[rows])
    y = torch.tensor([classes.index(names[i]) for i in rows])
    trig.set_classes(classes, [PROACTIVE_REPLIES[c] for c in classes])
    torch.manual_seed(seed)
    params = list(trig.namer.parameters())
    for p in params:
        p.requires_grad_(True)
    _adamw(params, len(y), steps, seed,
           lambda idx: nn.functional.cross_entropy(trig.namer(nn.functional.dropout(Z[idx], TRIGGER_DROPOUT)), y[idx]))
    trig.requires_grad_(False)
    with torch.no_grad():
        acc = float((trig.namer(Z).argmax(-1) == y).float().mean())
    return {"classes": classes, "chunks": len(rows), "train_accuracy": round(acc, 4), "steps": steps}


AMBIENT_MINUTES = 40.0  # training-side recorded ambience heard as negatives (about 3.4 min of distinct audio, re-cropped)
# ... and per minute of it, minutes of the same side through per-block effects and of synthesised
# ambience (ambience.py): at a matched false-reply rate on held-out ambience, clip recall rose from
# 0.02 to 0.13 at ~1 per hour and from 0.18 to 0.31 at ~3-5 per hour (BENCHMARKS.md)
AMBIENT_AUGMENTED = 2.0
AMBIENT_SYNTHETIC = 1.0


def false_replies(logits: np.ndarray, threshold: float, holdoff: int = TRIGGER_HOLDOFF) -> int:
    """Replies the trigger alone gives on an ambient stream: a logit at or above `threshold`,
    then `holdoff` chunks out (the evidence's emptying is left out: it only lowers the count)."""
    n, quiet = 0, 0
    for v in np.asarray(logits, dtype=np.float64):
        if quiet:
            quiet -= 1
        elif v >= threshold:
            n, quiet = n + 1, holdoff
    return n


def lowest_quiet_threshold(logits: np.ndarray, hours: float, budget: float = TRIGGER_MAX_FALSE_PER_HOUR,
                           holdoff: int = TRIGGER_HOLDOFF) -> float:
    """The lowest threshold (among the logits heard, nudged up) at which the trigger gives at
    most `budget` false replies per hour on this ambience."""
    logits = np.asarray(logits, dtype=np.float64)  # float32 would swallow the nudge
    allowed = int(np.floor(budget * hours + 1e-9))
    cand = np.unique(logits)[::-1]  # high → low; the count only grows as the threshold falls
    lo, hi = 0, len(cand) - 1  # find the last index whose threshold (just above cand[i+1]) stays within budget
    best = float(cand[0]) + 1e-3
    while lo <= hi:
        mid = (lo + hi) // 2
        t = float(cand[mid]) + 1e-6
        if false_replies(logits, t, holdoff) <= allowed:
            best, lo = t, mid + 1
        else:
            hi = mid - 1
    return best


def ambient_examples(noise_manifest: str, model, minutes: float, seed: int, rows_split: str,
                     chunk_ms: int = 400, stream_chunks: int = 150, augmented: float = AMBIENT_AUGMENTED,
                     synthetic: float = AMBIENT_SYNTHETIC, extra: Sequence[str] = ()) -> list[TriggerExample]:
    """All-negative examples: `minutes` of recorded ambience (`bench.ambient.ambient_stream`) from
    one side of the noise library's split, `augmented` × as much of that side through per-block
    effects, and `synthetic` × as much synthesised ambience (`ambience.py`; its seed differs per
    side, so folds never share it), cut into `stream_chunks`-long streams, each tagged with its
    `source`. `extra`: manifests of more recorded ambience (`soundflow data ambience`, or your
    own), every file training-side: `minutes` more of each from the half of its files that
    `rows_split` names ("train-a": one half, "train-b": the other), so folds never share a file."""
    from .ambience import augmented_ambience, synthetic_ambience
    from .bench.ambient import ambient_stream

    waves = [("recorded", ambient_stream(noise_manifest, minutes, seed=seed, split=rows_split)[0])]
    half = {"train-a": "dev", "train-b": "train"}.get(rows_split)  # an extra manifest's two halves by file
    for j, path in enumerate(extra):
        if half is None:
            raise ValueError(f"extra ambience is folded by halves: rows_split must be train-a or train-b, not {rows_split!r}")
        waves.append(("recorded", ambient_stream(path, minutes, seed=seed + 500 + j, split=half)[0]))
    if augmented > 0:
        more, _ = ambient_stream(noise_manifest, minutes * augmented, seed=seed + 1000, split=rows_split)
        waves.append(("augmented", augmented_ambience(more, seed=seed + 2000)))
    if synthetic > 0:
        waves.append(("synthetic", synthetic_ambience(minutes * synthetic, seed=seed + 3000 + sum(map(ord, rows_split)))))
    out = []
    for source, wave in waves:
        su = wave_summaries(model, wave, chunk_ms)
        out += [TriggerExample(su[i: i + stream_chunks], np.zeros(len(su[i: i + stream_chunks]), dtype=np.int64), [],
                               source=source) for i in range(0, len(su), stream_chunks)]
    return out


@torch.inference_mode()
def wave_summaries(model, wave: np.ndarray, chunk_ms: int = 400, batch: int = 256) -> torch.Tensor:
    """(chunks, 2 d_enc): the trigger's chunk summaries of a long wave, encoded `batch` chunks at a time."""
    from .data import split_chunks

    chunks = torch.from_numpy(split_chunks(np.asarray(wave, np.float32), chunk_ms))
    return torch.cat([chunk_summary(model.encode_audio(model.features(chunks[i: i + batch])))
                      for i in range(0, len(chunks), batch)])


def ambient_floor(examples: Sequence[TriggerExample], folds: Sequence[Sequence[TriggerExample]],
                  windows: Sequence[int], hidden: int, seed: int, chunk_ms: int = 400,
                  named: bool = False) -> tuple[float, list[dict], dict[str, float] | None]:
    """The trigger's floor, cross-fitted: for each fold of ambience (different noise files), a
    trigger fitted without it gives out-of-fold logits on the fold's *recorded* ambience; the
    floor is the lowest threshold within the false-reply budget on all folds' logits together.
    An estimate of how the final trigger (fitted on every fold) behaves on ambience it never
    heard, which training ambience cannot give: fitted on, it is never fired at. Augmented and
    synthesised ambience is fitted on but not counted: it is easier than recordings, and counting
    it made "one per hour" of a fold far looser than one per hour of recordings (BENCHMARKS.md).
    Pooled, not per fold: a fold holds 0.67 h, where a budget of one per hour rounds down to no
    reply at all, and the floor was the highest of two single chunks (8.8 in one fit, 10.2 in the
    next); 1.33 h together allow one, and each chunk is still judged by a trigger that never
    heard it. Each fold's own threshold is reported beside it.

    named: each fold's trigger also gets a namer (`fit_namer`), and each class its own floor the
    same way, counting only the chunks its namer gives that class at least `TRIGGER_CLASS_FLOOR_P`
    (a class no fold's ambience comes near keeps the one floor). Returns (floor, per-fold figures,
    {class: floor} or None)."""
    out, logits, probs, classes = [], [], [], None
    for k, held in enumerate(folds):
        rest = [e for j, f in enumerate(folds) if j != k for e in f]
        trig, _ = fit_trigger(list(examples) + rest, windows, hidden, seed)
        if named:
            fit_namer(trig, examples, seed)
            if classes is not None and trig.classes != classes:
                raise RuntimeError("fold namers disagree on the classes")  # same streams: cannot happen
            classes = trig.classes
        counted = [e for e in held if e.source == "recorded"] or list(held)
        with torch.no_grad():
            ev = [pooled_stream(e.summaries, (), windows) for e in counted]
            lg = np.concatenate([trig.logit(v).numpy() for v in ev])
            pr = (np.concatenate([torch.softmax(trig.namer(trig.standardise(v)), -1).numpy() for v in ev])
                  if named else np.zeros((len(lg), 0)))
        hours = len(lg) * chunk_ms / 3.6e6
        out.append({"fold": k, "hours": round(hours, 3), "threshold_logit": lowest_quiet_threshold(lg, hours, holdoff=trig.holdoff),
                    "max_logit": float(lg.max())})
        gap = trig.holdoff + 1  # a reply's hold-off never runs from one fold into the next
        logits += [lg, np.full(gap, -np.inf)]
        probs += [pr, np.zeros((gap, pr.shape[1]))]
    lg, pr = np.concatenate(logits), np.concatenate(probs)
    hours = sum(f["hours"] for f in out)
    floor = lowest_quiet_threshold(lg, hours, holdoff=trig.holdoff)
    if not named:
        return floor, out, None
    per_class = {}
    for c, name in enumerate(classes):
        near = pr[:, c] >= TRIGGER_CLASS_FLOOR_P
        # the other chunks cannot fire as this class: out of its count
        per_class[name] = (min(floor, lowest_quiet_threshold(np.where(near, lg, -np.inf), hours, holdoff=trig.holdoff))
                           if near.any() else floor)
    return floor, out, per_class


def _write_with_trigger(src, out, trig: Trigger, meta_update) -> None:
    """Copy checkpoint folder `src` to `out` (atomically) with `trig`'s tensors as its `trigger.*`;
    the other trained tensors are copied, not re-saved; `meta_update(meta)` edits model.json."""
    import shutil

    from safetensors.torch import load_file, save_file

    from .checkpoint import atomic_dir, commit_dir

    tmp = atomic_dir(out)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "model.json"):
            shutil.copy2(f, tmp / f.name)
    state = {k: v for k, v in load_file(str(src / "model.safetensors")).items() if not k.startswith("trigger.")}
    state.update({f"trigger.{n}": p.detach().cpu().contiguous() for n, p in trig.named_parameters()})
    save_file(state, str(tmp / "model.safetensors"))
    meta = json.loads((src / "model.json").read_text())
    meta["trained"] = sorted({k for k in meta.get("trained", []) if not k.startswith("trigger.")}
                             | {k for k in state if k.startswith("trigger.")})
    meta_update(meta)
    (tmp / "model.json").write_text(json.dumps(meta, indent=1))
    commit_dir(tmp, out)


def fit_into_checkpoint(checkpoint, out, data: Sequence[str] = (), bench_manifest: str | None = None,
                        noise_manifest: str | None = None, ambient_manifests: Sequence[str] = (),
                        windows: Sequence[int] | None = None,
                        hidden: int = TRIGGER_HIDDEN, ambient_minutes: float = AMBIENT_MINUTES,
                        max_chunks: int = 60, seed: int = 0, progress: bool = True,
                        features_cache: str | None = None) -> dict:
    """Fit a trigger for `checkpoint` and write the checkpoint with it to `out` (atomically; the
    trained tensors are copied, not re-saved). Streams: built `data` specs and, from a bench
    manifest of train-split clips, bench-style streams — single clips over pink noise, over
    `noise_manifest` ambience when given, and same-macro sequences. With a noise manifest, also
    `ambient_minutes` of its training-side ambience as negatives (and `AMBIENT_AUGMENTED` and
    `AMBIENT_SYNTHETIC` times as much through effects and synthesised, `ambient_examples`), in two folds of different
    files that set the trigger's floor (`ambient_floor`); `ambient_manifests` add as much recorded
    ambience again per manifest, folded by their files' halves. Calibration is dropped: the
    decision changed, so run `soundflow calibrate` on the result.

    features_cache: a file that keeps the streams' chunk summaries (~330 MB for the default recipe) for the next fit with
    the same inputs: encoding them is most of a fit's time (28 of 34 min for the default recipe),
    the fit itself a few minutes; a cache made from other inputs is rebuilt."""
    import sys
    from pathlib import Path

    from .checkpoint import resolve_dir
    from .loading import load_model

    windows = TRIGGER_WINDOWS if not windows else tuple(windows)
    src = resolve_dir(Path(checkpoint))
    if src is None:
        raise FileNotFoundError(f"no soundflow checkpoint (model.json) in {checkpoint}")
    model = load_model(str(src))
    examples: list[TriggerExample] = []

    def say(msg):
        if progress:
            print(f"[trigger] {msg}", file=sys.stderr, flush=True)

    inputs = {"data": [str(d) for d in data], "bench_manifest": bench_manifest, "noise_manifest": noise_manifest,
              "ambient_manifests": [str(m) for m in ambient_manifests], "ambient_minutes": ambient_minutes}
    key = {**inputs, "encoder": model.cfg.encoder, "chunk_ms": model.cfg.chunk_ms, "max_chunks": max_chunks,
           "seed": seed, "files": [_fingerprint(p) for p in [*data, bench_manifest, noise_manifest, *ambient_manifests] if p]}
    cached = _read_cache(features_cache, key)
    if cached is not None:
        examples, folds = cached["examples"], cached["folds"]
        say(f"{len(examples)} streams and {sum(map(len, folds))} ambient ones from {features_cache}")
        return _fit_and_write(src, out, examples, folds, windows, hidden, seed, say, inputs)

    held: set[str] = set()
    if noise_manifest:  # the ambience `bench ambient` plays is never heard while fitting
        from .catalog import noise_rows_of
        from .data import read_jsonl

        held = {str(r.get("id")) for r in noise_rows_of(read_jsonl(noise_manifest), "dev")}
    if data:
        from .dataspec import load_streams

        samples = load_streams(list(data))
        kept = [s for s in samples if not (noise_ids(s) & held)]
        examples += examples_from_streams(model, kept, max_chunks)
        say(f"{len(kept)} built streams ({len(samples) - len(kept)} left out: bedded on held-out noise)")
    if bench_manifest:
        from .bench.proactive import load_manifest

        streams = bench_style_streams(load_manifest(bench_manifest), noise_manifest, seed)
        examples += examples_from_bench_streams(model, streams)
        say(f"+ {len(streams)} bench-style streams of {bench_manifest}")
    folds: list[list[TriggerExample]] = []
    if noise_manifest and ambient_minutes > 0:
        # two folds of different training-side noise files (the dev side is `bench ambient`'s)
        folds = [ambient_examples(noise_manifest, model, ambient_minutes / 2, seed + 2 + k, f"train-{side}",
                                  extra=tuple(ambient_manifests))
                 for k, side in enumerate(("a", "b"))]
        say(f"+ {ambient_minutes * (1 + len(ambient_manifests)):g} min of recorded training-side ambience in 2 folds "
            f"(and {ambient_minutes * AMBIENT_AUGMENTED:g} min through effects, {ambient_minutes * AMBIENT_SYNTHETIC:g} synthesised)")
    if features_cache:
        _write_cache(features_cache, key, examples=list(examples), folds=[list(f) for f in folds])
    return _fit_and_write(src, out, examples, folds, windows, hidden, seed, say, inputs)


def _fingerprint(path) -> list:
    """What a features cache checks its inputs by: a file's size and content hash, a folder's
    files' (content, not mtime: a data set copied or provisioned again is the same input)."""
    import hashlib
    from pathlib import Path

    def digest(f):
        with open(f, "rb") as fh:
            return hashlib.file_digest(fh, "sha1").hexdigest()

    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p] if p.exists() else []
    return [str(p), [(f.name, f.stat().st_size, digest(f)) for f in files]]


def _read_cache(path: str | None, key: dict) -> dict | None:
    """What a features cache made with the same inputs (`key`) holds, else None."""
    from pathlib import Path

    if not path or not Path(path).is_file():
        return None
    blob = torch.load(path, weights_only=False)
    return blob if blob.get("key") == key else None


def _write_cache(path: str, key: dict, **payload) -> None:
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"key": key, **payload}, tmp)
    tmp.replace(path)  # atomic: a killed fit never leaves half a cache


def _fit_and_write(src, out, examples, folds, windows, hidden, seed, say, inputs: dict) -> dict:
    """The fit proper on encoded streams: floors from the folds, the trigger (and its namer and
    class floors, when the streams name their sounds), written into a copy of `src` at `out`."""
    from pathlib import Path

    named = len(namer_classes(examples)) >= 2  # streams that name their sounds
    floor, fold_stats, class_floors = (ambient_floor(examples, folds, windows, hidden, seed, named=named)
                                       if len(folds) > 1 else (None, [], None))
    trig, stats = fit_trigger(examples + [e for f in folds for e in f], windows, hidden, seed)
    trig.floor = floor
    if named:  # its namer, on the same streams as the folds' namers, so the class floors are its own
        stats["name_fit"] = fit_namer(trig, examples, seed)
        if class_floors is not None:
            trig.class_floors = [class_floors[c] for c in trig.classes]
    if not folds:
        inputs = {**inputs, "ambient_manifests": [], "ambient_minutes": 0}
    stats.update(**inputs, ambient_augmented=AMBIENT_AUGMENTED if folds else 0,
                 ambient_synthetic=AMBIENT_SYNTHETIC if folds else 0, floor=floor, floor_folds=fold_stats)
    say(f"fitted: {stats['chunks']} chunks; floor {floor}"
        + (f"; class floors {dict(zip(trig.classes, (round(f, 2) for f in trig.class_floors)))}" if trig.class_floors else ""))
    def meta_update(meta):
        meta.pop("calibration", None)  # the decision changed
        meta["trigger"] = {**trig.config(), "fit": stats}

    _write_with_trigger(src, Path(out), trig, meta_update)
    return stats


def _with_trigger(checkpoint):
    """(folder, model) of a checkpoint whose trigger is to be refitted in part; it must have one."""
    from pathlib import Path

    from .checkpoint import resolve_dir
    from .loading import load_model

    src = resolve_dir(Path(checkpoint))
    if src is None:
        raise FileNotFoundError(f"no soundflow checkpoint (model.json) in {checkpoint}")
    model = load_model(str(src))
    if model.trigger is None:
        raise ValueError(f"{checkpoint} has no sound trigger: `soundflow trigger fit` it first")
    return src, model


def name_into_checkpoint(checkpoint, out, bench_manifest: str | None = None, data: Sequence[str] = (),
                         max_chunks: int = 60, seed: int = 0, progress: bool = True) -> dict:
    """Fit the namer of `checkpoint`'s trigger (`fit_namer`) on the RESPOND sounds of train-split
    bench-style streams (single clips over pink noise) and/or built `data`, and write the
    checkpoint with it to `out`. The decision is unchanged, so the calibration is kept — except
    class floors, which belong to the namer they were cross-fitted with (`ambient_floor`): a new
    namer drops them, and the one floor decides for every class."""
    import sys
    from pathlib import Path

    src, model = _with_trigger(checkpoint)
    examples: list[TriggerExample] = []
    if data:
        from .dataspec import load_streams

        examples += examples_from_streams(model, load_streams(list(data)), max_chunks)
    if bench_manifest:
        from .bench.proactive import ClipLoader, StreamConfig, build_single_streams, load_manifest

        items = [it for it in load_manifest(bench_manifest) if it.decision == "RESPOND"]
        examples += examples_from_bench_streams(model, build_single_streams(items, StreamConfig(), seed, ClipLoader()))
    if progress:
        print(f"[trigger] naming from {len(examples)} streams", file=sys.stderr, flush=True)
    trig = model.trigger
    stats = fit_namer(trig, examples, seed)
    def meta_update(meta):  # the decision is unchanged (the one floor): the calibration stays
        meta["trigger"] = {**meta["trigger"], "classes": list(trig.classes), "replies": list(trig.replies),
                           "class_floors": None,
                           "name_fit": {**stats, "bench_manifest": bench_manifest, "data": list(data)}}
        for k in ("class_offsets", "class_thresholds"):
            ((meta.get("calibration") or {}).get("trigger") or {}).pop(k, None)

    _write_with_trigger(src, Path(out), trig, meta_update)
    return stats


# ---------------------------------------------------------------- the verifier (trigger.Verifier)

VERIFY_HOP_CHUNKS = 3  # windows over a training clip start every 1.2 s


def verify_windows(wave: np.ndarray, chunk_samples: int, chunks: int = VERIFY_CHUNKS,
                   hop_chunks: int = VERIFY_HOP_CHUNKS) -> np.ndarray:
    """(N, chunks, chunk_samples): the windows the verifier is fitted on — every `hop_chunks`
    chunks from the start and one ending at the wave's end; a wave shorter than a window is
    zero-padded in front, as a stream's quiet lead-in would be."""
    n = chunks * chunk_samples
    wave = np.asarray(wave, dtype=np.float32)
    pad = max(0, n - len(wave))
    wave = np.concatenate([np.zeros(pad, np.float32), wave]) if pad else wave
    return np.stack([wave[e + pad - n: e + pad].reshape(chunks, chunk_samples)
                     for e in window_ends(len(wave) - pad, chunk_samples, chunks, hop_chunks)])


def window_ends(n_samples: int, chunk_samples: int, chunks: int = VERIFY_CHUNKS,
                hop_chunks: int = VERIFY_HOP_CHUNKS) -> list[int]:
    """The sample each of `verify_windows`' windows over a wave of `n_samples` ends at."""
    ends = list(range(chunks * chunk_samples, n_samples + 1, hop_chunks * chunk_samples))
    return ends if ends and ends[-1] == n_samples else ends + [n_samples]


def stream_windows(stream, chunk_samples: int, chunks: int = VERIFY_CHUNKS, hop_chunks: int = VERIFY_HOP_CHUNKS,
                   window_chunks: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(windows (N, chunks, chunk_samples), labels (N,)) of a bench-style stream (`bench.proactive.
    Stream`): a window ending at every `hop_chunks`-th chunk, the first ones zero-padded in front
    as the engine pads a stream's start, each labelled as the trigger's chunk there
    (`respond_labels`: 1 where a reply to a RESPOND clip counts). Unlike a clip's own windows
    they hold what came before the sound: the lead-in, or the clip before it in a sequence."""
    ends, y = _stream_window_ends(stream, chunk_samples, hop_chunks, window_chunks)
    n = -(-len(stream.wave) // chunk_samples)
    x = np.zeros(((chunks - 1) + n) * chunk_samples, np.float32)
    x[(chunks - 1) * chunk_samples: (chunks - 1) * chunk_samples + len(stream.wave)] = stream.wave
    x = x.reshape(-1, chunk_samples)
    return np.stack([x[e: e + chunks] for e in ends]), y[ends]


def _stream_window_ends(stream, chunk_samples: int, hop_chunks: int, window_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """(the chunks `stream_windows`' windows end at, the trigger's label of every chunk)."""
    n = -(-len(stream.wave) // chunk_samples)
    clips = [(e.start_sample, e.end_sample, e.item.decision == "RESPOND") for e in stream.events]
    return np.arange(0, n, hop_chunks), respond_labels(n, clips, chunk_samples, window_chunks)


def window_names(items=None, streams=None, samples_per_chunk: int = 0, chunks: int = VERIFY_CHUNKS,
                 hop_chunks: int = VERIFY_HOP_CHUNKS, window_chunks: int = 2) -> list[str]:
    """The sound class of each window `verifier_features` encodes, in its order, without encoding:
    of train-split clips (`items`; every window its clip's class) or of their bench-style `streams`
    (a window labelled RESPOND its clip's class, one ending within an IGNORE clip's counted range
    that clip's class, any other ""). What a verifier over classes (`VERIFY_HEADS` "classes") is
    fitted to tell apart."""
    from .bench.proactive import ClipLoader
    from .calibrate import counted_chunk_range

    out: list[str] = []
    if streams is None:
        loader = ClipLoader()
        for it in items or ():
            w = loader(it)
            if w is not None:
                out += [it.sound_class] * len(window_ends(len(w), samples_per_chunk, chunks, hop_chunks))
        return out
    for st in streams:
        ends, y = _stream_window_ends(st, samples_per_chunk, hop_chunks, window_chunks)
        spans = [(*counted_chunk_range(e.start_sample, e.end_sample, samples_per_chunk, window_chunks), e.item)
                 for e in st.events]
        for end in ends:
            # the latest clip whose counted range holds this chunk, of the side its label says
            near = [it for lo, hi, it in spans if lo <= end <= hi and (it.decision == "RESPOND") == bool(y[end])]
            out.append(near[-1].sound_class if near else "")
    return out


@torch.inference_mode()
def window_summaries(model, windows: np.ndarray, layers: Sequence[int] | None = None, batch: int = 16) -> torch.Tensor:
    """(N, k, samples) chunk windows → (N, D) `trigger.window_summary` of `layers`, as served."""
    out = []
    for i in range(0, len(windows), batch):
        w = torch.from_numpy(windows[i: i + batch])
        mel = model.features(w.reshape(-1, w.shape[-1]))
        out.append(window_summary(model.summarize, mel.reshape(w.shape[0], w.shape[1], *mel.shape[1:]), layers))
    return torch.cat(out) if out else torch.zeros(0, 2 * model.encoder.d_out * (len(layers) if layers else 1))


def verify_layers(model, depth: int = VERIFY_DEPTH) -> tuple[int, ...] | None:
    """The encoder layers a verifier of `depth` pools: the first `depth` (all of them when the
    encoder has fewer); None (its final pooled encoding) for depth 0."""
    if depth <= 0:
        return None
    if not hasattr(model.encoder, "layer_summaries"):
        raise ValueError(f"{type(model.encoder).__name__} has no per-layer summaries: fit the verifier with depth 0")
    return tuple(range(1, min(depth, len(model.encoder.encoder.layers)) + 1))


def confirmed_floor(logits: Sequence[np.ndarray], confirm: int) -> float:
    """The highest level the logits of consecutive decisions (one array per continuous wave) hold
    for `confirm` decisions in a row: a verifier that must agree that often passes none of them
    above it. -inf when no wave is that long."""
    best = -np.inf
    for lg in logits:
        lg = np.asarray(lg, dtype=np.float64)
        if len(lg) >= confirm:
            best = max(best, float(np.lib.stride_tricks.sliding_window_view(lg, confirm).min(1).max()))
    return best


def quiet_confirmed_floor(logits: Sequence[np.ndarray], confirm: int, hours: float,
                          budget: float = TRIGGER_MAX_FALSE_PER_HOUR, holdoff: int = TRIGGER_HOLDOFF) -> float:
    """The lowest floor at which a verifier that must agree `confirm` decisions in a row passes
    these logits (one array per continuous wave; -inf: a window it is not asked about) at most
    `budget` times an hour, each pass counted as the trigger's replies are (`lowest_quiet_threshold`:
    then `holdoff` chunks out) — the trigger's own floor rule, where `confirmed_floor` allows none.
    -inf when no wave is that long."""
    runs = []
    for lg in logits:
        lg = np.asarray(lg, dtype=np.float64)
        if len(lg) >= confirm:  # a pass ends a run of `confirm`; a hold-off never runs into the next wave
            runs += [np.lib.stride_tricks.sliding_window_view(lg, confirm).min(1), np.full(holdoff + 1, -np.inf)]
    runs = np.concatenate(runs) if runs else np.zeros(0)
    if not np.isfinite(runs).any():
        return -np.inf
    return lowest_quiet_threshold(runs, hours, budget, holdoff)


def class_confirmed_floors(held: Sequence[np.ndarray], probs: Sequence[np.ndarray], confirm: int,
                           hours: float) -> tuple[float, list[float]]:
    """(one floor, a floor per namer class) for `confirm` decisions in a row, from the held-out
    logits `held` of ambient windows and the namer's probabilities there (`probs`: (n, classes) per
    wave), made as the trigger's class floors are (`ambient_floor`): each class counts only the
    windows its namer gives it at least `TRIGGER_CLASS_FLOOR_P` — the others cannot be measured
    against its floor — within the budget of `quiet_confirmed_floor`, never above the one floor; a
    class no ambient window comes near keeps the one floor."""
    one = quiet_confirmed_floor(held, confirm, hours)
    per = []
    for c in range(probs[0].shape[1] if probs else 0):
        near = [p[:, c] >= TRIGGER_CLASS_FLOOR_P for p in probs]
        own = quiet_confirmed_floor([np.where(m, h, -np.inf) for h, m in zip(held, near)], confirm, hours) \
            if any(m.any() for m in near) else one
        per.append(float(min(one, own)) if np.isfinite(own) else float(one))
    return float(one), per


@torch.inference_mode()
def window_class_probs(model, wave: np.ndarray, chunks: int = VERIFY_CHUNKS, batch: int = 256) -> np.ndarray:
    """(N, classes): the trigger's namer at the chunk each of `verify_windows(wave, hop_chunks=1)`'s
    windows ends in, on the evidence a live stream holds there with no reply before it — the class
    whose rule the served second look (`Verifier.rule_of`) would measure that window by."""
    trig, cs = model.trigger, chunk_samples(model.cfg.chunk_ms)
    if trig is None or trig.namer is None:
        raise ValueError("per-class floors need the trigger's namer: `soundflow trigger name` it first")
    su = wave_summaries(model, wave, model.cfg.chunk_ms, batch)
    p = torch.softmax(trig.namer(trig.standardise(pooled_stream(su, (), trig.windows))), -1).numpy()
    return p[[-(-e // cs) - 1 for e in window_ends(len(wave), cs, chunks, 1)]]


@dataclass
class VerifierFeatures:
    """What a verifier fit reads, encoded once (`verifier_features`; a features cache keeps it):
    the sound windows' summaries `X` with labels `y`, and per ambient wave the summaries of a
    window ending at every chunk, with the fold (a set of recordings) each wave came from."""

    X: torch.Tensor
    y: np.ndarray
    ambient: list[torch.Tensor]
    folds: list[int]
    windows_from: str
    layers: tuple[int, ...] | None
    chunks: int


def verifier_features(model, items, ambient_waves: Sequence[np.ndarray], chunks: int = VERIFY_CHUNKS,
                      depth: int = VERIFY_DEPTH, streams: Sequence | None = None,
                      folds: Sequence[int] | None = None) -> VerifierFeatures:
    """Encode what `fit_verifier` learns from: train-split clips (`items`: BenchItems; RESPOND 1,
    IGNORE 0), or the bench-style `streams` of them (`stream_windows`), and `ambient_waves`
    (0, a window ending at every chunk, as the engine asks). `folds`: each wave's fold (all 0 by default)."""
    from .bench.proactive import ClipLoader

    cs = chunk_samples(model.cfg.chunk_ms)
    layers = verify_layers(model, depth)
    loader, X, y = ClipLoader(), [], []
    for it in (items if streams is None else ()):
        w = loader(it)
        if w is None:
            continue
        f = window_summaries(model, verify_windows(w, cs, chunks), layers)
        X.append(f)
        y += [int(it.decision == "RESPOND")] * len(f)
    for st in streams or ():
        wins, lab = stream_windows(st, cs, chunks)
        X.append(window_summaries(model, wins, layers))
        y += lab.tolist()
    if not y or not any(y):
        raise ValueError("the verifier needs train-split clips with RESPOND sounds (a bench manifest of them)")
    folds = [0] * len(ambient_waves) if folds is None else [int(f) for f in folds]
    if len(folds) != len(ambient_waves):
        raise ValueError(f"{len(folds)} folds for {len(ambient_waves)} ambient waves")
    amb = [window_summaries(model, verify_windows(w, cs, chunks, hop_chunks=1), layers) for w in ambient_waves]
    return VerifierFeatures(torch.cat(X), np.array(y), amb, folds, "clips" if streams is None else "streams",
                            layers, chunks)


@dataclass
class _Regression:
    """A fitted second look: standardiser + logistic regression, binary (no heads) or over the
    classes `negative` + `respond` (its label k is the k-th of them), read as `Verifier.logit` reads it."""

    pipe: object
    negative: list[str] | None = None
    respond: list[str] | None = None

    def logit(self, X: np.ndarray) -> np.ndarray:
        from scipy.special import logsumexp

        h = self.pipe.decision_function(X)
        if self.respond is None:
            return h
        n = len(self.negative)
        return logsumexp(h[:, n:], axis=1) - logsumexp(h[:, :n], axis=1)


def _fit_logistic(X: np.ndarray, y: np.ndarray, C: float, seed: int, names: Sequence[str] | None = None) -> _Regression:
    """Class-balanced: RESPOND and the rest weigh the same in all. `names` (a class per row, ""
    for background): a regression over the classes of each side, else (or when each side has one
    class: the same regression) binary."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if names is not None:
        names = np.asarray(names, dtype=object)
        negative = sorted({str(c) for c in names[y == 0]} | {""})
        respond = sorted({str(c) for c in names[y == 1]})
    if names is None or len(negative) + len(respond) <= 2:
        return _Regression(make_pipeline(StandardScaler(), LogisticRegression(
            C=C, max_iter=5000, class_weight="balanced", random_state=seed)).fit(X, y))
    neg, pos = {c: i for i, c in enumerate(negative)}, {c: len(negative) + i for i, c in enumerate(respond)}
    labels = np.array([pos[str(c)] if t else neg[str(c)] for c, t in zip(names, y)])  # a name counts by its side
    w = np.where(y == 1, 0.5 / max(1, (y == 1).sum()), 0.5 / max(1, (y == 0).sum())) * len(y)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, random_state=seed))
    return _Regression(pipe.fit(X, labels, logisticregression__sample_weight=w), negative, respond)


def fit_verifier(model, items, ambient_waves: Sequence[np.ndarray], chunks: int = VERIFY_CHUNKS,
                 gate: float = VERIFY_GATE, C: float = VERIFY_C, depth: int = VERIFY_DEPTH, seed: int = 0,
                 confirm: int = VERIFY_CONFIRM, streams: Sequence | None = None, say=None,
                 folds: Sequence[int] | None = None, features: VerifierFeatures | None = None,
                 class_probs: Sequence[np.ndarray] | None = None, chunk_ms: int = 400,
                 names: Sequence[str] | None = None) -> tuple[Verifier, dict]:
    """The trigger's second look (`trigger.Verifier`): a class-balanced logistic regression on
    the window summaries of `verifier_features` (train-split clips or their bench-style `streams`;
    training-side recorded ambience as negatives). `depth`: pool the outputs of the encoder's
    first `depth` layers (`verify_layers`). `features`: already encoded (then `items`,
    `ambient_waves`, `streams`, `folds`, `chunks` and `depth` are not read).

    Its floor is the highest level ambience holds for `confirm` decisions in a row
    (`confirmed_floor`), as served. With one fold that ambience is the regression's own negatives
    (the floor "in-sample"). With ambience in two or more folds (different recordings each) the
    floor is cross-fitted, as the trigger's is (`ambient_floor`): for each fold a regression
    fitted without it reads it, and the floor is the highest held-out level — what ambience the
    verifier never heard reaches, which a regression's own negatives understate (`s2deep` passed
    2 windows of the held-out ambient hour at its in-sample floor, BENCHMARKS.md). The verifier
    itself is then fitted on all of it.

    `class_probs` (cross-fitted only): the trigger's namer over each ambient wave's windows
    (`window_class_probs`). Then each namer class gets its own floor from the held-out windows
    near it, and the one floor (for unnamed sounds) is the same rule over all of them, each within
    the trigger's false-reply budget (`class_confirmed_floors`): one floor high enough for the
    most machine-like class halved recall (`x2deep`), a floor per class kept the held-out hour at
    0.2 false replies (`xb`, BENCHMARKS.md).

    `names` (`window_names`: a sound class per sound window): a regression over the classes of
    each side, ambience as background (`Verifier`'s heads), instead of RESPOND against the rest."""
    f = features if features is not None else verifier_features(model, items, ambient_waves, chunks, depth, streams, folds)
    n_clip = len(f.y)
    A = torch.cat(f.ambient).numpy() if f.ambient else np.zeros((0, f.X.shape[1]), np.float32)
    X, y = np.concatenate([f.X.numpy(), A]), np.concatenate([f.y, np.zeros(len(A), np.int64)])
    lengths = [len(a) for a in f.ambient]
    if names is not None and len(names) != n_clip:
        raise ValueError(f"{len(names)} window names for {n_clip} sound windows")
    N = None if names is None else np.concatenate([np.asarray(names, dtype=object), np.full(len(A), "", dtype=object)])
    if say:
        say(f"verifier: {n_clip} sound windows ({int(f.y.sum())} RESPOND), {len(A)} ambient windows "
            f"in {len(set(f.folds))} fold(s)")
    reg = _fit_logistic(X, y, C, seed, N)
    sc, lr = reg.pipe[0], reg.pipe[-1]
    v = Verifier(2 * model.encoder.d_out, model.n_mels, f.chunks, gate, layers=f.layers, confirm=confirm,
                 negative_heads=reg.negative, respond_heads=reg.respond)
    with torch.no_grad():
        v.mean.copy_(torch.from_numpy(sc.mean_).float())
        v.scale.copy_(torch.from_numpy(sc.scale_).float())
        v.weight.copy_(torch.from_numpy(lr.coef_[0] if reg.respond is None else lr.coef_).float())
        v.bias.copy_(torch.as_tensor(lr.intercept_[0] if reg.respond is None else lr.intercept_).float())
        lg = v.logit(torch.from_numpy(X)).numpy()
    ks = sorted({1, 2, 3, confirm})
    waves = np.split(lg[n_clip:], np.cumsum(lengths)[:-1]) if lengths else []
    floors = {k: confirmed_floor(waves, k) for k in ks}  # the trade-off, for the record
    held_floors, held = None, [None] * len(f.ambient)  # each wave read by a regression fitted without its fold
    if len(set(f.folds)) > 1:
        for fold in sorted(set(f.folds)):
            keep = [a for a, g in zip(f.ambient, f.folds) if g != fold]
            Xf = np.concatenate([f.X.numpy(), *[a.numpy() for a in keep]])
            yf = np.concatenate([f.y, np.zeros(sum(map(len, keep)), np.int64)])
            Nf = None if N is None else np.concatenate([N[:n_clip], np.full(len(yf) - n_clip, "", dtype=object)])
            p = _fit_logistic(Xf, yf, C, seed, Nf)
            for i, (a, g) in enumerate(zip(f.ambient, f.folds)):
                if g == fold:
                    held[i] = p.logit(a.numpy())
            if say:
                say(f"  fold {fold} held out: highest level {max(float(h.max()) for h in held if h is not None):.2f}")
        held_floors = {k: confirmed_floor(held, k) for k in ks}
    class_floors = None
    if class_probs is not None:
        if held_floors is None:
            raise ValueError("per-class floors are cross-fitted: they need ambience in two folds (ambient_folds=2)")
        if len(class_probs) != len(f.ambient) or any(len(p) != len(a) for p, a in zip(class_probs, f.ambient)):
            raise ValueError("class_probs: one (windows, classes) array per ambient wave, a row per window")
        hours = len(A) * chunk_ms / 3.6e6
        per_k = {k: class_confirmed_floors(held, [np.asarray(p) for p in class_probs], k, hours) for k in ks}
        strict = held_floors  # no pass allowed: kept for the record
        held_floors = {k: one for k, (one, _) in per_k.items()}
        class_floors = {k: per for k, (_, per) in per_k.items()}
    chosen = held_floors if held_floors is not None else floors
    v.floor = chosen[confirm] if np.isfinite(chosen[confirm]) else 0.0
    if class_floors is not None:
        v.set_class_confirm([confirm] * len(class_floors[confirm]), class_floors[confirm])
    clip = lg[:n_clip] >= v.floor
    stats = {"clip_windows": n_clip, "windows_from": f.windows_from,
             "ambient_windows": len(A), "ambient_folds": len(set(f.folds)), "C": C, "gate": gate, "chunks": f.chunks,
             "layers": None if f.layers is None else list(f.layers), "confirm": confirm,
             "heads": "one" if reg.respond is None else {"negative": reg.negative, "respond": reg.respond},
             "floor_from": ("held-out folds, per namer class" if class_floors is not None
                            else "held-out folds" if held_floors is not None else "in-sample"),
             "floors_by_confirm": {str(k): v_ for k, v_ in chosen.items()},
             "in_sample_floors_by_confirm": {str(k): v_ for k, v_ in floors.items()},
             "floor": v.floor, "train_respond_windows_passing": float(clip[f.y == 1].mean()),
             "train_ignore_windows_passing": float(clip[f.y == 0].mean())}
    if class_floors is not None:
        stats["class_floors_by_confirm"] = {str(k): v_ for k, v_ in class_floors.items()}
        stats["held_out_strict_floors_by_confirm"] = {str(k): v_ for k, v_ in strict.items()}
    return v, stats


def sound_seconds(wave: np.ndarray, frame_s: float = 0.1, db: float = SOUND_DB) -> float:
    """How long a clip's sound lasts: the time its 100-ms frames stay within `db` of its loudest
    (a door knock 1.0 s, a siren 4.0 s over the training clips)."""
    n = max(1, int(round(frame_s * SAMPLE_RATE)))
    level = frame_levels_db(wave, n)
    return min(int(np.sum(level >= level.max() - db)) * n, len(wave)) / SAMPLE_RATE


def short_sound_confirm(items, classes: Sequence[str], floors_by_confirm: dict, confirm: int,
                        short_confirm: int, short_s: float = SHORT_SOUND_S,
                        class_floors_by_confirm: dict | None = None) -> tuple[list[int], list[float], dict]:
    """Per namer class, (decisions in a row, floor) for the second look (`Verifier.set_class_confirm`):
    `short_confirm` at its fitted floor for the classes whose train-split RESPOND clips in `items`
    last under `short_s` at the median (`sound_seconds`), `confirm` at its floor for the rest and for
    classes without clips. `floors_by_confirm`: a verifier fit's (`verify_fit` in the checkpoint);
    `class_floors_by_confirm`: its floors per class, when it made them (`fit_verifier`'s
    `class_probs`), then each class's own floor for its number of decisions."""
    from .bench.proactive import ClipLoader

    if not 1 <= short_confirm <= confirm:
        raise ValueError(f"short sounds are asked 1 to {confirm} decisions (the verifier's own), not {short_confirm}")
    floors = {int(k): float(v) for k, v in floors_by_confirm.items()}
    for n in (confirm, short_confirm):
        if n not in floors:
            raise ValueError(f"the verifier's fit has no floor for {n} decisions in a row (it has "
                             f"{sorted(floors)}): refit it with `soundflow trigger verify --confirm {n}`")
    load, seconds = ClipLoader(), {}
    for it in items:
        if it.decision == "RESPOND" and it.sound_class in classes and (w := load(it)) is not None:
            seconds.setdefault(it.sound_class, []).append(sound_seconds(w))
    median = {c: float(np.median(v)) for c, v in sorted(seconds.items())}
    short = [c for c in classes if median.get(c, np.inf) < short_s]
    rule = [short_confirm if c in short else confirm for c in classes]
    stats = {"confirm": confirm, "short_confirm": short_confirm, "short_s": short_s, "short_classes": short,
             "sound_seconds_median": {c: round(v, 2) for c, v in median.items()}}
    if class_floors_by_confirm:
        per = {int(k): [float(x) for x in v] for k, v in class_floors_by_confirm.items()}
        if any(len(per.get(n, ())) != len(classes) for n in (confirm, short_confirm)):
            raise ValueError(f"the verifier's per-class floors are not for these {len(classes)} classes "
                             f"and {sorted({confirm, short_confirm})} decisions: refit it (`soundflow trigger verify`)")
        return rule, [per[n][i] for i, n in enumerate(rule)], {**stats, "floors": "per class"}
    return rule, [floors[n] for n in rule], stats


def confirm_into_checkpoint(checkpoint, out, bench_manifest: str, short_confirm: int,
                            short_s: float | None = None) -> dict:
    """Write `checkpoint` to `out` with its second look asking `short_confirm` decisions in a row of
    the namer's short-sound classes (`short_sound_confirm`), at the floors its fit recorded: no tensor
    changes, no refit."""
    from pathlib import Path

    from .bench.common import load_manifest

    src, model = _with_trigger(checkpoint)
    trig = model.trigger
    fit = json.loads((Path(src) / "model.json").read_text())["trigger"].get("verify_fit") or {}
    if trig.verifier is None or "floors_by_confirm" not in fit:
        raise ValueError(f"{checkpoint}: its trigger has no fitted second look (`soundflow trigger verify`)")
    if not trig.classes:
        raise ValueError(f"{checkpoint}: its trigger has no namer (`soundflow trigger name`): no classes to ask fewer of")
    rule, floor, stats = short_sound_confirm(load_manifest(bench_manifest), trig.classes, fit["floors_by_confirm"],
                                             trig.verifier.confirm, int(short_confirm),
                                             SHORT_SOUND_S if short_s is None else float(short_s),
                                             fit.get("class_floors_by_confirm"))
    trig.verifier.set_class_confirm(rule, floor)
    stats["bench_manifest"] = str(bench_manifest)

    def meta_update(meta):  # the tensors and the calibration stand; only the second look's rule per class
        meta["trigger"] = {**meta["trigger"], "verifier": trig.verifier.config(), "confirm_fit": stats}

    _write_with_trigger(src, Path(out), trig, meta_update)
    return stats


def verify_into_checkpoint(checkpoint, out, bench_manifest: str, noise_manifest: str | None = None,
                           ambient_manifests: Sequence[str] = (), ambient_minutes: float = AMBIENT_MINUTES,
                           gate: float | None = None, chunks: int | None = None, depth: int | None = None,
                           C: float | None = None, confirm: int | None = None, seed: int = 0,
                           windows_from: str = "clips", ambient_folds: int = 1, features_cache: str | None = None,
                           class_floors: bool = False, heads: str | None = None, progress: bool = True) -> dict:
    """Fit the verifier of `checkpoint`'s trigger (`fit_verifier`) on the train-split clips of
    `bench_manifest` and `ambient_minutes` of training-side ambience from the noise library's
    training side and from each of `ambient_manifests`, and write the checkpoint with it to
    `out`. The trigger and its calibration are kept: the verifier only decides near the level
    the calibrated trigger fires at. `gate`, `chunks`, `depth`, `C`, `confirm`: default `trigger.VERIFY_*`.
    `windows_from`: "clips" (each clip's own windows, zero-padded in front) or "streams" (windows
    of the bench-style streams the trigger is fitted on, `bench_style_streams`). `ambient_folds`:
    1 (the floor in-sample) or 2 (each source's files in two halves, the floor cross-fitted;
    `ambient_minutes` of each source in all). `class_floors` (with two folds): a floor per namer
    class (`fit_verifier`'s `class_probs`). `features_cache`: a file keeping the encoded windows
    (~0.4 GB for the default inputs) for the next fit with the same inputs and the same frozen
    encoder (another checkpoint with it too), which then takes seconds. `heads`: "classes" (a
    regression over the sound classes of each side, `window_names`; default `trigger.VERIFY_HEADS`)
    or "one" (RESPOND against the rest); one features cache serves both."""
    import sys
    from pathlib import Path

    from .bench.ambient import ambient_stream
    from .bench.common import load_manifest

    src, model = _with_trigger(checkpoint)

    def say(msg):
        if progress:
            print(f"[trigger] {msg}", file=sys.stderr, flush=True)

    heads = VERIFY_HEADS if heads is None else heads
    if heads not in ("one", "classes"):
        raise ValueError(f"heads is 'one' or 'classes', got {heads!r}")
    if windows_from not in ("clips", "streams"):
        raise ValueError(f"windows_from is 'clips' or 'streams', got {windows_from!r}")
    if ambient_folds not in (1, 2):
        raise ValueError(f"ambient_folds is 1 (in-sample floor) or 2 (cross-fitted), got {ambient_folds}")
    if class_floors and ambient_folds != 2:
        raise ValueError("per-class floors are cross-fitted: they need --ambient-folds 2")
    if class_floors and (model.trigger.namer is None or len(model.trigger.classes) < 2):
        raise ValueError(f"{checkpoint}: per-class floors need the trigger's namer (`soundflow trigger name`)")
    chunks = VERIFY_CHUNKS if chunks is None else int(chunks)
    depth = VERIFY_DEPTH if depth is None else int(depth)
    # the windows are the frozen encoder's alone: any checkpoint with the same encoder reuses them
    key = {"encoder": encoder_fingerprint(model), "bench_manifest": str(bench_manifest), "noise_manifest": noise_manifest,
           "ambient_manifests": [str(m) for m in ambient_manifests], "ambient_minutes": ambient_minutes,
           "chunks": chunks, "depth": depth, "windows_from": windows_from, "ambient_folds": ambient_folds, "seed": seed,
           "files": [_fingerprint(p) for p in [bench_manifest, noise_manifest, *ambient_manifests] if p]}
    cached = _read_cache(features_cache, key)
    features = None if cached is None else cached["features"]
    waves, folds = [], []
    if features is None or class_floors:
        sides = [("train", None)] if ambient_folds == 1 else [("train-a", "dev"), ("train-b", "train")]
        minutes = ambient_minutes / len(sides)
        for k, (noise_side, extra_half) in enumerate(sides):
            if noise_manifest and ambient_minutes > 0:  # its dev side is `bench ambient`'s
                waves.append(ambient_stream(noise_manifest, minutes, seed=seed + 1 + 10 * k, split=noise_side)[0])
                folds.append(k)
            for j, path in enumerate(ambient_manifests):  # all training-side; folded by halves of its files
                if ambient_minutes > 0:
                    waves.append(ambient_stream(path, minutes, seed=seed + 2 + j + 10 * k, split=extra_half)[0])
                    folds.append(k)
    items, streams = None, None
    if features is None or heads == "classes":  # the windows' classes are read off the clips, not encoded
        items = load_manifest(bench_manifest)
        streams = bench_style_streams(items, noise_manifest, seed) if windows_from == "streams" else None
    if features is not None:
        say(f"encoded windows from {features_cache}")
    else:
        features = verifier_features(model, items, waves, chunks, depth, streams, folds)
        if features_cache:
            _write_cache(features_cache, key, features=features)
    names = None
    if heads == "classes":
        names = window_names(items, streams, chunk_samples(model.cfg.chunk_ms), features.chunks)
        if len(names) != len(features.y):
            raise ValueError(f"{len(names)} window classes for {len(features.y)} encoded windows (a stale features cache?)")
    probs = None
    if class_floors:
        say(f"the namer over {len(waves)} ambient waves")
        probs = [window_class_probs(model, w, features.chunks) for w in waves]
    gate = VERIFY_GATE if gate is None else float(gate)
    v, stats = fit_verifier(model, None, (), gate=gate, seed=seed, say=say, features=features,
                            C=VERIFY_C if C is None else float(C),
                            confirm=VERIFY_CONFIRM if confirm is None else int(confirm),
                            class_probs=probs, chunk_ms=model.cfg.chunk_ms, names=names)
    stats.update(bench_manifest=str(bench_manifest), noise_manifest=noise_manifest,
                 ambient_manifests=[str(m) for m in ambient_manifests], ambient_minutes=ambient_minutes)
    say(f"verifier fitted: floor {v.floor:.2f} ({stats['floor_from']}), gate {gate:g}")
    trig = model.trigger
    trig.verifier = v

    def meta_update(meta):  # the trigger and its calibration stand; the verifier decides near its level
        meta["trigger"] = {**meta["trigger"], "verifier": v.config(), "verify_fit": stats}

    _write_with_trigger(src, Path(out), trig, meta_update)
    return stats
