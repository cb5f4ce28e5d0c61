"""False replies per hour of ambient, speech-free audio: how often an always-on model speaks up
when nothing needs a reply.

The stream is one long session (as `listen` on an hour-long recording would be): a seeded sequence
of random crops from a noise manifest (rows whose `kind` is in `kinds`; rows that may hold speech,
`kind` "speech", are never used), joined with short crossfades, optionally with IGNORE clips from a
bench manifest laid over it. Every `<response>` is a false reply. Reported: false replies per hour,
the share of decision chunks that responded, the source under each reply, and decision latency
over the whole stream (flat latency over an hour is part of the claim).

    soundflow bench ambient NOISE_MANIFEST [--model mini|DIR] [--minutes 60] [--ignore-manifest M]
        [--split dev|train|all] [--threshold T] [--seed 0] [--trigger-only] [--out DIR] [--json]

`--trigger-only` replays the model's sound trigger alone (`common.trigger_replies`), exactly as a stream
serves it but with the LM's own decisions left out: the same trigger replies as the whole run, an
hour in about 3 minutes on one core instead of 15-30, for comparing trigger fits. No latency.

Only the held-out half of the noise library (`--split dev`, `catalog.noise_rows_of`) is played by
default: training beds and trigger negatives take the other half.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..catalog import noise_rows_of
from .common import SAMPLE_RATE, load_manifest, make_runner, read_jsonl, runner_name
from .proactive import ClipLoader, is_response, load_noise_rows
from .report import latency_stats, print_json, write_task_report

SEGMENT_S = (5.0, 30.0)  # crop length range of one ambient segment
XFADE_S = 0.25


@dataclass
class Segment:
    source: str
    start_s: float
    end_s: float


def ambient_stream(noise_manifest: str | Path, minutes: float, seed: int = 0, kinds: tuple[str, ...] = ("ambient", "event"),
                   ignore_items=(), ignore_every_s: float = 60.0, split: str | None = "dev") -> tuple[np.ndarray, list[Segment]]:
    """A `minutes`-long speech-free stream and what plays where, from `split`'s side of the noise
    library (`catalog.noise_rows_of`: "dev" by default, the files training never uses). IGNORE
    clips (bench items), when given, are laid over the bed about every `ignore_every_s` seconds at
    their own level."""
    rows = noise_rows_of([r for r in read_jsonl(noise_manifest) if r.get("kind", "ambient") in kinds], split)
    waves = [(sid, w) for sid, w in load_noise_rows(noise_manifest, rows) if len(w) >= SAMPLE_RATE]
    if not waves:
        raise ValueError(f"{noise_manifest}: no readable noise rows of kind {kinds} on split {split!r} "
                         "(a library of one file per kind has no held-out side: --split all plays every file)")
    rng = np.random.default_rng(seed)
    total = int(minutes * 60 * SAMPLE_RATE)
    fade = int(XFADE_S * SAMPLE_RATE)
    y = np.zeros(total + fade, np.float32)
    segs, pos = [], 0
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    while pos < total:
        sid, w = waves[int(rng.integers(len(waves)))]
        n = min(len(w), int(rng.uniform(*SEGMENT_S) * SAMPLE_RATE), total + fade - pos)
        off = int(rng.integers(0, len(w) - n + 1))
        piece = w[off : off + n].copy()
        if n > 2 * fade:
            piece[:fade] *= ramp
            piece[-fade:] *= ramp[::-1]
        y[pos : pos + n] += piece
        segs.append(Segment(str(sid), pos / SAMPLE_RATE, (pos + n) / SAMPLE_RATE))
        pos += max(n - fade, 1)
    y = y[:total]
    items, loader = list(ignore_items), ClipLoader()
    if items:
        t = ignore_every_s * rng.uniform(0.5, 1.0)
        while t * SAMPLE_RATE < total:
            it = items[int(rng.integers(len(items)))]
            w = loader(it)
            if w is None:  # unreadable: reported once by the loader
                t += ignore_every_s
                continue
            a = int(t * SAMPLE_RATE)
            w = w[: total - a]
            y[a : a + len(w)] += w
            segs.append(Segment(f"ignore:{it.id}", a / SAMPLE_RATE, (a + len(w)) / SAMPLE_RATE))
            t += ignore_every_s * rng.uniform(0.5, 1.5)
    np.clip(y, -1.0, 1.0, out=y)
    return y, segs


def _under(segs: list[Segment], t: float) -> list[str]:
    return [s.source for s in segs if s.start_s <= t < s.end_s]


def bench_ambient(noise_manifest: str | Path, model="mini", *, minutes: float = 60.0, threshold: float | None = None,
                  ignore_manifest: str | Path | None = None, seed: int = 0, chunk_ms: int = 400, split: str | None = "dev",
                  trigger_only: bool = False, trigger_cache: str | Path | None = None, out: str | Path | None = None,
                  json: bool = False, name: str = "") -> dict:
    runner = make_runner(model, threshold=threshold, chunk_ms=chunk_ms, trigger_only=trigger_only,
                         trigger_cache=trigger_cache)
    ignore = [it for it in load_manifest(ignore_manifest) if it.decision == "IGNORE"] if ignore_manifest else []
    wave, segs = ambient_stream(noise_manifest, minutes, seed=seed, ignore_items=ignore, split=split)
    t0 = time.perf_counter()
    results = runner(wave, chunk_ms)
    wall = time.perf_counter() - t0
    hours = len(wave) / SAMPLE_RATE / 3600
    replies = []
    for r in results:
        if is_response(r.decision):
            t = (r.chunk + 1) * chunk_ms / 1000
            replies.append({"chunk": r.chunk, "t": round(t, 1), "p_response": round(r.p_response, 3),
                            "under": _under(segs, t - chunk_ms / 2000), "text": r.text})
    lat = [r.latency_ms for r in results if r.latency_ms is not None]
    half = len(lat) // 2
    result = {
        "benchmark": "ambient",
        "name": name,
        "runner": runner_name(runner),
        "noise_manifest": str(noise_manifest),
        "ignore_manifest": str(ignore_manifest) if ignore_manifest else None,
        "config": {"minutes": minutes, "seed": seed, "chunk_ms": chunk_ms, "segment_s": SEGMENT_S, "split": split or "all",
                   "threshold": getattr(runner, "threshold", threshold)},
        "audio_h": round(hours, 3),
        "chunks": len(results),
        "false_replies": len(replies),
        "false_replies_per_hour": len(replies) / hours if hours else None,
        "response_chunk_rate": len(replies) / len(results) if results else None,
        "p_response": {"mean": float(np.mean([r.p_response for r in results])) if results else None,
                       "p99": float(np.percentile([r.p_response for r in results], 99)) if results else None},
        "latency_ms": latency_stats(lat),
        "latency_ms_first_half": latency_stats(lat[:half]),
        "latency_ms_second_half": latency_stats(lat[half:]),
        "wall_s": round(wall, 1),
        "replies": replies,
        "segments": len(segs),
    }
    if out:
        write_ambient_report(result, out)
    if json:
        print_json(result)
    return result


def write_ambient_report(result: dict, out: str | Path) -> Path:
    lines = [f"# False replies on ambient audio ({result['audio_h']} h)", "",
             f"- false replies: {result['false_replies']} ({result['false_replies_per_hour']:.2f} per hour)",
             f"- chunks that responded: {result['response_chunk_rate']:.4%}",
             f"- threshold: {result['config']['threshold']}", "",
             "| t (s) | P | under | reply |", "|---|---|---|---|"]
    for r in result["replies"][:50]:
        lines.append(f"| {r['t']} | {r['p_response']} | {', '.join(r['under'])} | {r['text'][:80]} |")
    return write_task_report(result, out, "\n".join(lines) + "\n")
