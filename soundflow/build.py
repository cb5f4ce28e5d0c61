"""`soundflow data build RECIPE --out DIR [--ray ADDRESS|local]`: stream samples → tar shards;
`soundflow data bank RECIPE --out DIR`: the recipe's speech rendered and gated ahead (`make_bank`,
speechbank.py), which a build with `--bank` / `tts.bank` draws from.

Recipe (YAML):

    seed: 0
    samples: 60                 # total stream samples
    samples_per_shard: 10
    max_chunks: 60              # L_max (24 s at 400 ms)
    chunk_ms: 400
    sources:                    # manifests; paths are relative to the recipe's folder or absolute,
      events: ${SOUNDFLOW_DATA:-../../../shared/data}/events/catalog.jsonl   # with $VAR / ${VAR:-default}
      noise:  ...               # expansion (the default after ":-" is used when VAR is unset/empty)
      music:  ...
      speech: ...               # FSDD-style {"id", "audio", "text", "speaker"}
      parallel: ...             # optional, {"src", "tgt": {"fr": ..., "es": ...}}; default: shipped sample
      chats: ...                # optional, {"user", "reply"}; default: shipped templates
      sentences: ...            # optional, one a line (# comments); default: shipped sentences_en.txt (WordNet)
      prompts: asterisk         # Debian's Asterisk prompts beside FSDD when installed ("" = none)
    tasks: {asr: 1, translation: 1, chat: 1, understanding: 1, music: 0.5, proactive: 2, agent: 1}
    mixins: {history: 0.3, silence: 0.4, proactive: 0.3}
    tts: {families: [kokoro, piper, espeak], weights: [0.6, 0.3, 0.1], gate: true, threshold: 0.10, retries: 2,
          holdout: [kokoro:af_sky, kokoro:bm_lewis],  # voices drawn only when split: dev (never in train)
          augment: {speed: 0.2, reverb: 0.2, telephone: 0.1, level: 0.3},  # P(effect) per speaker
          asr_gate_unit: sentence,  # real-time ASR gates whole sentences ("group": each word group, slow)
          gate_across: true,        # gate a shard's instances together (false: one instance at a time)
          bank: ../runs/bank/NAME}  # speech from a speech bank (speechbank.py; `data build --bank` overrides)
    tfjp: true
    event_augment: {speed: 0.3, reverb: 0.3, eq: 0.5, level: 0.5}  # P(effect) per event clip (after its crop)
    reply_after_s: [1.2, 2.4]   # a RESPOND sound is answered after U(a, b) s of it (Alg. 3's d_i), or at
                                # its end if shorter; absent: at the end of the clip, as the paper
    instruction_dropout: 0.5    # P(no instruction) for always-on families (replies follow from the audio)
    instruction_audio: 0.3      # P(an instructed stream's instruction is spoken by its TTS voice, before
                                # the stream: the paper's A^ins; ASR-gated; default 0: all text)
    curate: false               # proactive family through curate.curate_stream (else catalog rows)
    curate_embedder: minilm     # catalog retrieval for curation: minilm or hash (HashEmbedder, instant)

Output: `shard-00000.tar` ... each holding `<id>.flac` + `<id>.json` per sample (the stream-sample
format of docs/formats.md, read back by `data.read_shards`), `shard-00000.stats.json` beside each, and
`summary.json` (xrt_per_core: audio seconds / shard wall seconds; xrt_per_cpu_s: audio seconds /
shard CPU seconds, the steadier figure on a shared machine; both include the per-process model
loads). A shard is written to `.tmp` then renamed, so a finished `.tar` is always whole;
a rerun skips finished shards and rebuilds any partial one (resumable after kill -9). Slot j of
shard i draws from `numpy.random.default_rng([seed, i, j])` (its task, then its instances until
one passes the ASR gate), so the corpus is the same whatever the order, the worker count, or the
backend (process pool or Ray).

ASR gate across instances (`tts.gate_across: true`, the default): a shard renders the speech of
all its slots first, then gates their units together, packed into full 30 s Whisper windows
(every window costs a full 30 s encoder pass, however little speech it holds), then re-renders
only the failing units (R = 2, else the whole instance is dropped and the slot draws again).
A unit that fails in a packed window is re-checked alone and only that verdict counts; a pass in
a packed window is accepted (Whisper hears neighbours as context: the gate can be a little more
lenient than solo checks, never stricter). summary.json counts drops per task/TTS family
(`dropped_by`) and the gate's Whisper windows (`gate.windows`).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE

MAX_ATTEMPTS = 20  # draws per sample slot before the shard gives up (Dropped / nothing fits)


class RecipeError(ValueError):
    """A recipe its sources cannot satisfy: a user error, reported in one line by the CLI."""


def load_data_recipe(path: str | Path) -> dict:
    """A data recipe (YAML, above) as a dict with its defaults filled; `train.load_recipe` reads
    training recipes."""
    import yaml

    path = Path(path)
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    cfg.setdefault("seed", 0)
    cfg.setdefault("samples", 10)
    cfg.setdefault("samples_per_shard", 10)
    cfg.setdefault("max_chunks", 60)
    cfg.setdefault("chunk_ms", 400)
    cfg.setdefault("sources", {})
    cfg.setdefault("tasks", {"proactive": 1})
    cfg.setdefault("tts", {"families": ["piper"], "gate": True})
    cfg["_base"] = str(path.resolve().parent)
    from .tasks import FAMILIES

    ra = cfg.get("reply_after_s")
    if ra is not None and not (isinstance(ra, (list, tuple)) and len(ra) == 2 and 0 < float(ra[0]) <= float(ra[1])):
        raise RecipeError(f"{path}: reply_after_s must be [a, b] seconds with 0 < a <= b, not {ra!r}")
    from .augment import Augment

    try:  # here, not in a worker: a typo is one line, not a traceback
        Augment.from_config(cfg.get("event_augment"), "event_augment")
        Augment.from_config((cfg.get("tts") or {}).get("augment"))
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{path}: {e}") from None
    unknown = set(cfg["tasks"]) - set(FAMILIES)
    if unknown:
        raise ValueError(f"{path}: unknown tasks {sorted(unknown)} (known: {', '.join(FAMILIES)})")
    return cfg


_RES_CACHE: dict = {}


def _resources(cfg: dict):
    """Per-process `Resources` (manifests read once per worker; models cached in soundflow.tts and
    soundflow.asr_gate)."""
    from . import asr_gate
    from .augment import Augment
    from .tasks import MIXIN_P, Resources

    key = json.dumps({k: v for k, v in cfg.items() if k not in ("samples",)}, sort_keys=True, default=str)
    if key not in _RES_CACHE:
        t = cfg.get("tts") or {}
        gate = asr_gate.AsrGate(float(t.get("threshold", asr_gate.WER_THRESHOLD)), int(t.get("retries", asr_gate.RETRIES))) \
            if t.get("gate", True) and t.get("families") else None
        _RES_CACHE[key] = Resources.from_config(
            cfg["sources"], cfg["_base"], tts_families=tuple(t.get("families") or ()),
            tts_weights=tuple(t["weights"]) if t.get("weights") else None, gate=gate,
            tts_holdout=tuple(t.get("holdout") or ()), augment=Augment.from_config(t.get("augment")),
            event_augment=Augment.from_config(cfg.get("event_augment"), "event_augment"),
            reply_after_s=tuple(float(v) for v in cfg["reply_after_s"]) if cfg.get("reply_after_s") else None,
            mixins={**MIXIN_P, **(cfg.get("mixins") or {})},
            max_chunks=int(cfg["max_chunks"]), chunk_ms=int(cfg["chunk_ms"]),
            use_tfjp=bool(cfg.get("tfjp", True)), use_curate=bool(cfg.get("curate", False)),
            curate_embedder=str(cfg.get("curate_embedder", "minilm")),
            asr_gate_unit=str(t.get("asr_gate_unit", "sentence")),
            instruction_dropout=float(cfg.get("instruction_dropout", 0.5)),
            instruction_audio=float(cfg.get("instruction_audio", 0.0)),
            curator=str(cfg.get("curator", "offline")), split=cfg.get("split", "train"),
            bank=_bank(t.get("bank"), cfg["_base"]))
    return _RES_CACHE[key]


def _bank(path: str | None, base: str):
    """The recipe's speech bank (`tts.bank`, relative to the recipe's folder), or None."""
    if not path:
        return None
    from .speechbank import SpeechBank
    from .tasks import expand_path

    return SpeechBank.open(expand_path(path, Path(base)))


def _flac_bytes(wave: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: byte-identical shards
    tar.addfile(info, io.BytesIO(data))


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.tar"


_MALLOC_DONE = False


def tune_malloc() -> bool:
    """glibc malloc settings for a build process (once; `SOUNDFLOW_MALLOC=0` leaves malloc alone).

    The build allocates and frees many short-lived multi-MB arrays (30 s Whisper windows and
    their features, renderings, stream mixes); glibc's dynamic mmap threshold can serve them
    from fresh mmaps that are faulted in page by page again. A fixed high mmap threshold and
    trim threshold keep them in the heap for reuse. Measured on the dev recipe (one worker,
    2026-11-25): 12.5 M vs 13.7 M minor page faults, 123.5 vs 130.5 shard CPU-s: a small gain;
    most page faults come from elsewhere (native libraries). Returns whether it was applied."""
    global _MALLOC_DONE
    if _MALLOC_DONE or os.environ.get("SOUNDFLOW_MALLOC", "1") == "0":
        return _MALLOC_DONE
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        # 32 MiB: the largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
        ok = libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 256 << 20)
        _MALLOC_DONE = bool(ok)
    except (OSError, AttributeError):  # not glibc
        _MALLOC_DONE = False
    return _MALLOC_DONE


def _slot_steps(cfg: dict, index: int, slot: int, res, names: list[str], w: np.ndarray, stats: dict):
    """One sample slot of a shard as a generator of the ASR gate's requests (`asr_gate.GateRequest`):
    its own rng `default_rng([seed, shard, slot])` draws the task and every attempt until one
    instance survives the gate (a `Dropped` instance is discarded whole and drawn again).
    Returns (task, sample). Seeding per slot keeps each instance independent of the others and
    of how the builder interleaves and packs their gate requests."""
    from .asr_gate import Dropped
    from .tasks import TASK_STEPS

    rng = np.random.default_rng([int(cfg["seed"]), index, slot])
    task = names[int(rng.choice(len(names), p=w))]
    why = None
    for _attempt in range(MAX_ATTEMPTS):
        try:
            s = yield from TASK_STEPS[task](rng, res)
            return task, s
        except Dropped as d:
            stats["dropped"] += 1  # the whole instance is discarded; draw another
            key = f"{task}/{d.family or '?'}"
            stats["dropped_by"][key] = stats["dropped_by"].get(key, 0) + 1
            stats.setdefault("drops", []).append({"slot": slot, "task": task, "family": d.family, "voice": d.voice,
                                                  "wer": round(d.wer, 3), "text": d.text[:200]})
        except ValueError as e:
            stats["failed"] += 1
            why = e
    raise RecipeError(f"shard {index}: no valid {task!r} sample in {MAX_ATTEMPTS} draws"
                      + (f" (last failure: {why})" if why else "")
                      + "; the recipe's sources cannot satisfy this task: check its `sources` and `tasks`")


def run_slots(slots: list, gate) -> list:
    """Drive slot generators together: each round, every slot runs until it asks for a gate
    check (or finishes); all pending units of all slots are checked in one `gate.check` (packed
    into full 30 s windows, solo re-check of failures); the verdicts go back to their slots.
    With gate None the generators never ask. Returns the slots' return values in slot order."""
    results: dict[int, object] = {}
    pending: dict[int, object] = {}

    def step(j: int, value) -> None:
        try:
            pending[j] = slots[j].send(value)
        except StopIteration as e:
            results[j] = e.value

    for j in range(len(slots)):
        step(j, None)
    while pending:
        js = sorted(pending)
        reqs = [pending.pop(j) for j in js]
        if gate is None:
            raise RuntimeError("a gate request without a gate")
        scores = gate.check([x for r in reqs for x in r.waves], [x for r in reqs for x in r.refs])
        pos = 0
        for j, r in zip(js, reqs):
            step(j, scores[pos : pos + len(r.waves)])
            pos += len(r.waves)
    return [results[j] for j in range(len(slots))]


