"""The authors' data formats in and out: their online-training JSONL and StreamAudio-2M lines.

Formats (the authors' public repository and dataset card, read 2026-11-30):

- online training JSONL, one conversation per line:
  `{"conversation": [{"audio_path", "assistant", "emotion"?}, ...]}`, or the single-turn
  shorthand `{"merge_path", "assistant", "emotion"?}`;
- StreamAudio-2M: `{"id", "stream_scene_type", "num_turns", "turns": [{"user", "assistant",
  "emotion", "scene_type", "audio_path"}, ...]}`.

In both, a turn whose `assistant` is `"<no need to response>"` wants no reply, and `emotion` is
one of happy, sad, angry, surprise, normal, urgent (default normal).

Spoken instructions (the paper's A^ins) have no field in the authors' lines; soundflow adds one
key of its own, on the line itself, in either format: `"instruction_audio_path"`, the clip heard
before the stream (relative to the line file's folder, or absolute). `export` writes a sample's
spoken instruction as `<stem>_audio/<id>_instruction.wav` beside the exported JSONL and names it
there (an imported sample names the clip its line named, as its turns do); `import` reads it back
into `StreamSample.instruction_audio`. Lines without it are as before, byte for byte.

A conversation becomes one `StreamSample` laid out as the authors' builder lays it out:

    [gap_1, turn_1, gap_2, turn_2, ..., gap_n, turn_n, tail]

every gap and the tail 20–60 encoder frames of 40 ms (0.8–2.4 s) of noise, the tail shortened
so the stream ends on a chunk boundary. The reply to a turn sits at the chunk containing the
turn's last sample (`compose.reply_chunk`: the last chunk overlapping the end of its audio);
a no-reply turn leaves its chunks silent. Emotion is kept as metadata on the timeline entry;
user text, scene type and every field we do not use stay in the sample's `events`, so
`export` writes the lines back as they were.

Noise fills the gaps from a noise library (a folder of audio files or a manifest with `audio`
rows, as the authors' NOISE_DIR) or, without one, seeded pink noise at `PINK_DBFS`. The layout
is a pure function of (seed, conversation id): importing twice gives the same streams.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .audio import CHUNK_MS, SAMPLE_RATE, chunk_samples, load_audio, write_audio
from .compose import colored_noise, reply_chunk, tile_crossfade
from .data import StreamSample, read_jsonl, write_jsonl

NO_RESPONSE = "<no need to response>"  # the authors' marker for "stay silent on this turn"
EMOTIONS = ("happy", "sad", "angry", "surprise", "normal", "urgent")
DEFAULT_EMOTION = "normal"
FRAME_MS = 40  # one encoder frame in the authors' builder (their gap unit)
GAP_FRAMES = (20, 60)  # noise before every turn and after the last: 0.8–2.4 s
PINK_DBFS = -50.0  # gap level without a noise library: audible floor, far below speech
NOISE_XFADE_S = 0.1  # crossfade when a short noise clip is looped to fill a gap
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".opus")
INSTRUCTION_AUDIO_KEY = "instruction_audio_path"  # soundflow's own key: a spoken instruction (A^ins)
FORMATS = ("online", "streamaudio")


# --------------------------------------------------------------------------- the line formats


@dataclass
class Turn:
    """One turn: the user's audio and what the assistant says after it (or nothing)."""

    audio_path: str  # as written in the line (relative to the line file's folder, or absolute)
    assistant: str
    emotion: str | None = None  # None: the line did not say (the authors default to normal)
    user: str | None = None  # StreamAudio-2M: the user's words (transcript of the audio)
    scene_type: str | None = None
    extra: dict = field(default_factory=dict)  # fields we do not interpret, kept for export

    @property
    def responds(self) -> bool:
        return self.assistant.strip().lower() not in (NO_RESPONSE, NO_RESPONSE.strip("<>"))

    @classmethod
    def from_json(cls, d: dict, path_key: str = "audio_path") -> "Turn":
        if path_key not in d or "assistant" not in d:
            raise ValueError(f"a turn needs {path_key!r} and 'assistant': {d!r}")
        known = {path_key, "assistant", "emotion", "user", "scene_type"}
        return cls(audio_path=str(d[path_key]), assistant=str(d["assistant"]), emotion=d.get("emotion"),
                   user=d.get("user"), scene_type=d.get("scene_type"),
                   extra={k: v for k, v in d.items() if k not in known})

    def to_json(self, path_key: str = "audio_path", fmt: str = "online") -> dict:
        if fmt == "streamaudio":  # every field present, as in the dataset
            d = {"user": self.user or "", "assistant": self.assistant, "emotion": self.emotion or DEFAULT_EMOTION,
                 "scene_type": self.scene_type or "", "audio_path": self.audio_path}
        else:  # only what the line had
            d = {path_key: self.audio_path, "assistant": self.assistant}
            if self.emotion is not None:
                d["emotion"] = self.emotion
            if self.user is not None:
                d["user"] = self.user
        d.update(self.extra)
        return d


