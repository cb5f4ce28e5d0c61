"""Decision threshold calibration on held-out streams.

The model's decision is P(<response>) (renormalised over the two control tokens, see
`AudioLM.control_probs`). Like VideoLLM-online's threshold on its stay-silent token, a threshold
picked on held-out data trades missed replies against false triggers. Scores are read
teacher-forced — one forward per stream, exactly the training sequence of Alg. 2 — and the
threshold maximising event-level balanced accuracy (reply recall and streams free of false
replies; `--objective chunks`: per-chunk balanced accuracy) is written into the checkpoint's `model.json`, where
`listen`, `serve` and the engine pick it up as their default.

    soundflow calibrate runs/x/model DATA [--max-chunks 60]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .dataspec import load_streams


@torch.inference_mode()
def control_scores(model, samples, max_chunks: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(P(<response>) at every chunk's control position, 1 where the label is <response>)."""
    ps, ys = stream_scores(model, samples, max_chunks)
    return np.concatenate(ps), np.concatenate(ys)


@torch.inference_mode()
def stream_scores(model, samples, max_chunks: int = 60) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`control_scores` kept per stream: one (P, label) pair of arrays per sample; with a sound
    trigger, P is the decision the engine thresholds (`trigger.combine`, as `decoding.feed_audio`)."""
    from .trigger import combine

    parts = stream_parts(model, samples, max_chunks)
    if parts["trigger"] is None:
        return parts["lm"], parts["y"]
    return [combine(a, b) for a, b in zip(parts["lm"], parts["trigger"])], parts["y"]


@torch.inference_mode()
def stream_parts(model, samples, max_chunks: int = 60) -> dict:
    """Per stream, teacher forced: "lm" P(<response>) from the control tokens at every chunk,
    "trigger" the sound trigger's P (None without one; its evidence built as a live stream builds
    it, emptied at each gold reply), "y" 1 where the label is <response>."""
    from .train import FeatureCache, collate
    from .trigger import chunk_summary, holding_off, pooled_stream

    feats = FeatureCache(model, 1)
    tok = model.tokenizer
    out: dict = {"lm": [], "trigger": [] if model.trigger is not None else None, "y": [],
                 "trigger_class": [] if model.trigger is not None and model.trigger.namer is not None else None}
    stepped = (model.info.optimized or "fp32") != "fp32"
    for s in samples:
        b = collate(model, [s], feats, max_chunks)
        x = model.embed(b["input_ids"], b["audio_mask"], model.adapt(b["enc"]))
        y = b["y_stream"][0]
        pos = torch.nonzero(y != -100).flatten()
        h = stepped_hidden(model, x, pos - 1) if stepped else model.hidden(x)[0]
        labels = (y[pos] == tok.response_id).numpy().astype(int)
        out["lm"].append(model.control_probs(h[pos - 1]).numpy())  # the state before the control token
        out["y"].append(labels)
        if model.trigger is not None:
            resets = np.flatnonzero(labels).tolist()
            ev = pooled_stream(chunk_summary(feats(s, max_chunks)), resets, model.trigger.windows)[: len(pos)]
            # the trigger's own replies, had it answered: the gold replies to RESPOND sounds; the
            # hold-off after them is emulated, the wait to re-arm (trigger.TriggerState.score) is not
            own = [r for r in resets if any(lo <= r <= hi for lo, hi, respond in clip_ranges(s) if respond)]
            p = model.trigger.prob(ev).masked_fill(holding_off(len(ev), own, model.trigger.holdoff), 0.0)
            out["trigger"].append(p.numpy())
            if out["trigger_class"] is not None:  # the namer's class at each chunk (class floors)
                out["trigger_class"].append(model.trigger.named_class(ev).numpy())
    return out


def stepped_hidden(model, x: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Hidden states of (1, L, d) embeddings fed as a stream feeds them: one forward per decision,
    each ending at a position in `ends` (the state before a control token), onto a KV cache.
    Equal to one forward in exact arithmetic; it matters for int8, whose activation scale is set
    per forward: over a whole stream it is not what the engine's chunk-sized steps see."""
    cache, out, a = model.new_cache(), [], 0
    for e in [*ends.tolist(), x.shape[1] - 1]:
        if e < a:
            continue
        p = torch.arange(a, e + 1).unsqueeze(0)
        out.append(model.hidden(x[:, a:e + 1], cache=cache, position_ids=p)[0])
        a = e + 1
    return torch.cat(out)


