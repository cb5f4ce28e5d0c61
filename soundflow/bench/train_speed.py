"""Training-step cost per freeze mode: one optimizer step's time, tokens/s and peak memory.

Each mode runs in its own process so its peak RSS is its own. The stream is real audio (FSDD
speech from `../shared/data`, tiled to the stream length) with a reply every 20 chunks, run
through exactly the code `soundflow train` uses (collate → StreamingObjective → AdamW step).

    soundflow bench train --model mini --chunks 60 --steps 3 --modes lm,lora,adapter --json
"""

from __future__ import annotations

import json as _json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODES = {"lm": ["adapter", "lm"], "lora": ["adapter", "lora"], "adapter": ["adapter"], "head": ["head"]}


def _stream(chunks: int):
    from ..audio import load_audio
    from ..data import StreamSample, read_jsonl, shared_data_dir

    DATA = shared_data_dir() or Path("/nonexistent")
    need = chunks * 6400
    rows = read_jsonl(DATA / "speech" / "manifest.jsonl") if (DATA / "speech").exists() else []
    parts, n = [], 0
    for r in rows:
        w = load_audio(DATA / "speech" / r["audio"])
        parts.append(w)
        n += len(w)
        if n >= need:
            break
    if not parts:  # no shared data: a noise stream (timing does not depend on content)
        parts = [0.05 * np.random.default_rng(0).standard_normal(need).astype(np.float32)]
    wave = np.resize(np.concatenate(parts), need).astype(np.float32)
    timeline = [{"chunk": k, "text": "I heard someone counting digits."} for k in range(19, chunks, 20)]
    return StreamSample(id="bench", wave=wave, timeline=timeline)


def _run_mode(model: str, mode: str, chunks: int, steps: int) -> dict:
    import torch

    from ..checkpoint import inject_lora
    from ..model import ModelConfig, build_model
    from ..train import FeatureCache, StreamingObjective, collate, set_trainable

    m = build_model(ModelConfig(backend=model))
    if mode == "lora":
        inject_lora(m, {"r": 8, "alpha": 16})
    set_trainable(m, MODES[mode])
    n_train = sum(p.numel() for p in m.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5, betas=(0.9, 0.95))
    obj = StreamingObjective(m, 1.0)
    feats = FeatureCache(m, 4)
    sample = _stream(chunks)
    batch = collate(m, [sample], feats, chunks)  # encoder features cached, as in training
    times = []
    for _ in range(steps + 1):  # the first step warms up allocator and kernels: not counted
        t = time.perf_counter()
        out = obj(batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in m.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    step = float(np.median(times[1:]))
    tokens = int(batch["attention_mask"].sum())
    return {"mode": mode, "trainable_params": n_train, "tokens": tokens, "step_s": step,
            "tokens_per_s": tokens / step, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads()}


def bench_train(model: str = "mini", chunks: int = 60, steps: int = 3, modes=("lm", "lora", "adapter"),
                json: bool = False) -> dict:
    rows = []
    for mode in modes:
        code = (f"import json; from soundflow.bench.train_speed import _run_mode; "
                f"print(json.dumps(_run_mode({model!r}, {mode!r}, {chunks}, {steps})))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"mode {mode} failed:\n{r.stderr[-3000:]}")
        rows.append(_json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"{mode:8s} {rows[-1]['step_s']:7.2f} s/step  {rows[-1]['tokens_per_s']:7.1f} tok/s  "
              f"peak {rows[-1]['peak_rss_mb']:7.0f} MB  trainable {rows[-1]['trainable_params'] / 1e6:6.1f} M",
              file=sys.stderr)
    res = {"model": model, "chunks": chunks, "steps": steps, "modes": rows}
    if json:
        print(_json.dumps(res))
    return res
