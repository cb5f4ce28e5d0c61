"""Streaming decoding over a KV cache: one stream's state as an explicit object, and a plain
sequential decoder.

The decoder's sequence at inference is the training sequence of Alg. 2, grown chunk by chunk:
[instruction] ([audio × 10] <ctrl> [reply <eos>]?)*. Two details keep it cheap:

- A control token that says `<silent>` (or a reply's `<eos>`) is not fed on its own: it waits in
  `pending` and is prepended to the next chunk's audio, so a silent chunk costs one forward.
- `feed_audio` takes several queued chunks at once (the FIFO engine's drain, Alg. 4) in the
  layout of `tokens.chunk_run` (`<silent>` between them, the training format for chunks the
  model heard while busy): one forward, one decision for the newest chunk.

Two levels (moshi-style: a stream's state is one explicit object driven by a small API):

- `DecoderState` + the functions `start`, `feed_audio`, `decide`, `reply_tokens`: the bare
  cache and positions, unbounded (`decode_stream`, the sequential reference decoder, uses them).
- `ContextWindow`: what a long-running stream (engine.Session) drives. It owns a DecoderState
  and records each turn it feeds, so that it can keep the cache to the instruction prefix plus
  a window of recent chunks, evicting the oldest turns by `"shift"` (drop their KV entries and
  re-rotate the rest) or `"rebuild"` (`start` again and replay the kept turns: the cache a fresh
  decoder would build from the kept window). API: `feed(audio) -> P(<response>)`,
  `push_control(respond)`, `reply(max_tokens)`, `close_reply()`, `set_instruction(text, audio)`,
  `probe(audio)` (a tentative feed, rolled back). One thread at a time drives a window.

A model with a sound trigger (trigger.py) also needs each chunk's encoder summary (`heard`, from
`AudioLM.encode_heard`): the state keeps the trigger's evidence, and a `<response>` empties it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch

from .audio import CHUNK_MS
from .cache import shift_cache, truncate_cache
from .tokens import AUDIO_SLOTS, chunk_run
from .trigger import TriggerState, combine

# Long prefills (an instruction, a context rebuild) run in blocks of this many positions: the
# attention scores then take block × context memory instead of context² (a 4,800-position
# rebuild of tiny went from ~370 MB of transient scores per layer to ~20 MB), and a batched
# prefill no longer occupies a decoder worker alone for the whole length.
PREFILL_BLOCK = 256
CONTEXT_POLICIES = ("shift", "rebuild")


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
    trigger: TriggerState | None = None  # the sound trigger's evidence, for a model with one


def _forward(model, state: DecoderState, embeds: torch.Tensor) -> torch.Tensor:
    """Append (1, L, d) embeddings to the cache; return the last position's hidden state."""
    runner = state.batcher if state.batcher is not None else model
    h = runner.hidden_last(embeds[0], state.cache, state.pos)
    state.pos += embeds.shape[1]
    return h


def _prefill(model, state: DecoderState, embeds: torch.Tensor) -> None:
    """Append (1, L, d) embeddings to the cache in blocks (causal attention: the same result)."""
    for i in range(0, embeds.shape[1], PREFILL_BLOCK):
        _forward(model, state, embeds[:, i : i + PREFILL_BLOCK])


def _pending_embeds(model, state: DecoderState) -> list[torch.Tensor]:
    if not state.pending:
        return []
    ids = state.pending
    state.pending = []
    return [model.embed_ids(ids)]


def _run_embeds(model, ids: list[int], audio: torch.Tensor | None = None) -> torch.Tensor:
    """(L, d) embeddings of the tokens `ids`, then of the adapted chunks `audio` (m, slots, d)
    laid out as `tokens.chunk_run` (their audio slots filled in order, as training does)."""
    tok = model.tokenizer
    n = len(ids)
    layout = list(ids) + (chunk_run(tok, audio.shape[0], audio.shape[1]) if audio is not None else [])
    x = model.embed_ids(layout)
    if audio is not None and audio.shape[0]:
        mask = torch.zeros(len(layout), dtype=torch.bool, device=x.device)
        mask[n:] = torch.tensor(layout[n:], device=x.device) == tok.audio_id
        x = x.masked_scatter(mask.unsqueeze(-1), audio.to(x.dtype).reshape(-1, x.shape[-1]))
    return x


