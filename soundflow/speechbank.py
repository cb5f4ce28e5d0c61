"""Speech bank: TTS speech rendered and ASR-gated ahead of a data build (issue 9).

This module is the bank's format and reader, and what each voice says; `build.make_bank` makes
one (with the build's gate driver and process pool).

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


def voice_seed(seed: int, voice_id: str) -> list[int]:
    """A voice's own seed: adding a voice or a worker changes no other voice's entries."""
    return [int(seed), zlib.crc32(voice_id.encode())]


def voice_units(voice_id: str, prompts: Sequence[str], pool: Sequence[str], per_voice: int,
                seed: int) -> list[tuple[str, tuple[str, ...]]]:
    """What one voice says for the bank: ("prompt", (text,)) for each prompt, then ("dictation",
    word groups) for `per_voice` sentences of `pool` drawn with this voice's own rng."""
    from .tasks import word_groups

    rng = np.random.default_rng(voice_seed(seed, voice_id))
    units = [("prompt", (t,)) for t in prompts]
    k = min(per_voice, len(pool))
    for i in rng.choice(len(pool), size=k, replace=False) if k else []:
        units.append(("dictation", tuple(word_groups(pool[int(i)], rng))))
    return units


def entry_id(voice_id: str, kind: str, texts: Sequence[str]) -> str:
    return hashlib.sha1(json.dumps([voice_id, kind, list(texts)]).encode()).hexdigest()[:16]


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


def recipe_voices(cfg: dict) -> list[str]:
    """Every voice id of the recipe's installed TTS families, in a fixed order."""
    from . import tts

    fams = [f for f in (cfg.get("tts") or {}).get("families") or () if f in tts.available_families() or f == "tone"]
    return [f"{f}:{n}" for f in fams for n in tts.family_voices(f)]
