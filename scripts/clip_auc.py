"""Per-clip decision AUC on composed streams: for every foreground sound-event clip of a built
stream set, P(<response>) at its highest over the clip's chunks and the two after it (teacher
forced, fp32; the scoring `bench proactive` uses), ranked against the clip's RESPOND/IGNORE label.
On the dev build (held-out recording groups) this is the bench's AUC without the bench's
composition; on a training build it says how well the model fits what it was trained on
(BENCHMARKS.md, issue 10: why the decision does not learn).

    python scripts/clip_auc.py MODEL_DIR [DATA_DIR] [MAX_CHUNKS]
"""

import sys

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from soundflow.audio import SAMPLE_RATE
from soundflow.calibrate import WINDOW_CHUNKS, counted_chunk_range, stream_scores
from soundflow.data import read_shards
from soundflow.loading import load_model


def clip_scores(model, data: str, max_chunks: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """(labels, p_max) per clip."""
    g, p = [], []
    for s in read_shards(data):
        clips = [e for e in s.events if e.get("provenance", {}).get("type") == "clip" and e.get("role") == "foreground"]
        if not clips:
            continue
        c = s.chunk_ms * SAMPLE_RATE // 1000
        with torch.no_grad():
            pp = stream_scores(model, [s], max_chunks=max_chunks)[0][0]
        for e in clips:
            a = int(e["offset_s"] * SAMPLE_RATE)
            lo, hi = counted_chunk_range(a, a + int(e["length_s"] * SAMPLE_RATE), c, WINDOW_CHUNKS)
            if lo < len(pp):
                p.append(float(pp[lo:hi + 1].max()))
                g.append(e["provenance"]["decision"] == "RESPOND")
    return np.array(g), np.array(p)


def main() -> None:
    torch.set_num_threads(1)
    model = load_model(sys.argv[1]).eval()
    g, p = clip_scores(model, sys.argv[2] if len(sys.argv) > 2 else "runs/data/default-dev",
                       int(sys.argv[3]) if len(sys.argv) > 3 else 25)
    print(f"clips {len(g)} respond {int(g.sum())} AUC {roc_auc_score(g, p):.3f}")
    for t in (0.2, 0.3, 0.4):
        r, f = (p[g] >= t).mean(), (p[~g] >= t).mean()
        print(f"threshold {t}: recall {r:.3f} FPR {f:.3f} balanced {0.5 * (r + 1 - f):.3f}")


if __name__ == "__main__":
    main()