@dataclass
class Conversation:
    """One line of either format. `kind`: "online", "merge" (single-turn shorthand) or
    "streamaudio"; `id` is the line's own for StreamAudio-2M, else `<file stem>-<line no>`."""

    id: str
    turns: list[Turn]
    kind: str = "online"
    scene: str | None = None  # StreamAudio-2M stream_scene_type
    extra: dict = field(default_factory=dict)
    instruction_audio_path: str | None = None  # a spoken instruction (INSTRUCTION_AUDIO_KEY), heard first

    @property
    def format(self) -> str:
        return "streamaudio" if self.kind == "streamaudio" else "online"

    @classmethod
    def from_json(cls, d: dict, fallback_id: str) -> "Conversation":
        conv = cls._from_json({k: v for k, v in d.items() if k != INSTRUCTION_AUDIO_KEY}, fallback_id)
        if d.get(INSTRUCTION_AUDIO_KEY) is not None:
            conv.instruction_audio_path = str(d[INSTRUCTION_AUDIO_KEY])
        return conv

    @classmethod
    def _from_json(cls, d: dict, fallback_id: str) -> Conversation:
        if "turns" in d:
            turns = [Turn.from_json(t) for t in d["turns"]]
            if "num_turns" in d and int(d["num_turns"]) != len(turns):
                raise ValueError(f"{d.get('id', fallback_id)}: num_turns {d['num_turns']} but {len(turns)} turns")
            known = {"id", "stream_scene_type", "num_turns", "turns"}
            return cls(id=str(d.get("id", fallback_id)), turns=turns, kind="streamaudio",
                       scene=d.get("stream_scene_type"), extra={k: v for k, v in d.items() if k not in known})
        if "conversation" in d:
            extra = {k: v for k, v in d.items() if k != "conversation"}
            return cls(id=str(d.get("id", fallback_id)), turns=[Turn.from_json(t) for t in d["conversation"]],
                       kind="online", extra=extra)
        if "merge_path" in d:
            return cls(id=str(d.get("id", fallback_id)), turns=[Turn.from_json(d, "merge_path")], kind="merge")
        raise ValueError(f"{fallback_id}: neither 'conversation', 'merge_path' nor 'turns' (not an authors' line)")

    def to_json(self, fmt: str | None = None) -> dict:
        """The line in `fmt` ("online" | "streamaudio"; default: the format it came in)."""
        d = self._to_json(fmt)
        if self.instruction_audio_path is not None:  # only then: lines without one as before
            d[INSTRUCTION_AUDIO_KEY] = self.instruction_audio_path
        return d

    def _to_json(self, fmt: str | None) -> dict:
        fmt = fmt or self.format
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
        if fmt == "streamaudio":
            d = {"id": self.id, "stream_scene_type": self.scene if self.scene is not None else "",
                 "num_turns": len(self.turns), "turns": [t.to_json(fmt="streamaudio") for t in self.turns]}
            return {**d, **(self.extra if self.kind == "streamaudio" else {})}
        if self.kind == "merge" and len(self.turns) == 1:
            return self.turns[0].to_json("merge_path")
        return {"conversation": [t.to_json() for t in self.turns], **(self.extra if self.kind == "online" else {})}