def _run_len(ids: list[int], audio: torch.Tensor | None) -> int:
    """Cache positions `_run_embeds(model, ids, audio)` takes."""
    if audio is None or not audio.shape[0]:
        return len(ids)
    m, slots = audio.shape[0], audio.shape[1]
    return len(ids) + m * slots + m - 1  # len(chunk_run(tok, m, slots)), without building it


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
    if getattr(model, "trigger", None) is not None:
        state.trigger = TriggerState.of(model.trigger)
    x = _instruction_embeds(model, instruction, instruction_audio)
    if x is not None:
        _prefill(model, state, x.unsqueeze(0))
    state.prefix_len = state.pos
    return state


def _instruction_embeds(model, text: str | None, audio: torch.Tensor | None) -> torch.Tensor | None:
    """(L, d) embeddings of an instruction slot — the text's tokens, then the spoken
    instruction's adapted chunks (m, slots, d), slot after slot — or None when both are empty.
    The one layout of an instruction, whether it is the prefix (`start`) or given mid-stream
    (`ContextWindow.set_instruction`)."""
    parts = []
    if text:
        ids = model.tokenizer.encode(text)
        if ids:
            parts.append(model.embed_ids(ids))
    if audio is not None and audio.numel():
        ref = parts[0] if parts else model.embed_ids([model.tokenizer.silent_id])
        parts.append(audio.reshape(-1, audio.shape[-1]).to(ref.dtype))
    return torch.cat(parts) if parts else None


@torch.inference_mode()
def feed_audio(model, state: DecoderState, audio: torch.Tensor, heard: torch.Tensor | None = None) -> float:
    """Drain m adapted chunks (m, slots, d) into the cache after the pending tokens, in the
    layout of `tokens.chunk_run`; return P(<response>) for the newest. `heard`: the chunks'
    rows from `AudioLM.encode_heard` (summaries, and log-mels for a trigger's verifier), required
    when the model has a sound trigger."""
    if state.trigger is not None:
        if heard is None:
            raise ValueError("this model has a sound trigger: feed_audio needs the chunks' summaries "
                             "(AudioLM.encode_heard)")
        state.trigger.push(heard)
    ids, state.pending = state.pending, []
    h = _forward(model, state, _run_embeds(model, ids, audio).unsqueeze(0))
    state.chunks += audio.shape[0]
    p_lm = float(model.control_probs(h))
    if state.trigger is None:
        return p_lm
    p_trig = state.trigger.score(model.trigger, model.summarize)
    state.trigger.last = (p_lm, p_trig)
    return float(combine(p_lm, p_trig))


@torch.inference_mode()
def decide(model, state: DecoderState, p_response: float, threshold: float = 0.5) -> bool:
    """Emit the control token. `<silent>` waits in `pending`; `<response>` is returned to reply."""
    respond = p_response >= threshold
    push_control(model, state, respond)
    return respond


def push_control(model, state: DecoderState, respond: bool) -> None:
    """Append the decided control token (`<response>` or `<silent>`) to `pending`."""
    tok = model.tokenizer
    state.pending.append(tok.response_id if respond else tok.silent_id)
    if respond and state.trigger is not None:
        state.trigger.replied()  # the sound that called for this reply is answered


def _next_token(model, state: DecoderState) -> int:
    """One greedy reply step: feed `pending`, leave the next text token (or `<eos>`) pending."""
    tok = model.tokenizer
    h = _forward(model, state, torch.cat(_pending_embeds(model, state)).unsqueeze(0))
    logits = model.logits(h)
    logits[[tok.silent_id, tok.response_id, tok.audio_id]] = -float("inf")
    nxt = int(logits.argmax())
    state.pending.append(nxt)
    return nxt


def named_reply(model, state: DecoderState) -> str | None:
    """The reply the model was trained to give the sound its trigger named, when the trigger
    called for this reply and its namer is sure enough (`trigger.TRIGGER_NAME_MIN`); else None."""
    from .trigger import TRIGGER_NAME_MIN

    named = state.trigger.named if state.trigger is not None else None
    if named is None or named[1] < TRIGGER_NAME_MIN:
        return None
    return model.trigger.replies[named[0]]


