"""`soundflow bench latency`: streaming-engine latency, stalls, long-stream stability, capacity.

All in ONE run, on real audio from the shared data folder (`soundflow.data.shared_data_dir()`:
speech digits, sound events, background noise stitched into one stream), FIFO vs sequential
side by side:

1. decision latency after a chunk's last sample (p50/p99) and stall rate at 1x real time, FIFO,
   listening only (goal <= 50 / 120 ms, 0 % stalls). A stall: the decision comes after the next
   chunk's arrival (latency > chunk period); chunks heard during a reply are counted apart.
2. replies forced every `reply_every` chunks (policy hook, `reply_tokens` tokens each) at 1x,
   FIFO vs sequential (and vs FIFO popping one chunk per decoder step, `drain=False`): resume
   latency (reply end → the decoder has decided the newest chunk available at that moment;
   paper: 4.5x), first-chunk latency (mean decision latency of the first chunk decided after
   each reply, from its arrival; paper 831 vs 392 ms = 2.12x), input stall rate (a chunk not
   encoded before the next one arrives: the input side fell behind, the paper's stall) and late
   decisions over all chunks (decided after the next chunk's arrival, as every chunk heard
   mid-reply is).
3. long stream faster than real time (chunks back to back, next fed once the previous is
   decided): per-chunk cost in the last minute / the first minute (goal <= 1.1) and RSS growth
   (goal flat), with the engine's default context policy on.
4. capacity: N concurrent real-time sessions (N = 1, 2, 4, 8, 12, 16...) for `cap_seconds` each;
   held if p99 latency < chunk period and no stall (goal >= 8); independent sessions
   ("capacity") and sessions sharing the batch workers ("capacity_batched", batching.py).

5. ragged (on request, `--parts ragged`): N sessions' decoder steps as N forwards vs one
   `hidden_ragged` forward, for a reply token and for an 11-token chunk step.

Part 2 sweeps the reply length (`reply_tokens`): the FIFO advantage is the backlog a reply
leaves (chunks heard while it was spoken), drained in one forward instead of one decision each.
"""

from __future__ import annotations

import json as _json
import os
import threading
import time

import numpy as np
import torch

from ..audio import SAMPLE_RATE


