"""Is the decision's information in the model? Linear probes (logistic regression) on (a) the
LM's final hidden state at each control position, (b) the adapter's output for that chunk and
(c) the encoder's (mean + max over the chunk's slots), trained per chunk on a training build and
scored per clip (highest score over the clip's chunks and the two after it) on a dev build.
TARGET=window (default): every chunk of a RESPOND clip vs every chunk of an IGNORE clip;
TARGET=reply: the model's own labels (<response> at the reply chunk only). BENCHMARKS.md, issue 10.

    TARGET=window python scripts/decision_probe.py MODEL_DIR TRAIN_DATA DEV_DATA [N_TRAIN]
"""
import os
import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from soundflow.calibrate import WINDOW_CHUNKS, counted_chunk_range
from soundflow.data import read_shards
from soundflow.loading import load_model
from soundflow.train import FeatureCache, collate

torch.set_num_threads(1)
m = load_model(sys.argv[1]).eval()
C = 6400

def feats(folder, n):
    fc = FeatureCache(m, 1)
    out = []  # per stream: (H (T,d), A (T,2d), E (T,2e), clips [(lo,hi,label)])
    for i, s in enumerate(read_shards(folder)):
        if i >= n: break
        clips = [e for e in s.events if e.get('provenance', {}).get('type') == 'clip' and e.get('role') == 'foreground']
        if not clips: continue
        with torch.no_grad():
            b = collate(m, [s], fc, 25)
            enc = b["enc"]
            a = m.adapt(enc)
            h = m.hidden(m.embed(b["input_ids"], b["audio_mask"], a))[0]
        y = b["y_stream"][0]
        pos = torch.nonzero(y != -100).flatten()
        H = h[pos - 1].numpy()
        T = len(pos)
        A = torch.cat([a.mean(1), a.amax(1)], -1)[:T].numpy()
        E = torch.cat([enc.mean(1), enc.amax(1)], -1)[:T].numpy()
        R = (y[pos] == m.tokenizer.response_id).numpy().astype(int)
        cl = []
        for e in clips:
            st = int(e['offset_s'] * 16000); en = st + int(e['length_s'] * 16000)
            lo, hi = counted_chunk_range(st, en, C, WINDOW_CHUNKS)
            hi = min(T - 1, hi)
            if lo < T: cl.append((lo, hi, int(e['provenance']['decision'] == 'RESPOND')))
        out.append((H, A, E, cl, R))
    return out

tr = feats(sys.argv[2], int(sys.argv[4]) if len(sys.argv) > 4 else 200)
dv = feats(sys.argv[3], 200)
print('train streams', len(tr), 'dev', len(dv), flush=True)
TARGET = os.environ.get('TARGET', 'window')
for k, name in enumerate(('hidden@control', 'adapter chunk', 'encoder chunk')):
    X, Y = [], []
    for st in tr:
        F = st[k]
        if TARGET == 'reply':  # the model's own target: <response> at the reply chunk, <silent> elsewhere
            X.append(F); Y += list(st[4]); continue
        for lo, hi, lab in st[3]:
            X.append(F[lo:hi + 1]); Y += [lab] * (hi + 1 - lo)
    X = np.concatenate(X); Y = np.array(Y)
    sc = StandardScaler().fit(X)
    clf = LogisticRegression(C=0.1, max_iter=2000, class_weight='balanced').fit(sc.transform(X), Y)
    g, p = [], []
    for st in dv:
        s = clf.decision_function(sc.transform(st[k]))
        for lo, hi, lab in st[3]:
            p.append(s[lo:hi + 1].max()); g.append(lab)
    print(name, X.shape, 'dev per-clip AUC', round(roc_auc_score(g, p), 3), flush=True)
