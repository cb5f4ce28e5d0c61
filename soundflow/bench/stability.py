"""Long-stream stability: proactive accuracy as the stream grows from 1 to `max_segments` clips.

The paper keeps > 91 % of its single-segment Proactive-Sound-Bench accuracy with 5 segments in
one stream. Here, for every length L = 1..max_segments, the manifest's clips (one seeded order,
the same for every L) are cut into consecutive groups of L and each group becomes one stream,
built exactly like the *multi* tier of `proactive.py` (ambient lead-in, clips over an ambient bed,
ambient gaps uniform in `gap_s` but never shorter than the scoring window, same scoring rule).
When the clip count is not a multiple of L, the last stream is filled up to L with clips from the
start of the order whose events are *not* scored, so every clip is scored exactly once per length
and every stream of length L really holds L clips: accuracies across lengths are over the same
events. The curve reports accuracy (and balanced accuracy, recall, FPR) per length, its ratio
to length 1, and accuracy by position inside the stream.

    soundflow bench stability MANIFEST [--model mini|DIR] [--baseline silent|respond|classifier]
        [--max-segments 5] [--window 2] [--out DIR] [--json]
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from .common import SAMPLE_RATE, BenchItem, load_manifest, make_runner, runner_name
from .proactive import Ambient, ClipLoader, StreamConfig, compose_stream, compute_metrics, score_stream
from .report import latency_stats, num, pct, print_json, progress_bar, pyplot, write_task_report

PAPER_RETENTION = 0.91


def stability_groups(n: int, length: int, order: Sequence[int]) -> list[tuple[list[int], int]]:
    """Groups of `length` indices over `order`, and how many leading members are scored.

    The last group is padded cyclically from the start of `order` (unscored)."""
    out = []
    for start in range(0, n, length):
        real = list(order[start : start + length])
        pad = [order[(start + len(real) + j) % n] for j in range(length - len(real))]
        out.append((real + pad, len(real)))
    return out


def bench_stability(
    manifest: str | Path | Sequence[BenchItem],
    runner,
    max_segments: int = 5,
    *,
    seed: int = 0,
    window_chunks: int = 2,
    config: StreamConfig | None = None,
    ids: set[str] | None = None,
    out: str | Path | None = None,
    json: bool = False,
    progress: bool = True,
    name: str = "",
) -> dict:
    """Proactive accuracy per stream length 1..max_segments (`runner`: a Runner, or a model
    name / folder / AudioLM run through `make_runner`).

    Returns {"curve": [{"segments", "n", "accuracy", "ratio_to_1", ...}], "retention_at_max",
    "meets_paper_retention", "by_position", "latency_ms", "events": [...]}."""
    runner = make_runner(runner)
    cfg = config or StreamConfig()
    cfg.window_chunks = window_chunks
    items = list(manifest) if not isinstance(manifest, (str, Path)) else load_manifest(manifest)
    if ids is not None:
        items = [it for it in items if it.id in ids]
    loader = ClipLoader()
    clips = [(it, w) for it in items if (w := loader(it)) is not None]
    n = len(clips)
    order = np.random.default_rng(seed).permutation(n).tolist()
    lo = max(int(cfg.gap_s[0] * SAMPLE_RATE), cfg.min_gap_samples)
    hi = max(int(cfg.gap_s[1] * SAMPLE_RATE), lo)
    curve, events, latencies = [], [], []
    by_position: dict[int, list[dict]] = {}
    for L in range(1, max_segments + 1):
        rng = np.random.default_rng([seed, L])
        ambient = Ambient(cfg, rng)
        records, pos_acc, audio_s = [], defaultdict(lambda: [0, 0]), 0.0
        groups = stability_groups(n, L, order) if n else []
        for gi, (idx, n_scored) in enumerate(progress_bar(groups, f"stability/{L}", progress)):
            parts = [clips[i] for i in idx]
            gaps = [int(rng.integers(lo, hi + 1)) for _ in range(len(parts) - 1)]
            stream = compose_stream(parts, gaps, cfg, ambient, f"len{L}-{gi:04d}", f"len{L}")
            results = runner(stream.wave, cfg.chunk_ms)
            latencies += [r.latency_ms for r in results if r.latency_ms is not None]
            audio_s += stream.duration
            for p, rec in enumerate(score_stream(stream, results, cfg)[:n_scored]):
                records.append(rec)
                pos_acc[p][0] += 1
                pos_acc[p][1] += rec.correct
                events.append({**asdict(rec), "segments": L, "position": p})
        m = compute_metrics(records)
        curve.append({"segments": L, "n": m["n"], "streams": len(groups), "accuracy": m["accuracy"],
                      "balanced_accuracy": m["balanced_accuracy"], "respond_recall": m["respond_recall"],
                      "false_positive_rate": m["false_positive_rate"], "confusion": m["confusion"],
                      "mean_stream_s": round(audio_s / len(groups), 2) if groups else None})
        by_position[L] = [{"position": p + 1, "n": a, "accuracy": c / a} for p, (a, c) in sorted(pos_acc.items())]
    base = curve[0]["accuracy"] if curve else None
    for c in curve:
        c["ratio_to_1"] = c["accuracy"] / base if base and c["accuracy"] is not None else None
    last = curve[-1]["ratio_to_1"] if curve else None
    result = {
        "benchmark": "stability",
        "name": name,
        "runner": runner_name(runner),
        "manifest": str(manifest) if isinstance(manifest, (str, Path)) else "",
        "config": {**asdict(cfg), "seed": seed, "max_segments": max_segments},
        "n_clips": n,
        "curve": curve,
        "retention_at_max": last,
        "paper_retention": PAPER_RETENTION,
        "meets_paper_retention": (last > PAPER_RETENTION) if last is not None else None,
        "by_position": by_position,
        "latency_ms": latency_stats(latencies),
        "skipped": loader.skipped,
        "events": events,
    }
    if out:
        write_stability_report(result, out, latencies)
    if json:
        print_json(result)
    return result


def plot_stability(result: dict, path: str | Path) -> None:
    plt = pyplot()
    curve = result["curve"]
    x = [c["segments"] for c in curve]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(x, [100 * (c["accuracy"] or 0) for c in curve], "o-", label="accuracy %")
    ax.plot(x, [100 * (c["balanced_accuracy"] or 0) for c in curve], "s--", label="balanced accuracy %")
    ax.plot(x, [100 * (c["ratio_to_1"] or 0) for c in curve], "^-", label="% of 1-segment accuracy")
    ax.axhline(100 * PAPER_RETENTION, color="gray", ls=":", lw=1, label="paper: 91 % retained")
    ax.set_xticks(x)
    ax.set_xlabel("segments per stream")
    ax.set_ylim(0, 105)
    ax.set_title("Long-stream stability (Proactive-Sound-Bench)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_stability_report(result: dict, out: str | Path, latencies: Sequence[float] | None = None) -> Path:
    md = [f"# Long-stream stability{' — ' + result['name'] if result.get('name') else ''}", "",
          f"Runner: {result['runner']}  ", f"Manifest: `{result['manifest']}` ({result['n_clips']} clips)", "",
          "| segments | events | streams | mean stream s | accuracy % | balanced % | recall % | FPR % | × 1-segment |",
          "|---|---|---|---|---|---|---|---|---|"]
    for c in result["curve"]:
        md.append(f"| {c['segments']} | {c['n']} | {c['streams']} | {c['mean_stream_s']} | {pct(c['accuracy'])} "
                  f"| {pct(c['balanced_accuracy'])} | {pct(c['respond_recall'])} | {pct(c['false_positive_rate'])} "
                  f"| {num(c['ratio_to_1'], 3)} |")
    md += ["", f"Retention at {len(result['curve'])} segments: {num(result['retention_at_max'], 3)} "
           f"(paper: > {PAPER_RETENTION})", "", "Accuracy % by position in the stream:", "",
           "| segments | " + " | ".join(f"pos {p}" for p in range(1, len(result["curve"]) + 1)) + " |",
           "|---|" + "---|" * len(result["curve"])]
    for L, rows in result["by_position"].items():
        cells = [f"{pct(r['accuracy'])} ({r['n']})" for r in rows]
        md.append(f"| {L} | " + " | ".join(cells + ["–"] * (len(result["curve"]) - len(cells))) + " |")
    result = {**result, "items": result.get("events", [])}
    return write_task_report(result, out, "\n".join(md) + "\n",
                             {"stability.png": lambda p: plot_stability(result, p)}, latencies=latencies)