def real_stream(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech, events and noise from the shared data folder stitched (with short gaps) into one
    16 kHz stream; seeded noise when there is no shared data folder."""
    from ..audio import load_audio
    from ..data import shared_data_dir

    rng = np.random.default_rng(seed)
    data = shared_data_dir()
    files = []
    for manifest, key in (("speech/manifest.jsonl", "audio"), ("events/catalog.jsonl", "audio"),
                          ("noise/manifest.jsonl", "audio")):
        p = data / manifest if data is not None else None
        if p is not None and p.exists():
            rows = [_json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            files.append([p.parent / r[key] for r in rows])
    if not any(files):
        return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 0.05).astype(np.float32)
    parts, total, i = [], 0, 0
    need = int(seconds * SAMPLE_RATE)
    while total < need:
        group = files[i % len(files)]
        i += 1
        if not group:
            continue
        try:
            w = load_audio(group[int(rng.integers(len(group)))])
        except Exception:  # noqa: BLE001 — skip unreadable files
            continue
        w = w[: SAMPLE_RATE * 8]
        gap = np.zeros(int(rng.integers(1600, 8000)), np.float32)
        parts += [w, gap]
        total += len(w) + len(gap)
    return np.concatenate(parts)[:need]


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _pct(x, q):
    return float(np.percentile(x, q)) if len(x) else float("nan")


def _realtime_run(engine, chunks, chunk_s, **session_kw):
    """Feed chunks paced to the wall clock; collect events with receive times."""
    sess = engine.session(**session_kw)
    evs = []
    for ev in sess.run(chunks, realtime=True):
        ev["_recv"] = time.perf_counter()
        evs.append(ev)
    return evs, sess


def _analyse(evs, chunk_s):
    """Latency / stall / resume metrics from one run's events (replies marked by 'response')."""
    dec = {e["chunk"]: e for e in evs if e["type"] == "decision"}
    lat = [dec[k]["latency_ms"] for k in sorted(dec)]
    resp = [e for e in evs if e["type"] == "response"]
    # wall-clock arrival of chunk k = decision time - latency
    arrival = {k: d["_recv"] - d["latency_ms"] / 1000 for k, d in dec.items()}
    in_reply = set()
    resume, first = [], []
    for r in resp:
        start = dec[r["chunk"]]["_recv"]
        end = r["_recv"]
        heard = [k for k, a in arrival.items() if start < a <= end]
        in_reply.update(heard)
        avail = [k for k, a in arrival.items() if a <= end]
        newest = max(avail) if avail else None
        if newest is not None and newest > r["chunk"]:
            resume.append((dec[newest]["_recv"] - end) * 1000)
        after = [k for k in sorted(dec) if k > r["chunk"] and dec[k]["_recv"] > end]
        if after:
            first.append(dec[after[0]]["latency_ms"])
    stall_all = sum(x > chunk_s * 1000 for x in lat) / max(1, len(lat))
    # the paper's sense of a stall: the input side falls behind — a chunk not taken in (encoded)
    # before the next one arrives. FIFO's encoder never waits for the decoder; sequential's does.
    inp = [dec[k].get("input_ms", 0.0) for k in sorted(dec)]
    input_stall = sum(x > chunk_s * 1000 for x in inp) / max(1, len(inp))
    listen_lat = [dec[k]["latency_ms"] for k in sorted(dec) if k not in in_reply and not dec[k].get("drained")]
    stall_listen = sum(x > chunk_s * 1000 for x in listen_lat) / max(1, len(listen_lat))
    return {
        "chunks": len(lat),
        "latency_p50_ms": _pct(listen_lat, 50),
        "latency_p99_ms": _pct(listen_lat, 99),
        "latency_all_p50_ms": _pct(lat, 50),
        "latency_all_p99_ms": _pct(lat, 99),
        "stall_rate": stall_all,
        "stall_rate_listening": stall_listen,
        "input_stall_rate": input_stall,
        "input_p99_ms": _pct(inp, 99),
        "replies": len(resp),
        "chunks_heard_during_replies": len(in_reply),
        "resume_ms": float(np.mean(resume)) if resume else float("nan"),
        "first_chunk_ms": float(np.mean(first)) if first else float("nan"),
    }


def bench_latency(model="mini", seconds: float = 60.0, minutes: float = 60.0, json: bool = False,
                  quant: str | None = "auto", threads: int | None = None, reply_every: int = 20,
                  reply_tokens: tuple[int, ...] = (16, 48, 128), cap_seconds: float = 20.0, max_sessions: int = 16,
                  parts: str = "latency,fifo_vs_seq,long,capacity,capacity_batched", verbose: bool = True,
                  device: str | None = None) -> dict:
    from ..audio import iter_chunks
    from ..device import cpu_description
    from ..engine import Engine, EngineOptions
    from ..loading import load_model
    from ..model import AudioLM

    def log(*a):
        if verbose:
            print(*a, flush=True)

    m = model if isinstance(model, AudioLM) else load_model(str(model))
    name = m.cfg.backend if isinstance(model, AudioLM) else str(model)
    from ..optimize import apply_precision

    apply_precision(m, quant, device)
    base = EngineOptions(torch_threads=threads)
    Engine(m, base)  # applies the thread policy
    chunk_s = base.chunk_ms / 1000
    todo = set(parts.split(","))
    res: dict = {"model": name, "quant": m.info.optimized or "fp32", "device": str(m.device),
                 "torch_threads": torch.get_num_threads(),
                 "cpu_count": os.cpu_count(), "cpu": cpu_description(), "load_avg_start": os.getloadavg()[0]}
    # warm up (first forwards allocate)
    warm = real_stream(4.0, seed=9)
    list(Engine(m, EngineOptions(threshold=1.01, torch_threads=threads)).session().run(iter_chunks(warm)))

    if "latency" in todo:
        wave = real_stream(seconds, seed=1)
        eng = Engine(m, EngineOptions(threshold=1.01, torch_threads=threads))
        log(f"[1] {seconds:.0f} s real audio at 1x, FIFO, listening ...")
        evs, _ = _realtime_run(eng, list(iter_chunks(wave)), chunk_s)
        a = _analyse(evs, chunk_s)
        res["realtime"] = {k: a[k] for k in ("chunks", "latency_p50_ms", "latency_p99_ms", "stall_rate")}

    if "fifo_vs_seq" in todo:
        wave = real_stream(seconds, seed=2)
        chunks = list(iter_chunks(wave))
        pol = lambda k, p: k % reply_every == reply_every // 2  # noqa: E731
        # the ratio grows with the backlog a reply leaves, i.e. with the reply's length: sweep it
        sweep = {}
        for n_tok in reply_tokens:
            row = {}
            for variant, kw in (("fifo", {}), ("pop_one", {"drain": False}), ("sequential", {"mode": "sequential"})):
                eng = Engine(m, EngineOptions(policy=pol, max_reply_tokens=n_tok, torch_threads=threads, **kw))
                log(f"[2] {seconds:.0f} s at 1x, {variant}, a {n_tok}-token reply every {reply_every} chunks ...")
                evs, _ = _realtime_run(eng, chunks, chunk_s)
                row[variant] = _analyse(evs, chunk_s)
            f = row["fifo"]
            for base in ("sequential", "pop_one"):
                b = row[base]
                sfx = "" if base == "sequential" else "_vs_pop_one"
                row["resume_speedup" + sfx] = b["resume_ms"] / f["resume_ms"] if f["resume_ms"] > 0 else float("nan")
                row["first_chunk_speedup" + sfx] = (b["first_chunk_ms"] / f["first_chunk_ms"]
                                                    if f["first_chunk_ms"] > 0 else float("nan"))
            sweep[n_tok] = row
        res["fifo_vs_sequential_by_reply_tokens"] = sweep
        base_n = 48 if 48 in sweep else reply_tokens[0]
        res["fifo_vs_sequential"] = {k: sweep[base_n][k] for k in ("fifo", "pop_one", "sequential")}
        res["fifo_vs_sequential"]["reply_tokens"] = base_n
        res["resume_speedup"] = sweep[base_n]["resume_speedup"]
        res["first_chunk_speedup"] = sweep[base_n]["first_chunk_speedup"]

    if "long" in todo:
        n = int(minutes * 60 / chunk_s)
        per_min = int(60 / chunk_s)
        wave = real_stream(min(minutes * 60, 300), seed=3)  # 5 min of real audio, looped
        src = list(iter_chunks(wave))
        eng = Engine(m, EngineOptions(threshold=1.01, policy=lambda k, p: k % 50 == 25, max_reply_tokens=8,
                                      torch_threads=threads))
        sess = eng.session()
        log(f"[3] {minutes:g} min of audio back to back (context window {base.max_context_chunks} chunks) ...")
        costs, rss, cache = [], [_rss_mb()], []
        t0 = time.perf_counter()
        for k in range(n):
            t = time.perf_counter()
            sess.feed(src[k % len(src)])
            sess.wait_idle()
            costs.append((time.perf_counter() - t) * 1000)
            while sess.get_event(timeout=0) is not None:
                pass
            if (k + 1) % per_min == 0:
                rss.append(_rss_mb())
                cache.append(sess.cache_len)
                if verbose and (k + 1) % (per_min * 5) == 0:
                    log(f"    minute {(k + 1) // per_min}: {np.mean(costs[-per_min:]):.0f} ms/chunk, "
                        f"RSS {rss[-1]:.0f} MB, cache {cache[-1]}")
        sess.close()
        mins = [costs[i:i + per_min] for i in range(0, len(costs), per_min)]
        res["long"] = {
            "minutes": minutes, "wall_s": time.perf_counter() - t0,
            "cost_min1_ms": float(np.mean(mins[0])), "cost_last_ms": float(np.mean(mins[-1])),
            "cost_ratio_last_over_first": float(np.mean(mins[-1]) / np.mean(mins[0])),
            "rss_start_mb": rss[0], "rss_end_mb": rss[-1], "rss_growth_mb": rss[-1] - rss[1 if len(rss) > 1 else 0],
            "cache_len_max": max(cache) if cache else sess.cache_len, "rebuilds": sess.stats["rebuilds"],
        }

    if "ragged" in todo:
        log("[5] one ragged forward for N sessions vs N separate forwards ...")
        res["ragged"] = _ragged_speed(m)

    for part, batch in (("capacity", False), ("capacity_batched", True)):
        if part in todo:
            res[part] = _capacity(m, threads, cap_seconds, max_sessions, chunk_s, batch, log)

    res["load_avg_end"] = os.getloadavg()[0]

    _print_table(res)
    if json:
        print(_json.dumps(_clean(res)))
    return res


def _ragged_speed(m, sessions=(1, 4, 8, 16), context_chunks: int = 60, reps: int = 5) -> dict:
    """Where batching pays: N sessions' steps (1 reply token, or one 11-token chunk step each,
    onto ~`context_chunks` chunks of cache) as N forwards vs one `hidden_ragged` forward."""
    from .. import decoding
    from ..cache import truncate_cache

    if not m.supports_ragged:
        return {}
    d = m.body.config.hidden_size
    g = torch.Generator().manual_seed(0)
    states = []
    for _ in range(max(sessions)):
        st = decoding.start(m, "Tell me what you hear.")
        for _ in range(context_chunks):
            decoding.feed_audio(m, st, torch.randn(1, m.cfg.audio_slots, d, generator=g) * 0.1)
            decoding.decide(m, st, 0.0)
        states.append(st)

    def timed(fn):
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps * 1000

    out = {}
    with torch.inference_mode():
        for n in sessions:
            sts = states[:n]
            for L, kind in ((1, "reply_token"), (m.cfg.audio_slots + 1, "chunk_step")):
                embs = [torch.randn(L, d, generator=g) * 0.1 for _ in sts]
                lens = [s.cache.get_seq_length() for s in sts]

                def undo():
                    for s, n0 in zip(sts, lens):
                        truncate_cache(s.cache, n0)

                def separate():
                    for s, e in zip(sts, embs):
                        m.hidden_last(e, s.cache, s.pos)
                    undo()

                def ragged():
                    m.hidden_ragged([(e, s.cache, s.pos) for s, e in zip(sts, embs)])
                    undo()

                a, b = timed(separate), timed(ragged)
                out[f"{kind}_x{n}"] = {"separate_ms": a, "ragged_ms": b, "speedup": a / b}
    return out


def _capacity(m, threads, cap_seconds, max_sessions, chunk_s, batch, log) -> dict:
    """How many concurrent real-time sessions hold (p99 latency < chunk period, no stall)."""
    from ..audio import iter_chunks
    from ..engine import Engine, EngineOptions

    chunks = list(iter_chunks(real_stream(cap_seconds, seed=4)))
    held, tried = 0, {}
    for ns in [n for n in (1, 2, 4, 6, 8, 12, 16, 20, 24, 32) if n <= max_sessions]:
        eng = Engine(m, EngineOptions(threshold=1.01, torch_threads=threads, batch=batch))
        outs: list = [None] * ns

        def one(i):
            # connections start at random moments: spread the sessions over one chunk period
            time.sleep(i * chunk_s / ns)
            outs[i] = _analyse(_realtime_run(eng, chunks, chunk_s)[0], chunk_s)

        log(f"[4] {ns} concurrent real-time sessions for {cap_seconds:.0f} s{' (batched)' if batch else ''} ...")
        th = [threading.Thread(target=one, args=(i,)) for i in range(ns)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        row = {"p50_ms": float(np.median([o["latency_all_p50_ms"] for o in outs])),
               "p99_ms": max(o["latency_all_p99_ms"] for o in outs),
               "stall_rate": float(np.mean([o["stall_rate"] for o in outs]))}
        if batch:
            row["mean_batch"] = eng.batcher.stats["decoder"]["requests"] / max(1, eng.batcher.stats["decoder"]["batches"])
            eng.close()
        tried[ns] = row
        if row["p99_ms"] < chunk_s * 1000 and row["stall_rate"] == 0:
            held = ns
        else:
            break
    return {"sessions_held": held, "tried": tried}


def _clean(x):
    """NaN → null, numpy → Python, so the JSON line is strict JSON."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _cpu_line(cpu: dict | None) -> str:
    if not cpu:
        return "cpu unknown"
    return f"{cpu['model']}, {cpu['torch_capability']}, " + ("+".join(cpu["isa"]) or "no AVX2")


def _print_table(r: dict) -> None:
    print(f"\nlatency bench — model {r['model']} ({r['quant']}), torch threads {r['torch_threads']}, "
          f"{r['cpu_count']} CPUs ({_cpu_line(r.get('cpu'))}), load avg {r['load_avg_start']:.1f}→{r.get('load_avg_end', 0):.1f}")
    rows = []
    if "realtime" in r:
        a = r["realtime"]
        rows += [("decision latency p50 / p99 (1x, FIFO)", f"{a['latency_p50_ms']:.0f} / {a['latency_p99_ms']:.0f} ms", "≤ 50 / 120 ms"),
                 ("stall rate (1x, FIFO, listening)", f"{a['stall_rate'] * 100:.1f} %", "0 %")]
    for n, row in r.get("fifo_vs_sequential_by_reply_tokens", {}).items():
        f, s, p1 = row["fifo"], row["sequential"], row["pop_one"]
        rows += [(f"{n}-token replies: resume after a reply  FIFO | seq", f"{f['resume_ms']:.0f} | {s['resume_ms']:.0f} ms  ({row['resume_speedup']:.2f}x)", "paper 4.5x"),
                 (f"{n}-token replies: resume  FIFO | pop-one-at-a-time", f"{f['resume_ms']:.0f} | {p1['resume_ms']:.0f} ms  ({row['resume_speedup_vs_pop_one']:.2f}x)", ""),
                 (f"{n}-token replies: first-chunk latency   FIFO | seq", f"{f['first_chunk_ms']:.0f} | {s['first_chunk_ms']:.0f} ms  ({row['first_chunk_speedup']:.2f}x)", "paper 2.12x"),
                 (f"{n}-token replies: input stall rate      FIFO | seq", f"{f['input_stall_rate'] * 100:.1f} | {s['input_stall_rate'] * 100:.1f} %", "paper 0 | 5.2 %"),
                 (f"{n}-token replies: late decisions        FIFO | seq", f"{f['stall_rate'] * 100:.1f} | {s['stall_rate'] * 100:.1f} %", ""),
                 (f"{n}-token replies: chunks heard per reply", f"{f['chunks_heard_during_replies'] / max(1, f['replies']):.1f}", "")]
    if "long" in r:
        a = r["long"]
        rows += [(f"per-chunk cost minute {a['minutes']:g} / minute 1", f"{a['cost_last_ms']:.0f} / {a['cost_min1_ms']:.0f} ms = {a['cost_ratio_last_over_first']:.2f}", "≤ 1.1"),
                 (f"RSS growth over {a['minutes']:g} min (after min 1)", f"{a['rss_growth_mb']:+.0f} MB (end {a['rss_end_mb']:.0f} MB)", "flat")]
    if "capacity" in r:
        rows += [("real-time sessions held, independent", str(r["capacity"]["sessions_held"]), "≥ 8")]
    if "capacity_batched" in r:
        rows += [("real-time sessions held, batched", str(r["capacity_batched"]["sessions_held"]), "≥ 8")]
    for k, v in r.get("ragged", {}).items():
        rows += [(f"{k}: N forwards | one ragged", f"{v['separate_ms']:.1f} | {v['ragged_ms']:.1f} ms ({v['speedup']:.2f}x)", "")]
    w = max(len(a) for a, _, _ in rows) if rows else 10
    for a, b, c in rows:
        print(f"  {a:<{w}}  {b:<34}" + (f" goal {c}" if c else ""))
