"""Baseline runners for Proactive-Sound-Bench: always silent, always respond, and a frozen-encoder
clip classifier (logistic regression on mean-pooled Whisper-base encoder outputs).

"Always respond" emits `<response>` at every chunk, so under the harness's scoring rule every
event is responded to at its first overlapping chunk: recall = FPR = 1, accuracy = RESPOND share.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..weights import whisper_base_ct2_dir
from .common import SAMPLE_RATE, BenchItem, ChunkResult

REPLY = "I heard a sound that may need your attention. Is everything all right?"


def _n_chunks(wave: np.ndarray, chunk_ms: int) -> int:
    n = SAMPLE_RATE * chunk_ms // 1000
    return -(-len(wave) // n)


def silent_runner(wave: np.ndarray, chunk_ms: int = 400) -> list[ChunkResult]:
    """Never responds."""
    return [ChunkResult(k, "silent", 0.0, "") for k in range(_n_chunks(wave, chunk_ms))]


def respond_runner(wave: np.ndarray, chunk_ms: int = 400) -> list[ChunkResult]:
    """Responds at every chunk (so at the first chunk of every event)."""
    return [ChunkResult(k, "response", 1.0, REPLY) for k in range(_n_chunks(wave, chunk_ms))]


# ---------------------------------------------------------------- Whisper-base encoder (CTranslate2)
# (the weights folder: `soundflow.weights.whisper_base_ct2_dir`, the one the streaming encoder uses)


class WhisperEmbedder:
    """Pooled Whisper-base encoder output of a short waveform, via CTranslate2: the mean (512-d),
    or mean and max concatenated (1024-d, `pool="mean+max"`, the whole-clip probe's features).

    CTranslate2 encodes inputs shorter than 30 s directly (positions from 0), so a 2 s window
    costs ~15 ms on 2 cores instead of a padded 30 s pass.
    """

    def __init__(self, model_dir: str | Path | None = None, compute_type: str = "int8", threads: int = 0, pool: str = "mean"):
        import ctranslate2

        if pool not in ("mean", "mean+max"):
            raise ValueError(f"pool must be 'mean' or 'mean+max', not {pool!r}")
        self.pool = pool
        from faster_whisper.feature_extractor import FeatureExtractor

        self.model = ctranslate2.models.Whisper(
            str(model_dir or whisper_base_ct2_dir()), device="cpu", compute_type=compute_type,
            intra_threads=threads or min(4, os.cpu_count() or 1),
        )
        self.fe = FeatureExtractor(feature_size=80)

    def __call__(self, waves: Sequence[np.ndarray], batch: int = 16) -> np.ndarray:
        import ctranslate2

        out = np.zeros((len(waves), 512 * (2 if self.pool == "mean+max" else 1)), dtype=np.float32)
        by_len: dict[int, list[int]] = {}
        for i, w in enumerate(waves):
            by_len.setdefault(len(w), []).append(i)
        for _n, idx in by_len.items():
            for b in range(0, len(idx), batch):
                ii = idx[b : b + batch]
                mel = np.stack([self.fe(np.asarray(waves[i], dtype=np.float32), padding=0) for i in ii])
                mel = mel[..., : mel.shape[-1] // 2 * 2].astype(np.float32)  # even frame count for the stride-2 conv
                enc = np.array(self.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel))))
                pooled = [enc.mean(axis=1)] + ([enc.max(axis=1)] if self.pool == "mean+max" else [])
                out[ii] = np.concatenate(pooled, axis=1)
        return out


# ---------------------------------------------------------------- catalog helpers


def catalog_items(catalog: str | Path, split: str | None = None, dev_fraction: float = 0.2) -> list[BenchItem]:
    """BenchItems straight from a clip catalog (`decision`, `category` "Macro/Meso", `audio`)."""
    from .proactive import labelled_catalog_rows

    catalog = Path(catalog)
    rows = labelled_catalog_rows(catalog, split, dev_fraction)
    items = []
    for r in rows:
        macro, _, meso = str(r.get("category", "Unknown/Unknown")).partition("/")
        items.append(BenchItem(r["id"], (catalog.parent / r["audio"]).resolve(), r.get("caption", ""), str(r["decision"]).upper(), macro, meso or "Unknown"))
    return items


# ---------------------------------------------------------------- classifier baseline


@dataclass
class ClassifierRunner:
    """Responds when P(RESPOND) of the trailing window reaches `threshold`, at most once per
    `refractory_chunks` (a sustained alarm would otherwise fire at every chunk)."""

    clf: object  # fitted sklearn pipeline with predict_proba
    window_s: float = 2.0
    threshold: float = 0.5
    refractory_chunks: int = 5
    embedder: WhisperEmbedder | None = field(default=None, repr=False)
    reply: str = REPLY

    def windows(self, wave: np.ndarray, chunk_ms: int) -> list[np.ndarray]:
        n = SAMPLE_RATE * chunk_ms // 1000
        w = int(self.window_s * SAMPLE_RATE)
        return [wave[max(0, (k + 1) * n - w) : (k + 1) * n] for k in range(_n_chunks(wave, chunk_ms))]

    def __call__(self, wave: np.ndarray, chunk_ms: int = 400) -> list[ChunkResult]:
        self.embedder = self.embedder or WhisperEmbedder()
        wins = self.windows(wave, chunk_ms)
        t0 = time.perf_counter()
        p = self.clf.predict_proba(self.embedder(wins))[:, 1]
        per_chunk_ms = 1000 * (time.perf_counter() - t0) / max(1, len(wins))
        out, last = [], -(10**9)
        for k, pk in enumerate(p):
            fire = pk >= self.threshold and k - last >= self.refractory_chunks
            if fire:
                last = k
            out.append(ChunkResult(k, "response" if fire else "silent", float(pk), self.reply if fire else "", per_chunk_ms))
        return out

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:
            pickle.dump({"clf": self.clf, "window_s": self.window_s, "threshold": self.threshold, "refractory_chunks": self.refractory_chunks}, f)

    @classmethod
    def load(cls, path: str | Path) -> "ClassifierRunner":
        with open(path, "rb") as f:
            return cls(**pickle.load(f))


def training_windows(items: Sequence[BenchItem], window_s: float = 2.0, hop_chunks: int = 2, seed: int = 0, chunk_ms: int = 400, min_overlap_s: float = 0.4):
    """Trailing windows over single-tier streams of `items`, labelled 1 when they overlap a
    RESPOND event by ≥ min_overlap_s (or the whole event, if shorter): the runner's own inputs."""
    from .proactive import StreamConfig, build_single_streams

    cfg = StreamConfig(chunk_ms=chunk_ms)
    n, w = cfg.chunk_samples, int(window_s * SAMPLE_RATE)
    wins, labels = [], []
    for s in build_single_streams(items, cfg, seed):
        ev = s.events[0]
        need = min(int(min_overlap_s * SAMPLE_RATE), ev.end_sample - ev.start_sample)
        for k in range(0, _n_chunks(s.wave, chunk_ms), hop_chunks):
            hi = (k + 1) * n
            lo = max(0, hi - w)
            ov = max(0, min(hi, ev.end_sample) - max(lo, ev.start_sample))
            wins.append(s.wave[lo:hi])
            labels.append(int(ev.item.decision == "RESPOND" and ov >= need))
    return wins, np.array(labels)


def train_classifier(items: Sequence[BenchItem], window_s: float = 2.0, seed: int = 0, embedder: WhisperEmbedder | None = None, progress: bool = True) -> ClassifierRunner:
    """Fit logistic regression on mean-pooled encoder features of training windows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    embedder = embedder or WhisperEmbedder()
    wins, y = training_windows(items, window_s, seed=seed)
    if progress:
        print(f"[bench] classifier: embedding {len(wins)} training windows from {len(items)} clips", file=sys.stderr)
    X = embedder(wins)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced"))
    clf.fit(X, y)
    return ClassifierRunner(clf, window_s=window_s, embedder=embedder)


def make_baseline(name: str, catalog: str | Path | None = None, cache: str | Path | None = None, seed: int = 0, **kw):
    """`silent` | `respond` | `classifier` → a runner. The classifier trains on the catalog's
    train split (by `group`), or loads `cache` when it exists (and saves there after training)."""
    if name == "silent":
        return silent_runner
    if name == "respond":
        return respond_runner
    if name == "classifier":
        if cache and Path(cache).exists():
            return ClassifierRunner.load(cache)
        if catalog is None:
            raise ValueError("the classifier baseline needs --catalog (clip catalog JSONL) to train on")
        runner = train_classifier(catalog_items(catalog, split="train"), seed=seed, **kw)
        if cache:
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            runner.save(cache)
        return runner
    raise ValueError(f"unknown baseline {name!r}: silent, respond or classifier")
