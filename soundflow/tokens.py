"""Streaming sequence format: paper Algorithm 2 (sample tokenisation and label construction).

A stream of T chunks with a response timeline [(t_k, r_k)] becomes one token sequence

    X = [instruction] ([audio × 10] <ctrl> [reply tokens <eos>]?)  × T

with two label streams aligned to X (a label at position j is the token X[j]; the loss shifts):

    y_stream: the control token (<silent> | <response>) at each chunk's control position, else MASK
    y_LM:     the reply tokens and their <eos>, else MASK

Instruction and audio positions are masked from both. Chunk indices are 0-based: the timeline
entry {"chunk": k} means the reply is spoken right after chunk k (audio [k·c, (k+1)·c)) is heard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

MASK = -100  # PyTorch's cross-entropy ignore_index
NO_WINDOW = -1  # a control position outside every reply window (StreamSequence.y_window)
SILENT, RESPONSE, EOS, AUDIO = "<silent>", "<response>", "<eos>", "<audio>"
SPECIAL_TOKENS = (SILENT, RESPONSE, EOS, AUDIO)
AUDIO_SLOTS = 10  # audio embeddings per 400 ms chunk (20 encoder frames pooled by 2)


class Tokenizer(Protocol):
    """What the sequence format needs from a tokenizer: text ids plus four real added tokens."""

    silent_id: int
    response_id: int
    eos_id: int
    audio_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes 0–255 plus the special tokens; the `tiny` backends use it (no files needed)."""

    def __init__(self) -> None:
        self.silent_id, self.response_id, self.eos_id, self.audio_id = 256, 257, 258, 259
        self.vocab_size = 260

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A transformers tokenizer with the special tokens added as real new tokens (not reused ids)."""

    def __init__(self, tok) -> None:
        tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
        self.tok = tok
        ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
        self.silent_id, self.response_id, self.eos_id, self.audio_id = ids
        self.vocab_size = len(tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


@dataclass
class StreamSequence:
    """X with its two label streams (Alg. 2). `audio_mask[j]` marks positions fed by audio slots,
    filled in order by the instruction's audio chunks, then the stream's chunks."""

    input_ids: list[int] = field(default_factory=list)
    audio_mask: list[bool] = field(default_factory=list)
    y_stream: list[int] = field(default_factory=list)
    y_lm: list[int] = field(default_factory=list)
    # reply windows: at a control position, the index of the reply whose window it lies in, else
    # NO_WINDOW. A reply with a `"from"` chunk in the timeline may come at any chunk of [from, chunk]
    # (`loss.dual_loss` with windows); y_stream keeps the exact labels for everything else.
    y_window: list[int] = field(default_factory=list)
    n_audio_chunks: int = 0

    def _add(self, tok: int, audio: bool = False, stream: int = MASK, lm: int = MASK, window: int = NO_WINDOW) -> None:
        self.input_ids.append(tok)
        self.audio_mask.append(audio)
        self.y_stream.append(stream)
        self.y_lm.append(lm)
        self.y_window.append(window)

    def __len__(self) -> int:
        return len(self.input_ids)


def normalise_timeline(timeline: Sequence, n_chunks: int) -> dict[int, str]:
    """[{"chunk": k, "text": r}] or [(k, r)] → {k: r}, checked against the stream length."""
    out: dict[int, str] = {}
    for item in timeline:
        k, text = (item["chunk"], item["text"]) if isinstance(item, dict) else item
        k = int(k)
        if not 0 <= k < n_chunks:
            raise ValueError(f"timeline chunk {k} outside the stream's {n_chunks} chunks")
        if k in out:
            raise ValueError(f"two replies at chunk {k}: merge them in the timeline first")
        out[k] = text
    return out


def reply_windows(timeline: Sequence, n_chunks: int) -> dict[int, int]:
    """{chunk: reply index} for the chunks inside some reply's window [from, chunk] (timeline
    entries with "from"); a chunk holding another reply stays that reply's own."""
    replies = normalise_timeline(timeline, n_chunks)
    out: dict[int, int] = {}
    for i, item in enumerate(sorted((t for t in timeline if isinstance(t, dict) and "from" in t), key=lambda t: t["chunk"])):
        k = int(item["chunk"])
        if not 0 <= int(item["from"]) <= k < n_chunks:
            raise ValueError(f"timeline window from {item['from']} to {k} outside the stream's {n_chunks} chunks")
        for t in range(int(item["from"]), k + 1):
            if t == k or t not in replies:
                out[t] = i
    return out


