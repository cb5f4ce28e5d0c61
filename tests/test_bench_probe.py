"""`bench probe --features chunk`: a probe on the streaming model's own per-chunk encoder inputs."""

import json

import numpy as np
import soundfile as sf

from soundflow.bench.probe import ChunkEmbedder, run_probe


def _catalog(tmp_path, n=40):
    rng = np.random.default_rng(0)
    t = np.arange(int(1.6 * 16000)) / 16000
    rows = []
    for i in range(n):
        respond = i % 2 == 0  # RESPOND: a loud tone; IGNORE: soft noise
        w = 0.5 * np.sin(2 * np.pi * rng.uniform(600, 1200) * t) if respond else 0.02 * rng.standard_normal(len(t))
        sf.write(tmp_path / f"c{i}.wav", w.astype(np.float32), 16000)
        rows.append({"id": f"c{i}", "audio": f"c{i}.wav", "duration": 1.6, "caption": "x", "class": "tone" if respond else "hiss",
                     "category": "A/B", "decision": "RESPOND" if respond else "IGNORE", "group": f"g{i}"})
    (tmp_path / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "catalog.jsonl"


def test_chunk_embedder_pools_every_chunk_deterministically():
    emb = ChunkEmbedder("tiny")
    w = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1  # 2.5 chunks: padded to 3
    a, b = emb([w]), emb([w])
    assert a.shape[0] == 1 and a.shape[1] % 2 == 0 and np.array_equal(a, b)
    d = a.shape[1] // 2
    assert (a[0, d:] >= a[0, :d] - 1e-6).all()  # max-pool half never below the mean-pool half


def test_chunk_probe_separates_an_easy_catalog(tmp_path):
    r = run_probe(_catalog(tmp_path), features="chunk", model="tiny", progress=False)
    assert r["features"] == "chunk" and r["train_clips"] > 0 and r["dev"]["n"] > 0
    assert r["dev"]["balanced_accuracy"] >= 0.9 and r["dev"]["auc"] >= 0.9