def is_authors_line(d: dict) -> bool:
    """Whether a JSON row is one of the authors' lines (not a soundflow stream sample)."""
    return isinstance(d, dict) and ("conversation" in d or "merge_path" in d or
                                    ("turns" in d and "timeline" not in d))


def read_conversations(path: str | Path) -> list[Conversation]:
    path = Path(path)
    return [Conversation.from_json(d, f"{path.stem}-{i:06d}") for i, d in enumerate(read_jsonl(path))]


# --------------------------------------------------------------------------- noise library


def noise_files(noise: str | Path | None) -> list[Path]:
    """Audio files of a noise library: a folder (recursed) or a manifest with `audio` rows."""
    if noise is None:
        return []
    p = Path(noise)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTS)
    elif p.is_file():
        files = [(p.parent / str(r["audio"])).resolve() for r in read_jsonl(p) if r.get("audio")]
    else:
        raise FileNotFoundError(f"{noise}: no such noise folder or manifest")
    if not files:
        raise ValueError(f"{noise}: no audio files")
    return files


def _gap_noise(n: int, source: str, seed: int, root: Path) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if n <= 0:
        return np.zeros(0, np.float32)
    if source == "pink":
        return colored_noise(n, rng, "pink", PINK_DBFS)
    clip = load_audio(root / source if not os.path.isabs(source) else source)
    track, _ = tile_crossfade(clip, n, int(NOISE_XFADE_S * SAMPLE_RATE), rng)
    return track.astype(np.float32)


# --------------------------------------------------------------------------- conversation → stream


