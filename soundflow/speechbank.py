"""Speech bank: TTS speech rendered and ASR-gated ahead of a data build (issue 9).

Rendering (Kokoro-82M runs at about 1.2 x real time per CPU-second here) and the Whisper gate
cost a data build far more than everything else: the Kokoro recipes built at about 1 x real time
per CPU-second (BENCHMARKS.md, "Data construction speed"). A bank takes both out of the build:

    soundflow data bank RECIPE --out DIR [--per-voice 40] [--voices kokoro:af_heart,...] [--workers N]
    soundflow data build RECIPE --out DATA --bank DIR        # or, in the recipe: tts: {bank: DIR}

For every voice of the recipe's TTS families (`tts.family_voices`; its held-out voices too: the
build decides which split hears them) the bank renders

- every fixed text the recipe's tasks can speak (`tasks.spoken_prompts`: user turns, questions,
  commands, and the speakable instructions when the recipe speaks instructions), an entry each;
- `per_voice` dictation sentences drawn for that voice from `tasks.dictation_pool`, in the
  real-time ASR family's word groups (`tasks.word_groups`): an entry a sentence, its groups
  rendered apart and gated as one unit, as the live build does;

each at a speaking style drawn for the entry (`tts.styled_voice`), through the gate a build uses
(WER <= tau_wer, R re-renders at new speeds; one voice's units packed together into full 30 s
Whisper windows, `build.run_slots`). An entry that keeps failing is kept, marked failed, without
audio: a build drops an instance that needs it, as the live gate would.

A build with a bank (`Resources.bank`) draws each speaker among the bank's voices; a dictating
speaker says sentences the bank holds for its voice; every other text is looked up by voice and
spoken form, and a text the bank lacks is rendered and gated live (`misses` in the shard stats,
beside `hits`). The speaker's effects (`tts.augment`) are applied at each use, after the gate
(the bank gates the dry rendering), so one banked utterance heard in several streams differs in
room, band, level and tempo, as a recorded corpus does over epochs.

Layout (docs/formats.md): `DIR/bank.json` (what it was made from, totals), per voice
`DIR/voices/<family>--<name>.jsonl` (one `BankEntry` a line) and `.stats.json`, and the audio
`DIR/audio/<family>--<name>/<id>.flac` (16 kHz PCM_16: the texts back to back, `bounds` between).
A voice is the unit of work: its audio first, then its rows (atomic rename), so a killed run
redoes only the unfinished voices; each voice draws from its own seed (`[seed, crc32(voice)]`),
so adding a voice or a worker changes no other voice's entries.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE

PER_VOICE = 40  # dictation sentences per voice on average (each ~3 word groups)
MIN_DICTATION = 8  # ... and at least this many for the voices a build draws least
BANK_FILE = "bank.json"


def voice_key(voice_id: str) -> str:
    """A voice id as a file name: "kokoro:af_heart+af_bella" -> "kokoro--af_heart+af_bella"."""
    return voice_id.replace(":", "--")


@dataclass(frozen=True)
class BankEntry:
    """One gated unit of one voice: a prompt (one text) or a dictated sentence (its word groups)."""

    id: str
    voice: str  # "kokoro:af_heart"
    kind: str  # "prompt" | "dictation"
    texts: tuple[str, ...]  # as written (the stream's reply text for dictation)
    spoken: tuple[str, ...]  # as spoken: the gate's references, and the lookup key of a prompt
    tts: dict  # the voice with the style it was rendered in (`tts.Voice.to_json`)
    wer: float
    attempts: int
    passed: bool
    audio: str | None = None  # relative to the bank's folder; None for a failed entry
    bounds: tuple[int, ...] = ()  # text k is samples [bounds[k], bounds[k + 1]) of the audio

    def to_dict(self) -> dict:
        return {"id": self.id, "voice": self.voice, "kind": self.kind, "texts": list(self.texts),
                "spoken": list(self.spoken), "tts": self.tts, "wer": self.wer, "attempts": self.attempts,
                "passed": self.passed, "audio": self.audio, "bounds": list(self.bounds)}

    @classmethod
    def from_dict(cls, d: dict) -> "BankEntry":
        return cls(id=d["id"], voice=d["voice"], kind=d["kind"], texts=tuple(d["texts"]), spoken=tuple(d["spoken"]),
                   tts=dict(d["tts"]), wer=float(d["wer"]), attempts=int(d["attempts"]), passed=bool(d["passed"]),
                   audio=d.get("audio"), bounds=tuple(int(b) for b in d.get("bounds") or ()))


@dataclass
class BankStats:
    """What a build took from the bank (per process; the builder reports each shard's share)."""

    hits: int = 0  # entries used
    misses: int = 0  # `say` calls rendered and gated live (a text the bank lacks for the voice)
    dropped: int = 0  # instances dropped for a text the bank saw fail

    def to_json(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "dropped": self.dropped}


class SpeechBank:
    """A bank folder, read: its entries indexed by voice (every row is read; audio on use)."""

    def __init__(self, root: str | Path, entries: Sequence[BankEntry], info: dict | None = None):
        self.root = Path(root)
        self.info = info or {}
        self.stats = BankStats()
        self._prompts: dict[tuple[str, str], BankEntry] = {}
        self._dictation: dict[str, list[BankEntry]] = {}
        for e in entries:
            if e.kind == "prompt":
                self._prompts[(e.voice, e.spoken[0])] = e
            elif e.passed:
                self._dictation.setdefault(e.voice, []).append(e)
        self._voices = tuple(sorted({e.voice for e in entries}))

    @classmethod
    def open(cls, root: str | Path) -> "SpeechBank":
        root = Path(root)
        if not (root / BANK_FILE).is_file():
            raise FileNotFoundError(f"no speech bank at {root} (make one: soundflow data bank RECIPE --out {root})")
        entries = []
        for p in sorted((root / "voices").glob("*.jsonl")):
            entries += [BankEntry.from_dict(json.loads(ln)) for ln in p.read_text(encoding="utf-8").splitlines() if ln]
        return cls(root, entries, json.loads((root / BANK_FILE).read_text()))

    def voices(self) -> tuple[str, ...]:
        """Voice ids with at least one entry."""
        return self._voices

    def lookup(self, voice_id: str, spoken: str) -> BankEntry | None:
        """The prompt entry of this voice for this spoken text (passed or failed), or None."""
        return self._prompts.get((voice_id, spoken))

    def dictation(self, voice) -> list[BankEntry]:
        """The passed dictation entries of a voice (`tts.Voice` or its id), in bank order."""
        return self._dictation.get(getattr(voice, "id", voice), [])

    def waves(self, entry: BankEntry) -> list[np.ndarray]:
        """The entry's renderings, one per text (16 kHz float32)."""
        x = _read(str(self.root / entry.audio))
        b = entry.bounds
        return [x[b[k] : b[k + 1]] for k in range(len(b) - 1)]

    def __len__(self) -> int:
        return len(self._prompts) + sum(len(v) for v in self._dictation.values())


@functools.lru_cache(maxsize=256)
def _read(path: str) -> np.ndarray:
    import soundfile as sf

    x, sr = sf.read(path, dtype="float32")
    if sr != SAMPLE_RATE:
        raise ValueError(f"{path}: speech bank audio must be {SAMPLE_RATE} Hz, not {sr}")
    x.setflags(write=False)  # shared by every use: effects return new arrays
    return x


# ----------------------------------------------------------------------------- making a bank


def voice_units(voice_id: str, prompts: Sequence[str], pool: Sequence[str], per_voice: int,
                seed: int) -> list[tuple[str, tuple[str, ...]]]:
    """What one voice says for the bank: ("prompt", (text,)) for each prompt, then ("dictation",
    word groups) for `per_voice` sentences of `pool` drawn with this voice's own rng."""
    from .tasks import word_groups

    rng = np.random.default_rng([seed, zlib.crc32(voice_id.encode())])
    units = [("prompt", (t,)) for t in prompts]
    k = min(per_voice, len(pool))
    for i in rng.choice(len(pool), size=k, replace=False) if k else []:
        units.append(("dictation", tuple(word_groups(pool[int(i)], rng))))
    return units


def _entry_id(voice_id: str, kind: str, texts: Sequence[str]) -> str:
    return hashlib.sha1(json.dumps([voice_id, kind, list(texts)]).encode()).hexdigest()[:16]


def _unit_steps(speaker, kind: str, texts: tuple[str, ...]):
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


def dictation_counts(cfg: dict, per_voice: int = PER_VOICE) -> dict[str, int]:
    """Dictation sentences each voice of the recipe says in its bank: `per_voice` on average,
    shared in proportion to how often a build draws the voice (its family's `tts.weights` over
    the family's voices), at least MIN_DICTATION. A voice drawn for most speakers (Piper in the
    default recipes, also the cheapest to render) then says hundreds of sentences rather than the
    same forty in stream after stream, and each of 36 rarely drawn Kokoro voices a few. Computed
    over all the recipe's voices, so a voice's share does not depend on which voices one run makes."""
    t = cfg.get("tts") or {}
    families = list(t.get("families") or ())
    weights = [float(x) for x in t.get("weights") or [1.0] * len(families)]
    voices = recipe_voices(cfg)
    fam = {v: v.split(":")[0] for v in voices}
    w = {f: weights[families.index(f)] for f in set(fam.values())}
    total = sum(w.values())
    n_f = {f: sum(1 for v in voices if fam[v] == f) for f in w}
    floor = min(MIN_DICTATION, per_voice)
    return {v: max(floor, round(per_voice * len(voices) * w[fam[v]] / total / n_f[fam[v]])) for v in voices}


def bank_voice(cfg: dict, voice_id: str, out: str, per_voice: int = PER_VOICE) -> dict:
    """Render, gate and write one voice's entries (skipped when its rows exist); returns its stats.
    per_voice: this voice's dictation sentences (`dictation_counts`)."""
    from . import tts
    from .asr_gate import Dropped
    from .build import _flac_bytes, _resources, run_slots, tune_malloc
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
    rng = np.random.default_rng([int(cfg.get("seed", 0)), zlib.crc32(voice_id.encode()), 1])
    speakers = [tts.Speaker(tts.styled_voice(rng, family, name), rng, gate) for _ in units]
    done = run_slots([_unit_steps(sp, kind, texts) for sp, (kind, texts) in zip(speakers, units)], gate)
    audio_dir = root / "audio" / key
    audio_dir.mkdir(parents=True, exist_ok=True)
    rows, stats = [], {"voice": voice_id, "units": len(units), "dictation": sum(k == "dictation" for k, _ in units),
                       "passed": 0, "failed": 0, "seconds": 0.0}
    for speaker, (kind, texts), got in zip(speakers, units, done):
        eid = _entry_id(voice_id, kind, texts)
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


def recipe_voices(cfg: dict) -> list[str]:
    """Every voice id of the recipe's installed TTS families, in a fixed order."""
    from . import tts

    fams = [f for f in (cfg.get("tts") or {}).get("families") or () if f in tts.available_families() or f == "tone"]
    return [f"{f}:{n}" for f in fams for n in tts.family_voices(f)]


def make_bank(recipe_path: str | Path, out: str | Path, per_voice: int = PER_VOICE, voices: Sequence[str] | None = None,
              workers: int | None = None, quiet: bool = False) -> dict:
    """Make (or finish) the speech bank of a data recipe in `out`; returns and writes bank.json.
    per_voice: dictation sentences per voice on average (`dictation_counts`); voices: a subset of
    the recipe's voice ids (default all); workers: processes, each making one voice at a time."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    from .build import RecipeError, die_with_parent, load_data_recipe

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
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    t0 = time.time()
    stats = []
    bar = tqdm(total=len(todo), desc="voices", unit="voice", disable=quiet)
    if workers == 1:
        for v in todo:
            stats.append(bank_voice(cfg, v, str(root), counts[v]))
            bar.update(1)
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            futs = [pool.submit(bank_voice, cfg, v, str(root), counts[v]) for v in todo]
            for f in as_completed(futs):
                stats.append(f.result())
                bar.update(1)
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