def build_sequence(
    tokenizer: Tokenizer,
    n_chunks: int,
    timeline: Sequence = (),
    instruction: str | None = None,
    instruction_chunks: int = 0,
    audio_slots: int = AUDIO_SLOTS,
) -> StreamSequence:
    """Algorithm 2. `instruction` is text; `instruction_chunks` > 0 prepends that many audio
    chunks as an audio instruction (A^ins). Both are masked from the loss."""
    replies = normalise_timeline(timeline, n_chunks)
    windows = reply_windows(timeline, n_chunks)
    seq = StreamSequence()
    if instruction:
        for tok in tokenizer.encode(instruction):
            seq._add(tok)
    for _ in range(instruction_chunks * audio_slots):
        seq._add(tokenizer.audio_id, audio=True)
    for t in range(n_chunks):
        for _ in range(audio_slots):
            seq._add(tokenizer.audio_id, audio=True)
        w = windows.get(t, NO_WINDOW)
        if t in replies:  # response triggers at chunk t
            seq._add(tokenizer.response_id, stream=tokenizer.response_id, window=w)
            for w in tokenizer.encode(replies[t]):
                seq._add(w, lm=w)
            seq._add(tokenizer.eos_id, lm=tokenizer.eos_id)
        else:  # remain silent
            seq._add(tokenizer.silent_id, stream=tokenizer.silent_id, window=w)
    seq.n_audio_chunks = instruction_chunks + n_chunks
    return seq


def chunk_run(tokenizer: Tokenizer, n_chunks: int, audio_slots: int = AUDIO_SLOTS) -> list[int]:
    """X for `n_chunks` consecutive chunks with no reply among them, up to the newest chunk's
    control token (left to the decision): [audio × slots] (<silent> [audio × slots])*.

    The one statement of the rule for chunks heard while busy: the FIFO decoder feeds every chunk
    queued during a reply in one forward in this layout (Alg. 4), which in training terms
    (`build_sequence`) is a run of silent chunks. `decoding` builds its inputs from it."""
    ids: list[int] = []
    for t in range(n_chunks):
        if t:
            ids.append(tokenizer.silent_id)
        ids.extend([tokenizer.audio_id] * audio_slots)
    return ids


def parse_timeline(tokenizer: Tokenizer, ids: Sequence[int], audio_mask: Sequence[bool] | None = None) -> list[dict]:
    """Inverse of Alg. 2: a token sequence (labels or model output) → [{"chunk", "text"}].

    Chunks are counted by control tokens; instruction tokens before the first audio slot are
    skipped. Works on `input_ids` of a built sequence and on a decoder's emitted tokens alike."""
    out: list[dict] = []
    chunk, reply = -1, None
    started = audio_mask is None
    for j, tok in enumerate(ids):
        if not started:
            started = bool(audio_mask[j])
            if not started:
                continue
        if tok == tokenizer.silent_id:
            chunk += 1
        elif tok == tokenizer.response_id:
            chunk += 1
            reply = []
        elif tok == tokenizer.eos_id:
            if reply is not None:
                out.append({"chunk": chunk, "text": tokenizer.decode(reply)})
            reply = None
        elif reply is not None and tok != tokenizer.audio_id:
            reply.append(tok)
    if reply is not None:  # reply cut off before <eos>
        out.append({"chunk": chunk, "text": tokenizer.decode(reply)})
    return out


def labels_to_timeline(tokenizer: Tokenizer, seq: StreamSequence) -> list[dict]:
    """Read the timeline back from the label streams alone (y_stream, y_LM)."""
    out: list[dict] = []
    chunk, reply = -1, None
    for s, w in zip(seq.y_stream, seq.y_lm):
        if s != MASK:
            chunk += 1
            reply = [] if s == tokenizer.response_id else None
        elif w != MASK and reply is not None:
            if w == tokenizer.eos_id:
                out.append({"chunk": chunk, "text": tokenizer.decode(reply)})
                reply = None
            else:
                reply.append(w)
    return out
