"""Typed manifests (JSONL, lhotse-style) and the training-side view of stream samples.

Formats (docs/formats.md, stable):
- clip catalog row: {"id", "audio", "duration", "caption", "category", "decision"?, "source", "license"}
- stream sample:    {"id", "task", "audio", "sample_rate", "chunk_ms", "instruction",
                     "timeline": [{"chunk": k, "text": "..."}], "events": [...provenance...],
                     "instruction_audio"?: "spoken instruction clip"}
`audio` paths are relative to the manifest's folder. Tar shards hold `<id>.flac` + `<id>.json`
(+ `<id>.instruction.flac` for a spoken instruction).

Spoken instructions (the paper's A^ins, "audio instruction"): `instruction_audio` names a clip
that is heard *before* the stream, encoded by the same audio encoder into the instruction slot
of the Alg. 2 sequence (`[text instruction] [instruction audio × 10 per chunk] (stream…)`), its
last chunk zero-padded. Such a sample normally has no text `instruction`; the spoken words are
kept in an `{"type": "instruction_audio", "text", ...}` record of `events`. The key is written
only when set, so samples without one read and write exactly as before.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .audio import CHUNK_MS, SAMPLE_RATE, chunk_samples, load_audio


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a manifest


@dataclass
class ClipRow:
    id: str
    audio: str
    duration: float
    caption: str
    category: str = ""
    decision: str | None = None
    source: str = ""
    license: str = ""


@dataclass
class StreamSample:
    """One training stream. `wave` is held in memory for built or synthetic samples; otherwise
    `audio` (relative to `root`) is read on demand."""

    id: str
    task: str = "proactive"
    audio: str = ""
    sample_rate: int = SAMPLE_RATE
    chunk_ms: int = CHUNK_MS
    instruction: str | None = None
    timeline: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    instruction_audio: str | None = None  # spoken instruction clip (relative to `root`), before the stream
    wave: np.ndarray | None = field(default=None, repr=False, compare=False)
    root: str = field(default="", repr=False, compare=False)
    instruction_wave: np.ndarray | None = field(default=None, repr=False, compare=False)

    _MEMORY = ("wave", "root", "instruction_wave")  # in-memory fields, never serialised

    def to_json(self) -> dict:
        d = asdict(self)
        for k in self._MEMORY:
            d.pop(k)
        if d.get("instruction_audio") is None:  # samples without one: the format as before
            d.pop("instruction_audio", None)
        return d

    @classmethod
    def from_json(cls, d: dict, root: str | Path = "") -> "StreamSample":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k not in cls._MEMORY}
        return cls(**known, root=str(root))

    def load(self) -> np.ndarray:
        if self.wave is None:
            self.wave = load_audio(Path(self.root) / self.audio)
        return self.wave

    @property
    def has_instruction_audio(self) -> bool:
        return self.instruction_wave is not None or bool(self.instruction_audio)

    def load_instruction(self) -> np.ndarray | None:
        """The spoken instruction's waveform (16 kHz mono float32), or None when it has none."""
        if self.instruction_wave is None and self.instruction_audio:
            self.instruction_wave = load_audio(Path(self.root) / self.instruction_audio)
        return self.instruction_wave

    def instruction_chunks(self) -> np.ndarray:
        """(m, samples) chunks of the spoken instruction (m = 0 without one); last one zero-padded."""
        w = self.load_instruction()
        return split_chunks(w if w is not None else np.zeros(0, np.float32), self.chunk_ms)

    def chunks(self, max_chunks: int | None = None) -> np.ndarray:
        """(T, samples) chunk matrix; the last partial chunk is zero-padded."""
        return split_chunks(self.load(), self.chunk_ms, max_chunks)

    def timeline_within(self, n_chunks: int) -> list[dict]:
        return [e for e in self.timeline if e["chunk"] < n_chunks]


def split_chunks(w: np.ndarray, chunk_ms: int = CHUNK_MS, max_chunks: int | None = None) -> np.ndarray:
    """A waveform as a (T, samples) chunk matrix; the last partial chunk is zero-padded."""
    n = chunk_samples(chunk_ms)
    T = math.ceil(len(w) / n)
    if max_chunks:
        T = min(T, max_chunks)
    out = np.zeros((T, n), dtype=np.float32)
    flat = w[: T * n]
    out.reshape(-1)[: len(flat)] = flat
    return out


def read_shards(folder: str | Path) -> Iterator[StreamSample]:
    """Samples from finished tar shards (`*.tar`; partial `.tmp` shards are never read)."""
    import soundfile as sf

    for shard in sorted(Path(folder).glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(n for n in members if n.endswith(".json")):
                meta = json.load(tar.extractfile(members[name]))
                base = name[: -len(".json")]
                audio_name = next((base + ext for ext in (".flac", ".wav") if base + ext in members), None)
                s = StreamSample.from_json(meta)
                from .audio import to_mono_16k

                if audio_name:
                    wave, sr = sf.read(io.BytesIO(tar.extractfile(members[audio_name]).read()), dtype="float32")
                    s.wave = to_mono_16k(wave, sr, name=f"{shard}:{audio_name}")
                if s.instruction_audio:
                    if s.instruction_audio not in members:
                        raise ValueError(f"{shard}: {name} names instruction audio {s.instruction_audio!r}, "
                                         "which the shard does not hold")
                    wave, sr = sf.read(io.BytesIO(tar.extractfile(members[s.instruction_audio]).read()), dtype="float32")
                    s.instruction_wave = to_mono_16k(wave, sr, name=f"{shard}:{s.instruction_audio}")
                yield s


def synthetic_beeps(n: int = 20, chunks: int = 8, seed: int = 0, freq: float = 1000.0,
                    reply: str = "beep", chunk_ms: int = CHUNK_MS) -> list[StreamSample]:
    """The overfit set of the foundation issue: low noise, one tone burst in a random chunk,
    reply `reply` at that chunk. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    n_samp = chunk_samples(chunk_ms)
    t = np.arange(n_samp) / SAMPLE_RATE
    tone = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    out = []
    for i in range(n):
        wave = (0.01 * rng.standard_normal(chunks * n_samp)).astype(np.float32)
        k = int(rng.integers(0, chunks))
        wave[k * n_samp : (k + 1) * n_samp] += tone
        out.append(StreamSample(id=f"beep-{seed}-{i}", task="proactive", chunk_ms=chunk_ms,
                                timeline=[{"chunk": k, "text": reply}], wave=wave,
                                events=[{"type": "synthetic-tone", "freq": freq, "chunk": k}]))
    return out


def shared_data_dir() -> Path | None:
    """The development audio (`../shared/data` beside the checkout), or `$SOUNDFLOW_DATA`."""
    import os

    if os.environ.get("SOUNDFLOW_DATA"):
        return Path(os.environ["SOUNDFLOW_DATA"])
    for base in (Path.cwd(), Path(__file__).resolve().parent):
        for d in (base, *base.parents):
            if (d / "shared" / "data" / "README.md").exists():
                return d / "shared" / "data"
            if (d.parent / "shared" / "data" / "README.md").exists():
                return d.parent / "shared" / "data"
    return None
