"""Data-construction speed: TFJP (Alg. 1) and composition (Alg. 3) in x real time per core.

Runs on real clips from the shared data folder (`soundflow.data.shared_data_dir()`: events,
noise), single-threaded (threadpoolctl caps
BLAS/OpenMP at one thread; the STFTs are single-threaded scipy.fft). x real time per core =
seconds of audio processed / CPU seconds of this process; wall-clock figures are reported too
(they drop when other processes share the cores). Goals (issue): TFJP >= 1000x, compose >= 300x.

    soundflow bench data [--seconds 300] [--repeats 3] [--json]
"""

from __future__ import annotations

import json as _json
import os
import time
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE

GOALS = {"tfjp_x_rt": 1000.0, "compose_x_rt": 300.0}


def _load_clips(folder: Path, manifest: str, seconds: float, rng: np.random.Generator) -> list[np.ndarray]:
    from ..audio import load_audio

    rows = [_json.loads(line) for line in (folder / manifest).read_text().splitlines() if line.strip()]
    rng.shuffle(rows)
    clips, total = [], 0.0
    for r in rows:
        x = load_audio(folder / r["audio"])
        clips.append(x)
        total += len(x) / SAMPLE_RATE
        if total >= seconds:
            break
    return clips


def _timed(fn) -> tuple[float, float]:
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def bench_data_speed(seconds: float = 300.0, json: bool = False, repeats: int = 3, seed: int = 0) -> dict:
    """Measure TFJP and composition speed on `seconds` of real event audio (best of `repeats`)."""
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(1)
    except ImportError:  # env variables only work before numpy starts its pools: best effort
        os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        limiter = None
    from ..audio import load_audio
    from ..compose import Event, compose
    from ..data import shared_data_dir
    from ..tfjp import tfjp

    data = shared_data_dir()
    if data is None:
        raise FileNotFoundError("no shared data folder (set SOUNDFLOW_DATA): the data-speed bench runs on real clips")
    rng = np.random.default_rng(seed)
    clips = _load_clips(data / "events", "catalog.jsonl", seconds, rng)
    noise_rows = [_json.loads(line) for line in (data / "noise" / "manifest.jsonl").read_text().splitlines() if line.strip()]
    noise = {k: [load_audio(data / "noise" / r["audio"]) for r in noise_rows if r["kind"] == k][:8] for k in ("event", "ambient")}
    audio_s = sum(len(x) for x in clips) / SAMPLE_RATE

    tfjp(clips[0])  # warm-up (scipy.fft plans, imports)
    t_cpu, t_wall = min(_timed(lambda: [tfjp(x) for x in clips]) for _ in range(repeats))
    processed = [tfjp(x) for x in clips]

    # Streams of 6 foreground + 1 background + 1 ambient clips (already TFJP'd, as in the pipeline).
    def streams(pre):
        out = []
        for i in range(0, len(pre) - 7, 8):
            evs = [Event(w, response="ok" if j % 2 else None) for j, w in enumerate(pre[i : i + 6])]
            evs += [Event(pre[i + 6], role="background"), Event(pre[i + 7], role="ambient")]
            out.append(evs)
        return out

    scenes = streams(processed)
    out_s = []

    def run_compose(tf=None):
        r = np.random.default_rng(seed + 2)
        out_s.clear()
        for evs in scenes:
            y, _, _ = compose(evs, noise["event"], noise["ambient"], r, tfjp=tf)
            out_s.append(len(y) / SAMPLE_RATE)

    run_compose()
    c_cpu, c_wall = min(_timed(run_compose) for _ in range(repeats))
    stream_s = sum(out_s)
    # Alg. 3 as written re-applies TFJP at every clip: the whole composition pass, TFJP included.
    raw_scenes = scenes
    scenes = streams(clips)
    ct_cpu, ct_wall = min(_timed(lambda: run_compose(tfjp)) for _ in range(repeats))
    stream_t = sum(out_s)
    scenes = raw_scenes
    if limiter is not None:
        limiter.restore_original_limits()

    res = {
        "audio_s": round(audio_s, 1),
        "clips": len(clips),
        "tfjp_x_rt": round(audio_s / t_cpu, 1),
        "tfjp_x_rt_wall": round(audio_s / t_wall, 1),
        "streams": len(scenes),
        "stream_s": round(stream_s, 1),
        "compose_x_rt": round(stream_s / c_cpu, 1),
        "compose_x_rt_wall": round(stream_s / c_wall, 1),
        "compose_with_tfjp_x_rt": round(stream_t / ct_cpu, 1),
        "compose_with_tfjp_x_rt_wall": round(stream_t / ct_wall, 1),
        "threads": 1,
        "goals": GOALS,
        "meets_goals": audio_s / t_cpu >= GOALS["tfjp_x_rt"] and stream_s / c_cpu >= GOALS["compose_x_rt"],
    }
    if json:
        print(_json.dumps(res))
    return res
