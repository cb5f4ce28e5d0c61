"""Typed manifests (JSONL, lhotse-style) and the training-side view of stream samples.

Formats (DESIGN.md, stable):
- clip catalog row: {"id", "audio", "duration", "caption", "category", "decision"?, "source", "license"}
- stream sample:    {"id", "task", "audio", "sample_rate", "chunk_ms", "instruction",
                     "timeline": [{"chunk": k, "text": "..."}], "events": [...provenance...]}
`audio` paths are relative to the manifest's folder. Tar shards hold `<id>.flac` + `<id>.json`.
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
    wave: np.ndarray | None = field(default=None, repr=False, compare=False)
    root: str = field(default="", repr=False, compare=False)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("wave"), d.pop("root")
        return d

    @classmethod
    def from_json(cls, d: dict, root: str | Path = "") -> "StreamSample":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k not in ("wave", "root")}
        return cls(**known, root=str(root))

    def load(self) -> np.ndarray:
        if self.wave is None:
            self.wave = load_audio(Path(self.root) / self.audio)
        return self.wave

    def chunks(self, max_chunks: int | None = None) -> np.ndarray:
        """(T, samples) chunk matrix; the last partial chunk is zero-padded."""
        w = self.load()
        n = chunk_samples(self.chunk_ms)
        T = math.ceil(len(w) / n)
        if max_chunks:
            T = min(T, max_chunks)
        out = np.zeros((T, n), dtype=np.float32)
        flat = w[: T * n]
        out.reshape(-1)[: len(flat)] = flat
        return out

    def timeline_within(self, n_chunks: int) -> list[dict]:
        return [e for e in self.timeline if e["chunk"] < n_chunks]


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
                if audio_name:
                    wave, sr = sf.read(io.BytesIO(tar.extractfile(members[audio_name]).read()), dtype="float32")
                    from .audio import to_mono_16k

                    s.wave = to_mono_16k(wave, sr, name=f"{shard}:{audio_name}")
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


def load_streams(spec: str) -> list[StreamSample]:
    """A data spec: `synthetic:beep?n=20&chunks=8&seed=0`, a stream-sample JSONL manifest, a
    folder of tar shards (output of `soundflow data build`), or the authors' online-training /
    StreamAudio-2M JSONL (detected by its first line, or `authors:PATH?noise=DIR&seed=0`;
    see `interop.py`)."""
    if spec.startswith("authors:"):
        from .interop import load_spec

        return load_spec(spec)
    if spec.startswith("synthetic:"):
        kind, _, query = spec[len("synthetic:"):].partition("?")
        if kind != "beep":
            raise ValueError(f"unknown synthetic set {kind!r} (known: beep)")
        kw = dict(p.split("=", 1) for p in query.split("&") if p)
        casts = {"n": int, "chunks": int, "seed": int, "freq": float, "reply": str, "chunk_ms": int}
        return synthetic_beeps(**{k: casts[k](v) for k, v in kw.items()})
    p = Path(spec)
    if p.is_dir():
        samples = list(read_shards(p))
        if not samples:
            raise ValueError(f"{spec}: no finished *.tar shards")
        return samples
    if p.is_file():
        rows = read_jsonl(p)
        from .interop import is_authors_line, load_conversations

        if rows and is_authors_line(rows[0]):
            return load_conversations(p)
        return [StreamSample.from_json(r, root=p.parent) for r in rows]
    raise FileNotFoundError(f"{spec}: no such manifest or shard folder")


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
