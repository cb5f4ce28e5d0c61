"""Streaming decoding primitives over a KV cache, and a plain sequential decoder.

The decoder's sequence at inference is the training sequence of Alg. 2, grown chunk by chunk:
[instruction] ([audio × 10] <ctrl> [reply <eos>]?)*. Two details keep it cheap:

- A control token that says `<silent>` (or a reply's `<eos>`) is not fed on its own: it waits in
  `pending` and is prepended to the next chunk's audio, so a silent chunk costs one forward.
- `feed_audio` takes several queued chunks at once (the FIFO engine's drain, Alg. 4) and puts
  `<silent>` between them, which is exactly the training format for chunks the model heard
  while busy: one forward, one decision for the newest chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch

from .audio import CHUNK_MS


@dataclass
class DecodeOptions:
    instruction: str | None = None
    instruction_audio: np.ndarray | None = None  # spoken instruction (16 kHz mono float32), heard first
    max_reply_tokens: int = 48
    threshold: float = 0.5  # respond when P(<response>) ≥ threshold (calibrate on held-out data)


@dataclass
class DecoderState:
    """Everything one stream's decoder carries between steps (moshi-style explicit state)."""

    cache: object
    pos: int = 0  # next position id
    pending: list[int] = field(default_factory=list)  # tokens emitted but not yet in the cache
    chunks: int = 0  # stream chunks consumed
    prefix_len: int = 0  # instruction positions (kept by context policies)
    batcher: object | None = None  # a batching.Batcher: forwards run batched with other sessions'


def _forward(model, state: DecoderState, embeds: torch.Tensor) -> torch.Tensor:
    """Append (1, L, d) embeddings to the cache; return the last position's hidden state."""
    runner = state.batcher if state.batcher is not None else model
    h = runner.hidden_last(embeds[0], state.cache, state.pos)
    state.pos += embeds.shape[1]
    return h


def _pending_embeds(model, state: DecoderState) -> list[torch.Tensor]:
    if not state.pending:
        return []
    ids = state.pending
    state.pending = []
    return [model.embed_ids(ids)]


@torch.inference_mode()
def encode_instruction_audio(model, wave: np.ndarray, chunk_ms: int = CHUNK_MS, encode=None) -> torch.Tensor:
    """A spoken instruction (16 kHz mono float32) → adapted features (m, slots, d): cut into
    `chunk_ms` chunks (the last zero-padded) and encoded by the stream's own encoder, exactly as
    training encodes a sample's `instruction_audio`. `encode(pcm) -> (1, slots, d)` replaces the
    model's encoder (a session's batch worker); empty audio gives m = 0."""
    from .audio import check_pcm
    from .data import split_chunks

    chunks = split_chunks(check_pcm(wave, "instruction audio"), chunk_ms)
    if not len(chunks):
        return torch.zeros(0, 0, 0)
    if encode is not None:
        return torch.cat([encode(c) for c in chunks])
    return model.encode(model.features(torch.from_numpy(chunks)))


@torch.inference_mode()
def start(model, instruction: str | None = None, instruction_audio: torch.Tensor | None = None,
          batcher=None) -> DecoderState:
    """New state with the instruction prefix in the cache: the text, then the spoken instruction
    (`instruction_audio`: adapted chunks (m, slots, d), see `encode_instruction_audio`) — the
    order of Alg. 2's instruction slot."""
    state = DecoderState(cache=model.new_cache(), batcher=batcher)
    parts = []
    if instruction:
        ids = model.tokenizer.encode(instruction)
        if ids:
            parts.append(model.embed_ids(ids))
    if instruction_audio is not None and instruction_audio.numel():
        ref = parts[0] if parts else model.embed_ids([model.tokenizer.silent_id])
        parts.append(instruction_audio.reshape(-1, instruction_audio.shape[-1]).to(ref.dtype))
    if parts:
        _forward(model, state, torch.cat(parts).unsqueeze(0))
    state.prefix_len = state.pos
    return state


@torch.inference_mode()
def feed_audio(model, state: DecoderState, audio: torch.Tensor) -> float:
    """Drain m adapted chunks (m, slots, d) into the cache; return P(<response>) for the newest."""
    silent = model.embed_ids([model.tokenizer.silent_id])
    parts = _pending_embeds(model, state)
    for i in range(audio.shape[0]):
        if i:
            parts.append(silent)  # chunks heard while busy were, in training terms, silent
        parts.append(audio[i].to(silent.dtype))
    h = _forward(model, state, torch.cat(parts).unsqueeze(0))
    state.chunks += audio.shape[0]
    return float(model.control_probs(h))


@torch.inference_mode()
def decide(model, state: DecoderState, p_response: float, threshold: float = 0.5) -> bool:
    """Emit the control token. `<silent>` waits in `pending`; `<response>` is returned to reply."""
    respond = p_response >= threshold
    tok = model.tokenizer
    state.pending.append(tok.response_id if respond else tok.silent_id)
    return respond


@torch.inference_mode()
def reply_tokens(model, state: DecoderState, max_tokens: int = 48) -> Iterator[int]:
    """Greedy reply after `<response>`: yields text token ids; leaves `<eos>` pending."""
    eos = model.tokenizer.eos_id
    banned = [model.tokenizer.silent_id, model.tokenizer.response_id, model.tokenizer.audio_id]
    for _ in range(max_tokens):
        h = _forward(model, state, torch.cat(_pending_embeds(model, state)).unsqueeze(0))
        logits = model.logits(h)
        logits[banned] = -float("inf")
        nxt = int(logits.argmax())
        state.pending.append(nxt)
        if nxt == eos:
            return
        yield nxt
    state.pending.append(eos)  # cut at the cap: close the reply as training did


def decode_stream(model, chunks: Iterable[np.ndarray], opts: DecodeOptions | None = None,
                  chunk_ms: int = CHUNK_MS) -> Iterator[dict]:
    """Sequential reference decoder (encode → decide → reply, one chunk at a time, no queue).

    Yields `{"type": "decision", ...}` per chunk and `{"type": "response", ...}` per reply."""
    opts = opts or DecodeOptions()
    spoken = None
    if opts.instruction_audio is not None:
        spoken = encode_instruction_audio(model, opts.instruction_audio, chunk_ms)
    state = start(model, opts.instruction, spoken)
    for k, chunk in enumerate(chunks):
        with torch.inference_mode():
            audio = model.encode(model.features(torch.as_tensor(chunk)[None]))
        p = feed_audio(model, state, audio)
        respond = decide(model, state, p, opts.threshold)
        t = (k + 1) * chunk_ms / 1000
        yield {"type": "decision", "chunk": k, "t": t, "decision": "response" if respond else "silent",
               "p_response": p}
        if respond:
            ids = list(reply_tokens(model, state, opts.max_reply_tokens))
            yield {"type": "response", "chunk": k, "t": t, "text": model.tokenizer.decode(ids)}