def _named_reply_tokens(model, state: DecoderState, max_tokens: int) -> Iterator[int]:
    """The named reply's tokens, left pending (fed with the next forward, as generated ones are)."""
    text = named_reply(model, state)
    state.trigger.named = None
    for t in model.tokenizer.encode(text)[:max_tokens]:
        state.pending.append(t)
        yield t
    state.pending.append(model.tokenizer.eos_id)


@torch.inference_mode()
def reply_tokens(model, state: DecoderState, max_tokens: int = 48) -> Iterator[int]:
    """Reply after `<response>`: yields text token ids; leaves `<eos>` pending. Greedy from the
    LM, except after a sound the trigger named: then the reply trained for that sound, written
    into the context as if the LM had said it (the LM does not learn which sound it heard on
    this project's budget; the namer does — trigger.py)."""
    eos = model.tokenizer.eos_id
    if named_reply(model, state) is not None:
        yield from _named_reply_tokens(model, state, max_tokens)
        return
    for _ in range(max_tokens):
        nxt = _next_token(model, state)
        if nxt == eos:
            return
        yield nxt
    state.pending.append(eos)  # cut at the cap: close the reply as training did


@dataclass
class _Turn:
    """What one step fed into the cache, in order, so the window can be rebuilt after an eviction:
    `segments` of (token ids, then adapted chunks or None) — a drained chunk batch with the
    tokens pending before it, then the reply steps."""

    segments: list[tuple[list[int], torch.Tensor | None]] = field(default_factory=list)
    chunks: int = 0
    instruction: bool = False
    # an instruction turn's own tokens (not in `segments`: a rebuild moves the latest instruction
    # to the prefix) — cache positions, and the same counted in window units (chunks) so that
    # instructions are evicted like audio instead of piling up outside the budget
    instr_positions: int = 0
    cost: int = 0

    def positions(self) -> int:
        """Cache positions this turn occupies."""
        return self.instr_positions + sum(_run_len(ids, audio) for ids, audio in self.segments)