def _seed(seed: int, key: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % (2**32)


def _turn_samples(path: Path) -> int:
    """Length at 16 kHz from the header (resampled length, to the sample)."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 — a format the header reader does not know: decode it
        return len(load_audio(path))
    return int(round(info.frames * SAMPLE_RATE / info.samplerate))


def _resolve(path: str, root: Path) -> Path:
    return Path(path) if os.path.isabs(path) else (root / path)


def conversation_to_sample(conv: Conversation, root: str | Path, *, seed: int = 0, noise: Sequence[Path] = (),
                           instruction: str | None = None, chunk_ms: int = CHUNK_MS) -> "ConversationSample":
    """Lay a conversation out as a stream (see the module doc); audio is read when needed."""
    root = Path(root).resolve()
    rng = np.random.default_rng(_seed(seed, conv.id))
    frame = SAMPLE_RATE * FRAME_MS // 1000
    n_chunk = chunk_samples(chunk_ms)
    events: list[dict] = [{"type": "conversation", "format": conv.kind, "id": conv.id, "root": str(root),
                           "stream_scene_type": conv.scene, "extra": conv.extra}]
    if conv.instruction_audio_path is not None:  # as the line named it, for export
        events[0][INSTRUCTION_AUDIO_KEY] = conv.instruction_audio_path
    timeline: list[dict] = []
    pos = 0

    def gap(n: int, where: str) -> None:
        nonlocal pos
        src = str(noise[int(rng.integers(0, len(noise)))]) if noise else "pink"
        events.append({"type": "gap", "where": where, "start": pos, "samples": n, "noise": src,
                       "seed": int(rng.integers(0, 2**31))})
        pos += n

    for i, t in enumerate(conv.turns):
        gap(int(rng.integers(GAP_FRAMES[0], GAP_FRAMES[1] + 1)) * frame, f"before turn {i}")
        n = _turn_samples(_resolve(t.audio_path, root))
        ev = {"type": "turn", "index": i, "audio": t.audio_path, "start": pos, "samples": n,
              "assistant": t.assistant, "emotion": t.emotion, "user": t.user, "scene_type": t.scene_type,
              "extra": t.extra, "respond": t.responds}
        pos += n
        if t.responds:
            ev["chunk"] = reply_chunk(pos, n_chunk)
            timeline.append({"chunk": ev["chunk"], "text": t.assistant, "emotion": t.emotion or DEFAULT_EMOTION})
        events.append(ev)
    tail = int(rng.integers(GAP_FRAMES[0], GAP_FRAMES[1] + 1)) * frame
    tail -= (pos + tail) % n_chunk  # end on a chunk boundary, as the authors' builder does
    if tail < 0:
        tail += n_chunk
    gap(tail, "tail")
    task = conv.id.rstrip("0123456789").rstrip("_-") if conv.kind == "streamaudio" else "conversation"
    return ConversationSample(id=conv.id, task=task or "conversation", chunk_ms=chunk_ms, instruction=instruction,
                              timeline=timeline, events=events, root=str(root),
                              instruction_audio=conv.instruction_audio_path)


class ConversationSample(StreamSample):
    """A stream sample whose waveform is rendered from its turn and gap events on each `load()`
    (not kept: a corpus of long conversations need not fit in memory; training caches the
    encoder features instead)."""

    def load(self) -> np.ndarray:
        return self.wave if self.wave is not None else render(self.events, Path(self.root))


def render(events: Sequence[dict], root: Path) -> np.ndarray:
    """The stream's waveform from its events: noise gaps and turn audio at their offsets."""
    spans = [e for e in events if e.get("type") in ("gap", "turn")]
    total = max((e["start"] + e["samples"] for e in spans), default=0)
    wave = np.zeros(total, np.float32)
    for e in spans:
        if e["type"] == "gap":
            seg = _gap_noise(e["samples"], e["noise"], e["seed"], root)
        else:
            seg = load_audio(_resolve(e["audio"], root))[: e["samples"]]
        wave[e["start"] : e["start"] + len(seg)] = seg  # a turn decoding 1 sample short stays 0
    return wave


def conversation_of(sample: StreamSample) -> Conversation | None:
    """The conversation an imported sample came from (None for native samples)."""
    head = next((e for e in sample.events if e.get("type") == "conversation"), None)
    if head is None:
        return None
    turns = [Turn(audio_path=e["audio"], assistant=e["assistant"], emotion=e.get("emotion"), user=e.get("user"),
                  scene_type=e.get("scene_type"), extra=dict(e.get("extra") or {}))
             for e in sorted((e for e in sample.events if e.get("type") == "turn"), key=lambda e: e["index"])]
    return Conversation(id=head["id"], turns=turns, kind=head["format"], scene=head.get("stream_scene_type"),
                        extra=dict(head.get("extra") or {}), instruction_audio_path=head.get(INSTRUCTION_AUDIO_KEY))


def load_conversations(path: str | Path, *, seed: int = 0, noise: str | Path | None = None,
                       instruction: str | None = None, chunk_ms: int = CHUNK_MS) -> list[ConversationSample]:
    """The authors' JSONL as stream samples (lazy audio), audio paths relative to its folder."""
    path = Path(path)
    files = noise_files(noise)
    return [conversation_to_sample(c, path.parent, seed=seed, noise=files, instruction=instruction, chunk_ms=chunk_ms)
            for c in read_conversations(path)]


def load_spec(spec: str) -> list[ConversationSample]:
    """`authors:PATH.jsonl?noise=DIR&seed=0&instruction=...` (a `soundflow train` data spec)."""
    from urllib.parse import parse_qsl

    path, _, query = spec[len("authors:"):].partition("?")
    kw = dict(parse_qsl(query))
    unknown = set(kw) - {"noise", "seed", "instruction", "chunk_ms"}
    if unknown:
        raise ValueError(f"{spec}: unknown options {sorted(unknown)} (known: noise, seed, instruction, chunk_ms)")
    return load_conversations(path, seed=int(kw.get("seed", 0)), noise=kw.get("noise"),
                              instruction=kw.get("instruction"), chunk_ms=int(kw.get("chunk_ms", CHUNK_MS)))


# --------------------------------------------------------------------------- import / export


def import_authors(inp: str | Path, out: str | Path, *, seed: int = 0, noise: str | Path | None = None,
                   instruction: str | None = None, chunk_ms: int = CHUNK_MS, progress: bool = True) -> Path:
    """Authors' JSONL → `OUT/streams.jsonl` (stream samples) + `OUT/audio/<id>.flac` (+
    `OUT/audio/<id>.instruction.flac` for a spoken instruction).

    The rendered audio makes the manifest self-contained; the conversation and turn events keep
    what `export_authors` needs to write the original lines back."""
    from tqdm import tqdm

    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for s in tqdm(load_conversations(inp, seed=seed, noise=noise, instruction=instruction, chunk_ms=chunk_ms),
                  desc="import", disable=not progress, leave=False):
        rel = f"audio/{_safe(s.id)}.flac"
        write_audio(out / rel, s.load())
        s.audio = rel
        if s.has_instruction_audio:  # copied beside the stream, as `data build` writes it
            irel = f"audio/{_safe(s.id)}.instruction.flac"
            write_audio(out / irel, s.load_instruction())
            s.instruction_audio = irel
        rows.append(s.to_json())
    write_jsonl(out / "streams.jsonl", rows)
    return out / "streams.jsonl"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _rel(path: str, src_root: Path, dst_root: Path) -> str:
    """A turn's audio path as seen from the exported file's folder (absolute paths stay)."""
    if os.path.isabs(path):
        return path
    return os.path.relpath((src_root / path).resolve(), dst_root.resolve())


def sample_to_conversation(s: StreamSample, out_dir: Path, audio_dir: Path | None = None) -> Conversation:
    """A stream sample as a conversation. Imported samples give their original turns back;
    native samples are cut into turns at their replies (turn i = audio up to the end of reply
    chunk k_i; what follows the last reply is a no-reply turn), written as WAV files. A spoken
    instruction is named by the line's `instruction_audio_path`: an imported sample's original
    clip (like its turns), else written as `<id>_instruction.wav` in `audio_dir`."""
    audio_dir = audio_dir or out_dir / "audio"
    conv = _turns_of(s, out_dir, audio_dir)
    if s.has_instruction_audio and conv.instruction_audio_path is None:
        audio_dir.mkdir(parents=True, exist_ok=True)
        f = audio_dir / f"{_safe(s.id)}_instruction.wav"
        write_audio(f, s.load_instruction())
        conv.instruction_audio_path = os.path.relpath(f.resolve(), out_dir.resolve())
    return conv


def _turns_of(s: StreamSample, out_dir: Path, audio_dir: Path) -> Conversation:
    conv = conversation_of(s)
    if conv is not None:
        src = Path(next(e for e in s.events if e.get("type") == "conversation")["root"])
        for t in conv.turns:
            t.audio_path = _rel(t.audio_path, src, out_dir)
        if conv.instruction_audio_path is not None:
            conv.instruction_audio_path = _rel(conv.instruction_audio_path, src, out_dir)
        return conv
    wave = s.load()
    n = chunk_samples(s.chunk_ms)
    audio_dir.mkdir(parents=True, exist_ok=True)
    cuts = [(int(e["chunk"]) + 1) * n for e in sorted(s.timeline, key=lambda e: e["chunk"])]
    texts = [(e["text"], e.get("emotion")) for e in sorted(s.timeline, key=lambda e: e["chunk"])]
    if not cuts or cuts[-1] < len(wave):
        cuts.append(len(wave))
        texts.append((NO_RESPONSE, None))
    turns, start = [], 0
    for i, (end, (text, emo)) in enumerate(zip(cuts, texts)):
        f = audio_dir / f"{_safe(s.id)}_turn{i}.wav"
        write_audio(f, wave[start:end])
        turns.append(Turn(audio_path=os.path.relpath(f.resolve(), out_dir.resolve()), assistant=text, emotion=emo))
        start = end
    return Conversation(id=s.id, turns=turns, kind="online", scene=s.task)


def export_authors(samples: Iterable[StreamSample], out: str | Path, fmt: str | None = None) -> Path:
    """Stream samples → the authors' JSONL (`fmt` "online" | "streamaudio"; default: each
    conversation's own format, "online" for native samples)."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [sample_to_conversation(s, out.parent, out.parent / f"{out.stem}_audio").to_json(fmt) for s in samples]
    write_jsonl(out, lines)
    return out


def duration_s(sample: StreamSample) -> float:
    """Stream length from an imported sample's events (no audio read)."""
    spans = [e for e in sample.events if e.get("type") in ("gap", "turn")]
    return max((e["start"] + e["samples"] for e in spans), default=0) / SAMPLE_RATE


def chunks_of(sample: StreamSample) -> int:
    return math.ceil(duration_s(sample) * 1000 / sample.chunk_ms)
