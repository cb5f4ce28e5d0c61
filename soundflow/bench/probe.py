"""The strong offline probe: logistic regression on mean + max pooled whole-clip Whisper-base
encoder features, trained on the catalog's train recording groups and scored on its dev groups.

It sees each clip whole and alone (no stream, no ambient lead-in, no timing), so it bounds what
a clip classifier on the same frozen encoder can do; the streaming model is compared with it on
the same dev clips. On real held-out clips such a probe lands near 0.91 balanced accuracy
(MODEL-NOTES), far above the trailing-window `classifier` baseline's ~0.72 in streaming.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .baselines import WhisperEmbedder, catalog_items
from .common import BenchItem


def _load(items: list[BenchItem]) -> tuple[list[BenchItem], list[np.ndarray]]:
    """The clips `bench proactive` would use: unreadable ones are skipped, as it skips them."""
    from .proactive import ClipLoader

    loader = ClipLoader()
    pairs = [(it, w) for it in items if (w := loader(it)) is not None]
    return [it for it, _ in pairs], [w for _, w in pairs]


def _balanced(y: np.ndarray, p: np.ndarray) -> dict:
    tp = int(((p == 1) & (y == 1)).sum())
    tn = int(((p == 0) & (y == 0)).sum())
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    tpr = tp / pos if pos else None
    tnr = tn / neg if neg else None
    bal = (tpr + tnr) / 2 if tpr is not None and tnr is not None else None
    return {"n": int(len(y)), "accuracy": float((p == y).mean()), "balanced_accuracy": bal,
            "recall": tpr, "specificity": tnr}


class ChunkEmbedder:
    """What the streaming model reads: each 400 ms chunk through its own frozen encoder (chunks
    encoded alone, `tokens.AUDIO_SLOTS` slots each), mean + max pooled over all slots of the
    clip. A probe on these bounds what the decision could learn from the model's own inputs."""

    def __init__(self, model: str = "mini"):
        from ..model import build_model

        self.model = build_model(model).eval()  # the encoder is frozen: untrained == trained here

    def __call__(self, waves: list[np.ndarray]) -> np.ndarray:
        import torch

        from ..data import split_chunks

        out = []
        for w in waves:
            with torch.inference_mode():
                e = self.model.encode_audio(self.model.features(torch.from_numpy(split_chunks(w, self.model.cfg.chunk_ms))))
            e = e.reshape(-1, e.shape[-1]).numpy()
            out.append(np.concatenate([e.mean(0), e.max(0)]))
        return np.stack(out)


PROBES = {"clip": "logreg(mean+max Whisper-base encoder, whole clip)",
          "chunk": "logreg(mean+max of the model's per-400 ms-chunk encoder slots)"}


def run_probe(catalog: str | Path, seed: int = 0, C: float = 0.1, progress: bool = True, features: str = "clip",
              model: str = "mini") -> dict:
    """Fit on train-split clips, report clip-level metrics (overall and per category) on dev clips.

    features: "clip" (whole-clip Whisper-base, the strong probe) or "chunk" (the `mini` model's
    own per-chunk encoder inputs; `model` names the backend whose encoder is used)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if features not in PROBES:
        raise ValueError(f"features must be one of {sorted(PROBES)}, got {features!r}")
    train, dev = catalog_items(catalog, split="train"), catalog_items(catalog, split="dev")
    emb = WhisperEmbedder(pool="mean+max") if features == "clip" else ChunkEmbedder(model)
    t0 = time.perf_counter()
    if progress:
        print(f"[probe] embedding {len(train)} train + {len(dev)} dev clips", file=sys.stderr)
    train, wtr = _load(train)
    dev, wdv = _load(dev)
    Xtr, Xdv = emb(wtr), emb(wdv)
    ytr = np.array([it.decision == "RESPOND" for it in train], dtype=int)
    ydv = np.array([it.decision == "RESPOND" for it in dev], dtype=int)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, class_weight="balanced", random_state=seed))
    clf.fit(Xtr, ytr)
    pred = clf.predict(Xdv)
    out = {"probe": PROBES[features], "features": features, "C": C,
           "train_clips": len(train), "dev": {**_balanced(ydv, pred), "auc": float(roc_auc_score(ydv, clf.predict_proba(Xdv)[:, 1]))},
           "train_fit": _balanced(ytr, clf.predict(Xtr)), "wall_s": round(time.perf_counter() - t0, 1)}
    per = {}
    for cat in sorted({it.category for it in dev}):
        idx = np.array([it.category == cat for it in dev])
        per[cat] = {"n": int(idx.sum()), "accuracy": float((pred[idx] == ydv[idx]).mean())}
    out["per_category"] = per
    out["per_clip"] = {it.id: int(p) for it, p in zip(dev, pred)}
    return out


def main_probe(catalog: str, out: str | None, seed: int = 0, C: float = 0.1, features: str = "clip") -> dict:
    res = run_probe(catalog, seed=seed, C=C, features=features)
    text = json.dumps(res, indent=2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    summary = {k: v for k, v in res.items() if k not in ("per_clip", "per_category")}
    print(json.dumps(summary, indent=2))
    return res