class ContextWindow:
    """One stream's decoder: the KV cache holding the instruction prefix plus a window of at most
    `max_chunks` recent chunks (None: unbounded), and the record of the turns in it.

    When a feed would overflow the window, the oldest turns are evicted a block at a time
    (`evict_chunks`, default half the window) down to `max_chunks - evict_chunks`, so positions
    never leave the trained range and per-chunk cost and memory stay flat over hours:

    - `policy="shift"` drops the evicted turns' KV entries and re-rotates the remaining keys n
      positions down (`cache.shift_cache`; RoPE is relative, so this equals having computed them
      at the lower positions; the kept entries still carry what they attended to, as in
      StreamingLLM with the instruction prefix as the attention sink): an elementwise pass.
    - `policy="rebuild"` `start`s a new cache and replays the kept turns from their inputs:
      exactly the cache a fresh decoder builds from the kept window, at the cost of a prefill.
      It is also used whenever an instruction turn leaves the window (the latest instruction
      moves into the prefix; superseded ones are dropped), and when a new instruction does not
      fit in the window.

    Driven by one thread at a time. `stats` counts forwards, rebuilds and shifts."""

    def __init__(self, model, instruction: str | None = None, instruction_audio: torch.Tensor | None = None,
                 *, max_chunks: int | None = None, evict_chunks: int | None = None, policy: str = "shift",
                 batcher=None):
        if policy not in CONTEXT_POLICIES:
            raise ValueError(f"context policy must be 'shift' or 'rebuild', not {policy!r}")
        if max_chunks is not None and max_chunks < 2:
            raise ValueError("max_chunks must be >= 2 (or None)")
        self.model = model
        self.max_chunks, self.evict_chunks, self.policy = max_chunks, evict_chunks, policy
        self.instruction = instruction or None
        self.instruction_audio = instruction_audio  # adapted chunks (m, slots, d), kept for rebuilds
        self.stats = {"forwards": 0, "rebuilds": 0, "shifts": 0}
        self._turns: deque[_Turn] = deque()
        self.window_chunks = 0  # chunks (and instructions, in chunk units) in the window
        self._state = start(model, self.instruction, instruction_audio, batcher=batcher)
        self.stats["forwards"] += 1 if self._state.pos else 0

    # ---- read-only views
    @property
    def pos(self) -> int:
        """Next position id (= cache length: positions stay contiguous through evictions)."""
        return self._state.pos

    @property
    def chunks(self) -> int:
        """Stream chunks fed so far (evicted ones included)."""
        return self._state.chunks

    @property
    def prefix_len(self) -> int:
        return self._state.prefix_len

    @property
    def pending(self) -> tuple[int, ...]:
        """Tokens decided but not yet in the cache (fed before the next input)."""
        return tuple(self._state.pending)

    @property
    def cache(self):
        return self._state.cache

    @property
    def cache_len(self) -> int:
        """Positions in the KV cache (prefix + window + replies)."""
        return int(self._state.cache.get_seq_length())

    @property
    def turns(self) -> int:
        """Turns recorded in the window."""
        return len(self._turns)

    # ---- the stream
    def feed(self, audio: torch.Tensor, heard: torch.Tensor | None = None) -> float:
        """Feed m adapted chunks (m, slots, d) heard since the last feed in one forward (after
        the pending tokens; `<silent>` between them), evicting first if they would overflow the
        window. Returns P(<response>) for the newest chunk. `heard`: as in `feed_audio`."""
        m = audio.shape[0]
        self._evict(m)
        st = self._state
        turn = _Turn(segments=[(list(st.pending), audio)], chunks=m)
        p = feed_audio(self.model, st, audio, heard)
        self.stats["forwards"] += 1
        self._turns.append(turn)
        self.window_chunks += m
        return p

    def push_control(self, respond: bool) -> None:
        """The decision on the newest chunk: `<response>` (then `reply`) or `<silent>`."""
        push_control(self.model, self._state, respond)

    @torch.inference_mode()
    def reply(self, max_tokens: int = 48) -> Iterator[int]:
        """Reply after `<response>` (greedy, or the named reply as `reply_tokens`): yields text
        token ids, leaves `<eos>` pending (also at the cap). Closing the generator early leaves the
        last token pending: `close_reply`."""
        if not self._turns:
            raise RuntimeError("reply before any feed")
        st, turn = self._state, self._turns[-1]
        eos = self.model.tokenizer.eos_id
        if named_reply(self.model, st) is not None:  # recorded with the next feed, which feeds them
            yield from _named_reply_tokens(self.model, st, max_tokens)
            return
        for _ in range(max_tokens):
            turn.segments.append((list(st.pending), None))  # what this step feeds
            nxt = _next_token(self.model, st)
            self.stats["forwards"] += 1
            if nxt == eos:
                return
            yield nxt
        st.pending.append(eos)  # cut at the cap: close the reply as training did

    def close_reply(self) -> None:
        """End a reply cut short (barge-in): `<eos>` pending, as training closes every reply."""
        self._state.pending.append(self.model.tokenizer.eos_id)

    @torch.inference_mode()
    def probe(self, audio: torch.Tensor, heard: torch.Tensor | None = None) -> float:
        """P(<response>) had the current reply ended now (`<eos>`) and the chunks `audio` been
        fed; the cache, positions, pending tokens and trigger evidence are rolled back afterwards."""
        st = self._state
        saved = (st.pos, list(st.pending), st.chunks, st.trigger.copy() if st.trigger is not None else None)
        st.pending = st.pending + [self.model.tokenizer.eos_id]
        try:
            p = feed_audio(self.model, st, audio, heard)
        finally:
            truncate_cache(st.cache, saved[0])
            st.pos, st.pending, st.chunks, st.trigger = saved
        self.stats["forwards"] += 1
        return p

    @torch.inference_mode()
    def set_instruction(self, text: str | None, audio: torch.Tensor | None = None) -> None:
        """A new instruction from now on — text and/or a spoken one (`audio`: adapted chunks
        (m, slots, d), see `encode_instruction_audio`), laid out as the prefix lays them out
        (`start`); it replaces the previous one, text and spoken alike. It costs window room like
        audio (its positions / positions-per-chunk, in chunks); when it does not fit, turns are
        evicted and the cache rebuilt with it as the prefix, so any number of instructions leaves
        the cache bounded. Empty/None: no instruction from the next rebuild on."""
        self.instruction = text or None
        self.instruction_audio = audio if audio is not None and audio.numel() else None
        x = _instruction_embeds(self.model, self.instruction, self.instruction_audio)
        if x is None:
            return
        cost = -(-x.shape[0] // (AUDIO_SLOTS + 1))
        cap = self.max_chunks
        if cap is not None and self.window_chunks + cost > cap:
            self._rebuild()  # this instruction becomes the prefix
            return
        st = self._state
        # only the tokens before the instruction are recorded: a rebuild puts the latest
        # instruction in the prefix and drops superseded ones
        turn = _Turn(segments=[(list(st.pending), None)] if st.pending else [], instruction=True,
                     instr_positions=x.shape[0], cost=cost)
        _prefill(self.model, st, torch.cat(_pending_embeds(self.model, st) + [x]).unsqueeze(0))
        self.stats["forwards"] += 1
        self._turns.append(turn)
        self.window_chunks += cost

    # ---- eviction
    def _evict(self, incoming: int) -> None:
        """Keep the prefix + at most max_chunks recent chunks: when `incoming` chunks would
        overflow the window, evict whole turns (oldest first) down to max_chunks - evict_chunks
        and shift or rebuild once, amortised over evict_chunks chunks."""
        cap = self.max_chunks
        if cap is None or self.window_chunks + incoming <= cap:
            return
        block = self.evict_chunks or max(1, cap // 2)
        target = max(0, cap - block)
        evicted = []
        while self._turns and self.window_chunks > target:
            evicted.append(self._turns.popleft())
            self.window_chunks -= evicted[-1].chunks + evicted[-1].cost
        if self.policy == "shift" and not any(t.instruction for t in evicted) and self._shift(evicted):
            return
        self._rebuild()  # also when an instruction turn leaves the window: it must move to the prefix

    def _shift(self, evicted: list[_Turn]) -> bool:
        """Drop the evicted turns' positions after the prefix and move the window down by
        re-rotating its keys. False if the record does not add up (then the caller rebuilds)."""
        st = self._state
        n = sum(t.positions() for t in evicted)
        if st.prefix_len + n + sum(t.positions() for t in self._turns) != st.cache.get_seq_length():
            return False
        shift_cache(st.cache, st.prefix_len, n, self.model.rotary_emb)
        st.pos -= n
        self.stats["shifts"] += 1
        return True

    @torch.inference_mode()
    def _rebuild(self) -> None:
        """`start` a new cache (the current instruction prefix) and replay the kept turns."""
        old = self._state
        new = start(self.model, self.instruction, self.instruction_audio, batcher=old.batcher)
        parts = []
        for i, t in enumerate(self._turns):
            if t.instr_positions:  # its instruction is superseded, or is the prefix now
                self.window_chunks -= t.cost
                t.instr_positions = t.cost = 0
            if i == 0 and t.segments and t.segments[0][0]:
                # the control token (or <eos>) of an evicted chunk: the window starts at audio
                t.segments[0] = ([], t.segments[0][1])
                if t.segments[0][1] is None:
                    t.segments.pop(0)
            parts += [_run_embeds(self.model, ids, audio) for ids, audio in t.segments
                      if ids or audio is not None]
        new.pending, new.chunks, new.trigger = list(old.pending), old.chunks, old.trigger
        if parts:
            _prefill(self.model, new, torch.cat(parts).unsqueeze(0))
        self._state = new
        self.stats["rebuilds"] += 1
        self.stats["forwards"] += 1


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
            audio, heard = model.encode_heard(model.features(torch.as_tensor(chunk)[None]))
        p = feed_audio(model, state, audio, heard)
        respond = decide(model, state, p, opts.threshold)
        t = (k + 1) * chunk_ms / 1000
        yield {"type": "decision", "chunk": k, "t": t, "decision": "response" if respond else "silent",
               "p_response": p}
        if respond:
            ids = list(reply_tokens(model, state, opts.max_reply_tokens))
            yield {"type": "response", "chunk": k, "t": t, "text": model.tokenizer.decode(ids)}