def build_shard(cfg: dict, index: int, out: str) -> dict:
    """Build shard `index` into `out` (skipped when its .tar exists); returns its stats.

    recipe tts.gate_across (default true): the shard's slots are rendered together and their
    units gated together (`run_slots`); false: each slot's requests are gated alone, one slot
    after the other (same corpus given the same verdicts; more, emptier Whisper windows)."""
    from .asr_gate import run_steps

    out_dir = Path(out)
    final, stats_path = out_dir / shard_name(index), out_dir / f"shard-{index:05d}.stats.json"
    if final.exists() and stats_path.exists():
        return json.loads(stats_path.read_text())
    tune_malloc()
    t0, cpu0 = time.time(), time.process_time()
    res = _resources(cfg)
    gate0 = res.gate.stats.to_json() if res.gate else None
    bank0 = res.bank.stats.to_json() if res.bank else None
    names = sorted(cfg["tasks"])
    w = np.array([float(cfg["tasks"][n]) for n in names])
    w = w / w.sum()
    per, total = int(cfg["samples_per_shard"]), int(cfg["samples"])
    n = max(0, min(per, total - index * per))
    stats = {"shard": index, "samples": 0, "seconds": 0.0, "chunks": 0, "reply_chunks": 0, "replies": 0,
             "per_task": {}, "dropped": 0, "dropped_by": {}, "failed": 0, "mixins": {}}
    slots = [_slot_steps(cfg, index, j, res, names, w, stats) for j in range(n)]
    if bool((cfg.get("tts") or {}).get("gate_across", True)):
        done = run_slots(slots, res.gate)
    else:
        done = [run_steps(g, res.gate) for g in slots]
    stats.get("drops", []).sort(key=lambda d: d["slot"])  # slot order, however the slots interleaved
    tmp = out_dir / (shard_name(index) + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for j, (task, s) in enumerate(done):
            s.id = f"{index:05d}-{j:04d}-{task}"
            s.audio = f"{s.id}.flac"
            n_chunks = -(-len(s.wave) // (s.chunk_ms * SAMPLE_RATE // 1000))
            _add(tar, s.audio, _flac_bytes(s.wave))
            if s.instruction_wave is not None:  # the spoken instruction, heard before the stream
                s.instruction_audio = f"{s.id}.instruction.flac"
                _add(tar, s.instruction_audio, _flac_bytes(s.instruction_wave))
                stats["instruction_audio"] = stats.get("instruction_audio", 0) + 1
                stats["instruction_audio_s"] = round(stats.get("instruction_audio_s", 0.0)
                                                     + len(s.instruction_wave) / SAMPLE_RATE, 3)
            _add(tar, f"{s.id}.json", json.dumps(s.to_json(), ensure_ascii=False, sort_keys=True).encode())
            stats["samples"] += 1
            stats["seconds"] += len(s.wave) / SAMPLE_RATE
            stats["chunks"] += n_chunks
            stats["reply_chunks"] += len({t["chunk"] for t in s.timeline})
            stats["replies"] += len(s.timeline)
            stats["per_task"][task] = stats["per_task"].get(task, 0) + 1
            for e in s.events:
                for m in e.get("mixins", []) if e.get("type") == "meta" else []:
                    stats["mixins"][m] = stats["mixins"].get(m, 0) + 1
            _count_speech(s.events, stats)
    stats["wall_s"] = round(time.time() - t0, 3)
    stats["cpu_s"] = round(time.process_time() - cpu0, 3)
    if res.gate:
        g = res.gate.stats.to_json()
        stats["gate"] = {k: round(g[k] - gate0[k], 2) for k in g if not isinstance(g[k], dict)}
    if res.bank:
        stats["bank"] = {k: v - bank0[k] for k, v in res.bank.stats.to_json().items()}
    stats["seconds"] = round(stats["seconds"], 3)
    st_tmp = stats_path.with_suffix(".json.tmp")
    st_tmp.write_text(json.dumps(stats, sort_keys=True))
    os.replace(st_tmp, stats_path)  # stats first: a finished .tar always has its stats
    os.replace(tmp, final)
    return stats


def _count_speech(events: list[dict], stats: dict) -> None:
    """Who spoke what in one sample: TTS voices ("kokoro:af_heart") and recorded speakers
    ("speech:george"), and the distinct texts spoken, as sorted lists in the shard's stats."""
    voices, texts = set(stats.get("voices", [])), set(stats.get("texts", []))
    for e in events:
        p = e.get("provenance") or e  # composed events carry their provenance inside
        if p.get("type") in ("tts", "instruction_audio"):
            voices.add(f'{p["tts"]["family"]}:{p["tts"]["name"]}')
            texts.add(p.get("text", ""))
        elif p.get("type") == "speech":
            voices.add(f'speech:{p.get("speaker", "?")}')
            texts.add(p.get("text", ""))
    stats["voices"], stats["texts"] = sorted(voices), sorted(texts)


def summarize(stats: list[dict], wall_s: float | None = None, workers: int | None = None) -> dict:
    sec = sum(s["seconds"] for s in stats)
    chunks = sum(s["chunks"] for s in stats)
    per_task: dict = {}
    mix: dict = {}
    drop_by: dict = {}  # "task/tts family" -> instances dropped by the ASR gate
    for s in stats:
        for k, v in s.get("dropped_by", {}).items():
            drop_by[k] = drop_by.get(k, 0) + v
        for k, v in s["per_task"].items():
            per_task[k] = per_task.get(k, 0) + v
        for k, v in s.get("mixins", {}).items():
            mix[k] = mix.get(k, 0) + v
    out = {
        "shards": len(stats), "samples": sum(s["samples"] for s in stats), "hours": round(sec / 3600, 4),
        "seconds": round(sec, 2), "samples_per_task": dict(sorted(per_task.items())),
        "silence_ratio": round(1 - sum(s["reply_chunks"] for s in stats) / chunks, 4) if chunks else None,
        "replies_per_minute": round(sum(s["replies"] for s in stats) / (sec / 60), 3) if sec else None,
        "dropped_by_asr_gate": sum(s["dropped"] for s in stats), "failed_draws": sum(s["failed"] for s in stats),
        "dropped_by": dict(sorted(drop_by.items())),
        "speakers": len(set().union(*(s.get("voices", []) for s in stats))),  # TTS voices + recorded speakers
        "voice_families": sorted({v.split(":")[0] for s in stats for v in s.get("voices", [])}),
        "sentences": len(set().union(*(s.get("texts", []) for s in stats))),  # distinct spoken texts
        "mixins": dict(sorted(mix.items())),
        "spoken_instructions": sum(s.get("instruction_audio", 0) for s in stats),  # samples with one
        "spoken_instruction_s": round(sum(s.get("instruction_audio_s", 0.0) for s in stats), 2),
        "shard_wall_s": round(sum(s.get("wall_s", 0) for s in stats), 2),
        "xrt_per_core": round(sec / sum(s.get("wall_s", 0) for s in stats), 2) if any(s.get("wall_s") for s in stats) else None,
        "shard_cpu_s": round(sum(s.get("cpu_s", 0) for s in stats), 2),
        "xrt_per_cpu_s": round(sec / sum(s.get("cpu_s", 0) for s in stats), 2) if any(s.get("cpu_s") for s in stats) else None,
    }
    gates = [s["gate"] for s in stats if s.get("gate")]
    if gates:
        out["gate"] = {k: round(sum(g.get(k, 0) for g in gates), 2) for k in gates[0]}
    banks = [s["bank"] for s in stats if s.get("bank")]
    if banks:
        out["bank"] = {k: sum(b.get(k, 0) for b in banks) for k in banks[0]}
    if wall_s is not None:
        out["wall_s"] = round(wall_s, 2)
        out["workers"] = workers
    return out


def _run_ray(cfg: dict, todo: list[int], out: str, address: str, bar) -> list[dict]:
    import ray

    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(build_shard)
    pending = [remote.remote(cfg, i, out) for i in todo]
    results = []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        results.append(ray.get(done[0]))
        bar.update(1)
    return results


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: the worker is killed when the build process dies. A killed build's spawn
    workers otherwise lived on and kept writing shards into the output folder, where a restarted
    build (after a code change) then mixed their shards with its own (seen 2026-12-01)."""
    import sys

    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


def run_pool(fn, jobs: list[tuple], workers: int, bar=None) -> list:
    """fn(*job) for every job, in this process (workers 1) or on a pool of `workers` processes;
    results in completion order. The builds' one way to use processes."""
    out = []
    if workers == 1:
        for job in jobs:
            out.append(fn(*job))
            bar is not None and bar.update(1)
        return out
    import multiprocessing as mp

    # spawn, not fork: a forked child inherits the parent's OpenMP/torch thread state, which
    # made ctranslate2 and onnxruntime workers stall (measured 1.7x vs 8.7x real time per core).
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                             initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        for f in as_completed([pool.submit(fn, *job) for job in jobs]):
            out.append(f.result())
            bar is not None and bar.update(1)
    return out


def build(recipe_path: str | Path, out: str | Path, ray: str | None = None, workers: int | None = None,
          quiet: bool = False, bank: str | Path | None = None) -> dict:
    """Build the corpus described by `recipe_path` into `out`; returns (and writes) the summary.

    ray: None → local process pool (`workers`, default the CPU count); "local" → Ray tasks on a
    local 2-CPU Ray instance; an address → that cluster. Finished shards are skipped.
    bank: a speech bank folder (speechbank.py) in place of the recipe's `tts.bank`."""
    from tqdm import tqdm

    cfg = load_data_recipe(recipe_path)
    if bank is not None:
        cfg["tts"] = {**(cfg.get("tts") or {}), "bank": str(Path(bank).resolve())}
    bank_info = None
    if (cfg.get("tts") or {}).get("bank"):
        try:  # here, not in a worker: a missing bank is one line
            bank_info = _bank(cfg["tts"]["bank"], cfg["_base"]).info
        except FileNotFoundError as e:
            raise RecipeError(str(e)) from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = -(-int(cfg["samples"]) // int(cfg["samples_per_shard"]))
    for stale in out.glob("*.tmp"):  # partial shards of a killed run: never read, rebuilt below
        stale.unlink()
    done = [i for i in range(n_shards) if (out / shard_name(i)).exists() and (out / f"shard-{i:05d}.stats.json").exists()]
    todo = [i for i in range(n_shards) if i not in done]
    stats = [json.loads((out / f"shard-{i:05d}.stats.json").read_text()) for i in done]
    workers = workers or os.cpu_count() or 1
    t0 = time.time()
    bar = tqdm(total=n_shards, initial=len(done), desc="shards", unit="shard", disable=quiet)
    if not todo:
        pass
    elif ray:
        stats += _run_ray(cfg, todo, str(out), ray, bar)
    else:
        stats += run_pool(build_shard, [(cfg, i, str(out)) for i in todo], workers, bar)
    bar.close()
    wall = time.time() - t0
    summary = summarize(sorted(stats, key=lambda s: s["shard"]), wall if todo else None, workers if todo else None)
    summary["recipe"] = str(recipe_path)
    if bank_info is not None:  # what the bank cost, charged whole to this corpus (the worst case)
        cpu = summary["shard_cpu_s"] + float(bank_info.get("cpu_s") or 0)
        summary.setdefault("bank", {}).update(path=cfg["tts"]["bank"], cpu_s=bank_info.get("cpu_s"),
                                              speech_s=bank_info.get("seconds"), entries=bank_info.get("entries"))
        summary["xrt_per_cpu_s_with_bank"] = round(summary["seconds"] / cpu, 2) if cpu else None
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    if not quiet:
        print(json.dumps(summary, indent=2, sort_keys=True))
    return summary


# ----------------------------------------------------------------------------- speech banks


def _bank_unit_steps(speaker, kind: str, texts: tuple[str, ...]):
    """One unit through `Speaker.say_steps` (a generator of gate requests); returns the outcome."""
    from .asr_gate import Dropped
    from .tasks import ASR_GROUP_GAP_S

    try:
        if kind == "dictation":
            out = yield from speaker.say_steps(list(texts), units=[0] * len(texts), join_gap_s=ASR_GROUP_GAP_S)
        else:
            out = yield from speaker.say_steps(list(texts))
        return out
    except Dropped as d:
        return d


def bank_voice(cfg: dict, voice_id: str, out: str, per_voice: int) -> dict:
    """Render, gate and write one voice's entries (skipped when its rows exist); returns its stats.
    per_voice: this voice's dictation sentences (`dictation_counts`)."""
    from . import tts
    from .asr_gate import Dropped
    from .speechbank import BankEntry, entry_id, voice_key, voice_seed, voice_units
    from .tasks import dictation_pool, spoken_prompts

    root = Path(out)
    key = voice_key(voice_id)
    rows_path, stats_path = root / "voices" / f"{key}.jsonl", root / "voices" / f"{key}.stats.json"
    if rows_path.exists() and stats_path.exists():
        return json.loads(stats_path.read_text())
    tune_malloc()
    t0, cpu0 = time.time(), time.process_time()
    res = _resources({**cfg, "tts": {**(cfg.get("tts") or {}), "bank": None}})
    gate = res.gate
    gate0 = gate.stats.to_json() if gate else None
    tasks = [t for t, w in (cfg.get("tasks") or {}).items() if float(w) > 0]
    units = voice_units(voice_id, spoken_prompts(res, tasks), dictation_pool(res) if "asr" in tasks else [],
                        per_voice, int(cfg.get("seed", 0)))
    family, _, name = voice_id.partition(":")
    rng = np.random.default_rng([*voice_seed(int(cfg.get("seed", 0)), voice_id), 1])  # the styles and re-renders
    speakers = [tts.Speaker(tts.styled_voice(rng, family, name), rng, gate) for _ in units]
    done = run_slots([_bank_unit_steps(sp, kind, texts) for sp, (kind, texts) in zip(speakers, units)], gate)
    audio_dir = root / "audio" / key
    audio_dir.mkdir(parents=True, exist_ok=True)
    rows, stats = [], {"voice": voice_id, "units": len(units), "dictation": sum(k == "dictation" for k, _ in units),
                       "passed": 0, "failed": 0, "seconds": 0.0}
    for speaker, (kind, texts), got in zip(speakers, units, done):
        eid = entry_id(voice_id, kind, texts)
        if isinstance(got, Dropped):
            rows.append(BankEntry(eid, voice_id, kind, texts, tuple(speaker.spoken(t) for t in texts),
                                  speaker.voice.to_json(), round(float(got.wer), 4), int(got.attempts), False))
            stats["failed"] += 1
            continue
        waves, spoken, info = got
        bounds = np.cumsum([0] + [len(w) for w in waves]).tolist()
        rel = f"audio/{key}/{eid}.flac"
        tmp = root / (rel + ".tmp")
        tmp.write_bytes(_flac_bytes(np.concatenate(waves)))  # as the shards store streams
        os.replace(tmp, root / rel)
        rows.append(BankEntry(eid, voice_id, kind, tuple(texts), tuple(spoken), info[-1]["tts"],
                              max(float(i.get("wer", 0.0)) for i in info), int(info[-1]["attempts"]), True, rel,
                              tuple(int(b) for b in bounds)))
        stats["passed"] += 1
        stats["seconds"] += bounds[-1] / SAMPLE_RATE
    stats["seconds"] = round(stats["seconds"], 3)
    stats["wall_s"] = round(time.time() - t0, 3)
    stats["cpu_s"] = round(time.process_time() - cpu0, 3)
    if gate:
        g = gate.stats.to_json()
        stats["gate"] = {k: round(g[k] - gate0[k], 2) for k in g if not isinstance(g[k], dict)}
    tmp = rows_path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r.to_dict(), ensure_ascii=False, sort_keys=True) + "\n" for r in rows),
                   encoding="utf-8")
    st_tmp = stats_path.with_suffix(".json.tmp")
    st_tmp.write_text(json.dumps(stats, sort_keys=True))
    os.replace(st_tmp, stats_path)
    os.replace(tmp, rows_path)  # rows last: a voice with rows is whole
    return stats