def counted_chunk_range(start_sample: int, end_sample: int, chunk_samples: int, window_chunks: int) -> tuple[int, int]:
    """Inclusive chunk range [first, last] in which a response counts for event [start, end)
    (`bench proactive`'s scoring)."""
    first = start_sample // chunk_samples  # smallest k with (k+1)*c > start
    last_overlap = -(-end_sample // chunk_samples) - 1  # last k with k*c < end
    return first, last_overlap + window_chunks


def clip_ranges(sample, window: int | None = None, classes: bool = False) -> list[tuple]:
    """(first, last counted chunk, RESPOND?) of every foreground sound-event clip of a stream;
    with `classes`, each clip's class ("" when unknown) as a fourth item."""
    from .audio import SAMPLE_RATE

    window = WINDOW_CHUNKS if window is None else window
    c = sample.chunk_ms * SAMPLE_RATE // 1000
    out = []
    for e in sample.events:
        prov = e.get("provenance", {})
        if prov.get("type") != "clip" or e.get("role") != "foreground" or prov.get("decision") not in ("RESPOND", "IGNORE"):
            continue
        a = int(e["offset_s"] * SAMPLE_RATE)
        lo, hi = counted_chunk_range(a, a + int(e["length_s"] * SAMPLE_RATE), c, window)
        out.append((lo, hi, prov["decision"] == "RESPOND") + ((str(prov.get("class") or ""),) if classes else ()))
    return out


def clip_scores(samples, ps: list[np.ndarray], window: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(True for a RESPOND clip, P at its highest over the clip's counted chunks) for every
    foreground sound-event clip of the streams: what `bench proactive` scores per clip."""
    g, best = [], []
    for s, p in zip(samples, ps):
        for lo, hi, respond in clip_ranges(s, window):
            if lo < len(p):
                g.append(respond)
                best.append(float(p[lo: hi + 1].max()))
    return np.array(g, dtype=bool), np.array(best)


def best_threshold_clips(g: np.ndarray, p: np.ndarray) -> tuple[float, dict]:
    """Threshold maximising per-clip balanced accuracy (RESPOND clips answered, IGNORE clips not)."""
    if not g.any() or g.all():
        raise ValueError("held-out data needs RESPOND and IGNORE sound-event clips to calibrate the trigger")
    best = (-1.0, 0.5)
    for t in np.unique(p):
        bacc = 0.5 * ((p[g] >= t).mean() + (p[~g] < t).mean())
        if bacc > best[0] + 1e-12:
            best = (float(bacc), float(t))
    return best[1], {"objective": "clips", **_clip_stats(g, p, best[1])}


def _clip_stats(g: np.ndarray, p: np.ndarray, t: float) -> dict:
    return {"balanced_acc": float(0.5 * ((p[g] >= t).mean() + (p[~g] < t).mean())),
            "respond_recall": float((p[g] >= t).mean()), "ignore_fpr": float((p[~g] >= t).mean()),
            "n_clips": int(len(g)), "n_respond": int(g.sum())}


WINDOW_CHUNKS = 2  # a reply within 2 chunks of its gold chunk counts (as `bench proactive` scores it)


def event_outcomes(ps: list[np.ndarray], ys: list[np.ndarray], t: float, window: int = WINDOW_CHUNKS):
    """(hits per gold reply, clean per stream) at threshold t. A gold reply is hit when P ≥ t at
    some chunk within `window` of it; a stream is clean when P < t at every chunk farther than
    `window` from all its gold replies — for a stream of an ignorable sound, no false reply."""
    hits, clean = [], []
    for p, y in zip(ps, ys):
        gold = np.flatnonzero(y)
        near = np.zeros(len(p), dtype=bool)
        for g in gold:
            near[max(0, g - window): g + window + 1] = True
            hits.append(bool((p[max(0, g - window): g + window + 1] >= t).any()))
        clean.append(not (p[~near] >= t).any())
    return np.array(hits, dtype=bool), np.array(clean, dtype=bool)


def best_threshold_events(ps: list[np.ndarray], ys: list[np.ndarray], window: int = WINDOW_CHUNKS) -> tuple[float, dict]:
    """Threshold maximising event-level balanced accuracy: the mean of reply recall and the share
    of streams without a false reply. Streaming decides at every chunk, so a chunk-level
    objective lets a 2 % per-chunk false-alarm rate through, which over a 25-chunk stream is a
    false reply in 40 % of streams; this objective counts what the user sees."""
    if not any(y.any() for y in ys):
        raise ValueError("held-out data needs streams with replies to calibrate")
    allp = np.concatenate(ps)
    cands = np.unique(np.concatenate([np.quantile(allp, np.linspace(0, 1, 401)), [0.5]]))
    best = (-1.0, 0.5)
    for t in cands:
        hits, clean = event_outcomes(ps, ys, float(t), window)
        bacc = 0.5 * (hits.mean() + clean.mean())
        if bacc > best[0] + 1e-12:
            best = (float(bacc), float(t))
    hits, clean = event_outcomes(ps, ys, best[1], window)
    h5, c5 = event_outcomes(ps, ys, 0.5, window)
    return best[1], {"objective": "events", "balanced_acc": best[0], "reply_recall": float(hits.mean()),
                     "clean_streams": float(clean.mean()), "n_replies": int(len(hits)), "n_streams": len(ps),
                     "n_chunks": int(sum(len(p) for p in ps)), "n_respond": int(sum(int(y.sum()) for y in ys)),
                     "window_chunks": window, "balanced_acc_at_0.5": float(0.5 * (h5.mean() + c5.mean()))}


def best_threshold(p: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    """Threshold maximising balanced accuracy (mean of respond and silent recall)."""
    if y.min() == y.max():
        raise ValueError("held-out data needs both <response> and <silent> chunks to calibrate")
    cands = np.unique(np.concatenate([p, [0.5]]))
    best = (-1.0, 0.5)
    for t in cands:
        pred = p >= t
        bacc = 0.5 * (pred[y == 1].mean() + (~pred[y == 0]).mean())
        if bacc > best[0] + 1e-12 or (abs(bacc - best[0]) <= 1e-12 and abs(t - 0.5) < abs(best[1] - 0.5)):
            best = (float(bacc), float(t))
    pred = p >= best[1]
    return best[1], {"balanced_acc": best[0], "respond_recall": float(pred[y == 1].mean()),
                     "silent_recall": float((~pred[y == 0]).mean()), "n_chunks": int(len(y)),
                     "n_respond": int(y.sum()), "balanced_acc_at_0.5": float(
                         0.5 * ((p >= 0.5)[y == 1].mean() + (p < 0.5)[y == 0].mean()))}


def calibrate(checkpoint: str | Path, data: str, max_chunks: int = 60, write: bool = True,
              objective: str = "events", quant: str | None = "auto") -> dict:
    """The threshold for `checkpoint` on held-out `data`, scored at the precision it is served at
    (`quant`, as `listen` / `serve` / the benches apply it: int8 moves P(response), see optimize.py)."""
    from .checkpoint import resolve_dir
    from .loading import load_model
    from .optimize import apply_precision, resolve_quant

    model = load_model(str(checkpoint))
    quant = resolve_quant(model, quant)  # "auto": where it was calibrated before, else fp32
    apply_precision(model, quant)
    if objective not in ("events", "chunks"):
        raise ValueError(f"objective must be events or chunks, not {objective!r}")
    samples = load_streams(data)
    if model.trigger is not None:
        model.trigger.offset, model.trigger.class_offsets = 0.0, None  # calibrate the trigger as fitted
    parts = stream_parts(model, samples, max_chunks)
    ps, ys = parts["lm"], parts["y"]  # the threshold: the LM's own decisions, as without a trigger
    if objective == "events":
        thr, stats = best_threshold_events(ps, ys)
    else:
        thr, stats = best_threshold(np.concatenate(ps), np.concatenate(ys))
    res = {"threshold": thr, **stats, "data": data, "quant": quant or "fp32"}
    if parts["trigger"] is not None:
        res["trigger"] = calibrate_trigger(samples, parts, thr, model.trigger.floor, model.trigger.class_floors)
    folder = resolve_dir(Path(checkpoint))
    if write and folder is not None:
        meta = json.loads((folder / "model.json").read_text())
        meta["calibration"] = res
        tmp = folder / "model.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(folder / "model.json")
    return res


def calibrate_trigger(samples, parts: dict, threshold: float, floor: float | None = None,
                      class_floors: Sequence[float] | None = None) -> dict:
    """The sound trigger's own threshold t on per-clip balanced accuracy (what `bench proactive`
    scores), raised to its fitted `floor` (a logit: the ambient false-reply budget,
    `trigger_fit.ambient_floor`) when that is higher, folded into an `offset` on its logit so that
    at the model's one `threshold` it fires exactly when its P ≥ t: the decision
    max(P_LM, P_trigger) ≥ threshold is then "the LM's calibrated decision, or the trigger's".
    With `class_floors` (one per namer class, `parts["trigger_class"]` the namer's class at each
    chunk) each class gets its own t_c = max(t, its floor) and `class_offsets` the same way.
    Also the figures at t on `samples`, and the combined decision's (with the class offsets)."""
    from .trigger import combine, logit_of

    g, p = clip_scores(samples, parts["trigger"])
    t_bal, stats_bal = best_threshold_clips(g, p)
    t = t_bal if floor is None else max(t_bal, float(1 / (1 + np.exp(-floor))))
    stats = {**stats_bal, **_clip_stats(g, p, t), "balanced_threshold": t_bal, "floor": floor}
    offset = logit_of(threshold) - logit_of(t)
    per_class = None
    if class_floors is not None and parts.get("trigger_class") is not None:
        t_c = [max(t_bal, float(1 / (1 + np.exp(-f)))) for f in class_floors]
        per_class = np.array([logit_of(threshold) - logit_of(x) for x in t_c])
        stats.update(class_thresholds=t_c)
    offsets = ([per_class[c] for c in parts["trigger_class"]] if per_class is not None
               else [offset] * len(parts["trigger"]))
    shift = [1 / (1 + np.exp(-(np.log(np.clip(q, 1e-6, 1 - 1e-6) / np.clip(1 - q, 1e-6, 1))) - o))
             for q, o in zip(parts["trigger"], offsets)]
    both = [combine(a, b) for a, b in zip(parts["lm"], shift)]
    hits, clean = event_outcomes(both, parts["y"], threshold)
    gc, pc = clip_scores(samples, both)
    return {"threshold": t, "offset": offset, **stats,
            **({"class_offsets": per_class.tolist()} if per_class is not None else {}),
            "combined": {"reply_recall": float(hits.mean()) if len(hits) else None, "clean_streams": float(clean.mean()),
                         "clip_balanced_acc": float(0.5 * ((pc[gc] >= threshold).mean() + (pc[~gc] < threshold).mean()))}}


def default_threshold(model, fallback: float = 0.5) -> float:
    """The calibrated threshold stored with a checkpoint, else `fallback`."""
    return float((model.info.calibration or {}).get("threshold", fallback))