def make_bank(recipe_path: str | Path, out: str | Path, per_voice: int | None = None, voices: list[str] | None = None,
              workers: int | None = None, quiet: bool = False) -> dict:
    """Make (or finish) the speech bank (speechbank.py) of a data recipe in `out`, a voice at a
    time per process; returns and writes bank.json.
    per_voice: dictation sentences per voice on average (`dictation_counts`); voices: a subset of
    the recipe's voice ids (default all); workers: processes, each making one voice at a time."""
    from tqdm import tqdm

    from .speechbank import BANK_FILE, PER_VOICE, dictation_counts, recipe_voices

    per_voice = PER_VOICE if per_voice is None else per_voice
    cfg = load_data_recipe(recipe_path)
    if not (cfg.get("tts") or {}).get("families"):
        raise RecipeError(f"{recipe_path}: the recipe names no TTS families (tts.families): nothing to bank")
    known = recipe_voices(cfg)
    todo = list(voices) if voices else known
    unknown = [v for v in todo if v not in known]
    if unknown:
        raise RecipeError(f"voices not in the recipe's installed TTS families: {', '.join(unknown)}")
    root = Path(out)
    (root / "voices").mkdir(parents=True, exist_ok=True)
    for stale in root.glob("**/*.tmp"):  # a killed run's partial files: never read, redone below
        stale.unlink()
    counts = dictation_counts(cfg, per_voice)
    todo.sort(key=lambda v: -counts[v])  # the longest voices first: the pool ends together
    t0 = time.time()
    bar = tqdm(total=len(todo), desc="voices", unit="voice", disable=quiet)
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    stats = run_pool(bank_voice, [(cfg, v, str(root), counts[v]) for v in todo], workers, bar)
    bar.close()
    done = [json.loads(p.read_text()) for p in sorted((root / "voices").glob("*.stats.json"))]
    cpu = sum(s["cpu_s"] for s in done)
    seconds = sum(s["seconds"] for s in done)
    info = {"recipe": str(recipe_path), "seed": int(cfg.get("seed", 0)), "per_voice": per_voice,
            "voices": len(done), "entries": sum(s["units"] for s in done), "passed": sum(s["passed"] for s in done),
            "failed": sum(s["failed"] for s in done), "seconds": round(seconds, 2), "cpu_s": round(cpu, 2),
            "xrt_per_cpu_s": round(seconds / cpu, 3) if cpu else None,
            "wall_s": round(time.time() - t0, 2) if stats else None,
            "pass_rate_by_voice": {s["voice"]: round(s["passed"] / s["units"], 4) for s in done if s["units"]}}
    tmp = root / (BANK_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True))
    os.replace(tmp, root / BANK_FILE)
    if not quiet:
        print(json.dumps({k: v for k, v in info.items() if k != "pass_rate_by_voice"}, indent=2, sort_keys=True))
    return info
