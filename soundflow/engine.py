"""Asynchronous FIFO streaming engine (paper Alg. 4, Appendix "Asynchronous FIFO Inference").

One `Engine` holds a model; every stream/connection gets its own `Session` (moshi-style explicit
state: nothing is shared between sessions but the read-only model weights).

    engine = Engine(model, EngineOptions(...))
    sess = engine.session(instruction=None, instruction_audio=None)  # text and/or spoken (16 kHz float32)
    sess.feed(pcm)                 # float32 mono 16 kHz, any length; non-blocking
    sess.set_instruction(text, audio=None)  # new instruction mid-stream, text and/or spoken (barge-in if configured)
    sess.close()                   # flush the partial last chunk, finish, stop the threads
    sess.get_event(timeout=None)   # next event dict, or None (timeout / session over)
    for ev in sess.events(): ...   # until closed and drained
    for ev in sess.run(chunks, realtime=False): ...

Scheduling (mode="fifo", Alg. 4):

- encoder producer thread: takes chunks at arrival rate, encodes each exactly once
  (`model.encode(model.features(chunk))`) and appends the adapted features to the FIFO queue
  under a lock; it never waits for the decoder.
- decoder consumer thread: when its last token is `<silent>`/`<eos>` it waits until the queue
  is non-empty, flushes the WHOLE queue atomically and feeds all m chunks in one forward
  (`ContextWindow.feed`, in the layout of `tokens.chunk_run`: `<silent>` between them, the
  training format for chunks heard while busy), then emits one control token. Mid-reply it
  only runs autoregressive text steps and never touches the queue (unless barge-in is on, see below).
- every chunk gets exactly one decision event: in a drained batch the older chunks get
  `"silent"` with `"drained": true`, the newest gets the model's decision.
- the KV cache is never reset after a reply (memory across replies), and the encoder keeps
  listening while the decoder speaks.

mode="sequential" is the ablation baseline ("w/o FIFO"): one worker does encode → decide →
reply for one chunk at a time; chunks heard during a reply wait and are then decided one by one.
`drain=False` keeps the encoder thread and the queue but pops one chunk per decoder step (the
paper's "pop-one-at-a-time", the contrast it gives for drain-on-trigger's resume latency).

The stream's decoder state is one `decoding.ContextWindow` per session, made and driven by the
decoder thread only; the session itself holds threads, queues and events (`events.py`).

Context policy (`ContextWindow`): the cache holds the instruction prefix plus a recent window of
at most `max_context_chunks` chunks (75 = 30 s: about the 60-chunk streams the model is trained
on). When the window overflows, the oldest turns are evicted a block at a time (`evict_chunks`,
default half the window), so positions never leave the trained range and per-chunk cost and
memory stay flat over hours. The default `context_policy="shift"` drops the evicted turns' KV
entries and re-rotates the remaining keys (an elementwise pass, no stall); `"rebuild"` re-runs
the LM over the kept window — exact but a ~0.5 s prefill on 2 CPU cores that stalls one chunk
step; it is also used when an instruction turn leaves the window (the instruction moves into
the prefix).

Barge-in (`barge_in=True`): a new instruction cuts the current reply at the next token; and
mid-reply, whenever new chunks are queued, the decoder *probes* them (`ContextWindow.probe`:
feeds `<eos>` + the queued chunks, reads P(<response>), rolls the cache back) and cuts the
reply there when P ≥ `barge_in_threshold`; a new reply can then start.

Threads and torch: torch's intra-op pool is process-wide. On a small CPU (≤ 2 cores) the
engine sets `torch.set_num_threads(1)` by default (`EngineOptions.torch_threads`): the encoder
thread and the decoder thread then each run on one core and never oversubscribe, which
measured faster end to end than both sharing two intra-op threads (see bench/latency.py).
Each session costs two Python threads (one in sequential mode) that sleep on condition
variables when idle. With `batch=True` those threads hand their forwards to workers shared
by all the engine's sessions (one encoder worker, `batch_workers` decoder workers), which run
whatever is waiting as one batched forward (batching.py: twice the real-time sessions on 2
cores, see BENCHMARKS.md).
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from . import decoding
from .audio import CHUNK_MS, SAMPLE_RATE, Chunker, check_pcm, chunk_samples
from .events import Decision, Error, Event, Response, Token
from .tokens import AUDIO_SLOTS

_END = object()


@dataclass
class EngineOptions:
    mode: str = "fifo"  # "fifo" (Alg. 4) | "sequential" (ablation baseline, no queue)
    # fifo only: drain the whole queue at an interruption point (Alg. 4); False pops one chunk
    # per decoder step — the paper's "pop-one-at-a-time" contrast for drain-on-trigger
    drain: bool = True
    threshold: float = 0.5  # respond when P(<response>) >= threshold
    max_reply_tokens: int = 48
    instruction: str | None = None  # default instruction of new sessions
    # longest instruction accepted (tokens): it sits in the KV cache next to the audio window,
    # so it is bounded like the window (a longer one raises ValueError at the caller). A spoken
    # instruction counts its audio slots (10 per 400 ms chunk): 1024 positions = 40.8 s of speech
    max_instruction_tokens: int = 1024
    chunk_ms: int = CHUNK_MS
    max_context_chunks: int | None = 75  # recent window kept in the KV cache (None: unbounded)
    evict_chunks: int | None = None  # chunks evicted at a time (default: half the window)
    # "shift": drop the oldest turns' KV entries and re-rotate the rest (RoPE is relative), an
    # elementwise pass; "rebuild": re-run the LM over the kept window (a ~0.5 s prefill on CPU)
    context_policy: str = "shift"
    barge_in: bool = False
    barge_in_threshold: float | None = None  # default: max(threshold, 0.5)
    torch_threads: int | None = None  # None: 1 on machines with <= 2 cores, else as is; 0: as is
    # batch the forwards of all this engine's sessions (batching.py): more sessions per machine;
    # with int8 linears a session's numbers then depend on its batch-mates to int8 precision
    batch: bool = False
    batch_workers: int | None = None  # decoder workers with batch=True (None: 2 if torch runs 1 thread, else 1)
    # Testing/benchmark hook: policy(chunk, p_response) -> respond?  (overrides the threshold)
    policy: Callable[[int, float], bool] | None = None

    def __post_init__(self) -> None:
        if self.context_policy not in decoding.CONTEXT_POLICIES:
            raise ValueError(f"context_policy must be 'shift' or 'rebuild', not {self.context_policy!r}")
        if self.mode not in ("fifo", "sequential"):
            raise ValueError(f"mode must be 'fifo' or 'sequential', not {self.mode!r}")
        chunk_samples(self.chunk_ms)  # validates
        if self.max_context_chunks is not None and self.max_context_chunks < 2:
            raise ValueError("max_context_chunks must be >= 2 (or None)")


def _set_threads(n: int | None) -> None:
    if n is None:
        n = 1 if (os.cpu_count() or 1) <= 2 else None
    if n and torch.get_num_threads() != n:
        torch.set_num_threads(n)


class Engine:
    """Holds the model (shared, read-only) and the options; makes sessions."""

    def __init__(self, model, options: EngineOptions | None = None):
        self.model = model.eval()
        self.options = options or EngineOptions()
        _set_threads(self.options.torch_threads)
        self._ids = itertools.count()
        self._batcher = None
        self._batcher_lock = threading.Lock()

    @property
    def batcher(self):
        """The shared encoder/decoder workers (made on first use by a batching session)."""
        with self._batcher_lock:
            if self._batcher is None:
                from .batching import Batcher

                n = self.options.batch_workers
                if n is None:  # one-thread torch ops: a second decoder worker uses the second core
                    n = 2 if torch.get_num_threads() == 1 else 1
                self._batcher = Batcher(self.model, decoder_threads=n)
            return self._batcher

    def session(self, instruction: str | None = None, instruction_audio: np.ndarray | None = None,
                **overrides) -> "Session":
        """A new independent stream. `overrides` replace EngineOptions fields for this session.
        `instruction_audio`: a spoken instruction (16 kHz mono float32), heard before the stream
        (after the text `instruction` when both are given); ValueError when it is not valid
        audio or, with the text, longer than `max_instruction_tokens` positions."""
        opts = self.options
        if overrides:
            opts = EngineOptions(**{**opts.__dict__, **overrides})
        return Session(self.model, opts, instruction if instruction is not None else opts.instruction,
                       name=f"sf-session-{next(self._ids)}", batcher=self.batcher if opts.batch else None,
                       instruction_audio=instruction_audio)

    def close(self) -> None:
        """Stop the shared batch workers (sessions still running get an error event)."""
        with self._batcher_lock:
            if self._batcher is not None:
                self._batcher.close()
                self._batcher = None


@dataclass
class _Chunk:
    k: int
    avail: float  # perf_counter when its last sample was available
    encoded: float = 0.0  # perf_counter when its features were ready (input consumed)
    audio: torch.Tensor | None = None  # adapted features (1, slots, d) once encoded
    heard: torch.Tensor | None = None  # its summary (1, 2 d_enc) for a model with a sound trigger
    pcm: np.ndarray | None = None


def _heard(batch: list[_Chunk]) -> torch.Tensor | None:
    """The batch's chunk summaries for the sound trigger, None for a model without one."""
    return torch.cat([c.heard for c in batch]) if batch[0].heard is not None else None


class Session:
    """One stream's threads, queues and events over its `decoding.ContextWindow` (the decoder
    state, made and driven by the decoder thread). Thread-safe `feed` / `set_instruction` /
    `close`."""

    def __init__(self, model, opts: EngineOptions, instruction: str | None, name: str = "sf-session",
                 batcher=None, instruction_audio: np.ndarray | None = None):
        self.model = model
        self.opts = opts
        self._batcher = batcher
        self.instruction = instruction
        # the spoken instruction (A^ins): its PCM until the decoder thread encodes it into the
        # window's prefix (ValueError here, before any thread starts)
        self.instruction_audio = self._check_instruction_audio(instruction_audio, self._instruction_ids(instruction))
        self._chunk_s = opts.chunk_ms / 1000
        self._chunker = Chunker(opts.chunk_ms)
        self._k = 0  # chunks fed
        self._events: queue.Queue = queue.Queue()
        self._ended = False
        self._closed = False
        self._aborted = False
        self._lock = threading.Condition()  # guards the FIFO, counters, instruction
        self._fifo: deque[_Chunk] = deque()  # encoded chunks waiting for the decoder
        self._inbox: deque[_Chunk] = deque()  # raw chunks waiting for the encoder
        self._encoder_done = False
        self._decided = 0  # chunks with a decision
        self._busy = False  # decoder inside a step or reply
        self._new_instruction: tuple[str, np.ndarray | None] | None = None  # (text, spoken PCM) to apply
        self._counts = {"encoded": 0, "drains": 0, "barge_ins": 0}
        self._threads: list[threading.Thread] = []
        if opts.mode == "fifo":
            self._threads.append(threading.Thread(target=self._guard(self._encoder_loop), name=name + "-enc", daemon=True))
            self._threads.append(threading.Thread(target=self._guard(self._decoder_loop), name=name + "-dec", daemon=True))
        else:
            self._threads.append(threading.Thread(target=self._guard(self._sequential_loop), name=name + "-seq", daemon=True))
        self._window: decoding.ContextWindow | None = None  # made by the decoder thread
        self._barge = False  # the next decision's audio cut a reply (decoder thread only)
        if batcher is not None:
            batcher.attach()
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ public API
    def feed(self, pcm: np.ndarray, available_at: float | None = None) -> int:
        """Append PCM (float32 mono 16 kHz, any length). Non-blocking. Returns the number of
        complete chunks this call made. `available_at` (perf_counter) overrides the arrival
        stamp used for latency (e.g. a paced source's wall-clock arrival)."""
        if self._closed:
            raise RuntimeError("session is closed")
        pcm = check_pcm(pcm)  # AudioError for NaN/inf/|x| > MAX_PEAK; clips mild overshoot
        chunks = self._chunker.push(pcm)
        self._enqueue(chunks, available_at)
        return len(chunks)

    def set_instruction(self, text: str | None, audio: np.ndarray | None = None) -> None:
        """New instruction: fed at the next interruption point (cuts a reply if barge_in). It
        replaces the previous one, text or spoken (several set before that point: only the last
        is fed). `audio`: a spoken instruction (16 kHz mono float32), after the text as at session
        start, encoded and fed by the same code as a session-start one. ValueError (as at
        session start) when the text, or text and audio together, are over
        `max_instruction_tokens` positions, or the audio is not valid PCM (an AudioError)."""
        # validate in the caller's thread: the decoder never sees a bad one
        wave = self._check_instruction_audio(audio, self._instruction_ids(text))
        with self._lock:
            self._new_instruction = (text or "", wave)
            self._lock.notify_all()

    def _check_instruction_audio(self, wave, text_ids: list[int]) -> np.ndarray | None:
        """Validated spoken instruction (None when absent or empty). It costs its audio slots
        in the prefix, bounded with the text by `max_instruction_tokens`."""
        if wave is None:
            return None
        wave = check_pcm(wave, "instruction audio")  # AudioError (a ValueError): NaN/inf, |x| > 2
        if not len(wave):
            return None
        n = chunk_samples(self.opts.chunk_ms)
        chunks = -(-len(wave) // n)
        slots = AUDIO_SLOTS * self.opts.chunk_ms // CHUNK_MS
        cap = self.opts.max_instruction_tokens
        if chunks * slots + len(text_ids) > cap:
            most = (cap - len(text_ids)) // slots * n / SAMPLE_RATE
            raise ValueError(f"instruction audio of {len(wave) / SAMPLE_RATE:.1f} s takes {chunks * slots} positions"
                             + (f" (with the text's {len(text_ids)})" if text_ids else "")
                             + f", over the limit of {cap}: at most {max(0.0, most):.1f} s")
        return wave

    def _instruction_ids(self, text: str | None) -> list[int]:
        if not text:
            return []
        if not isinstance(text, str):
            raise ValueError("instruction must be a string")
        cap = self.opts.max_instruction_tokens
        if len(text) > 8 * cap:  # no tokenizer makes fewer tokens than chars / 8: skip the work
            raise ValueError(f"instruction of {len(text)} characters is longer than {cap} tokens")
        ids = self.model.tokenizer.encode(text)
        if len(ids) > cap:
            raise ValueError(f"instruction of {len(ids)} tokens is longer than the limit of {cap}")
        return ids

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Flush the partial last chunk (zero-padded), let the threads finish, stop them."""
        if not self._closed:
            self._enqueue(self._chunker.flush(), None)
            with self._lock:
                self._closed = True
                self._lock.notify_all()
        if wait:
            for t in self._threads:
                t.join(timeout)

    def abort(self) -> None:
        """Stop now, dropping queued audio (a client went away)."""
        with self._lock:
            self._aborted = self._closed = True
            self._inbox.clear()
            self._fifo.clear()
            self._lock.notify_all()

    def get_event(self, timeout: float | None = None) -> dict | None:
        """Next event, blocking up to `timeout`; None on timeout or once the session is over."""
        if self._ended:
            return None
        try:
            ev = self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if ev is _END:
            self._ended = True
            return None
        return ev

    def events(self) -> Iterator[dict]:
        """Every event until the session is closed and drained."""
        while True:
            ev = self.get_event()
            if ev is None:
                return
            yield ev

    @property
    def finished(self) -> bool:
        return self._ended

    @property
    def context(self) -> decoding.ContextWindow | None:
        """The stream's decoder state (None until the decoder thread has started it). Read it
        only while the session is idle (`wait_idle`) or over: the decoder thread drives it."""
        return self._window

    @property
    def cache_len(self) -> int:
        """Positions currently in the KV cache (prefix + window + replies)."""
        w = self._window
        return 0 if w is None else w.cache_len

    @property
    def queued(self) -> int:
        """Chunks encoded and waiting for the decoder (the FIFO)."""
        with self._lock:
            return len(self._fifo)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: chunks encoded, LM forwards, decoder steps (drains), evictions (rebuilds,
        shifts), replies cut by audio (barge_ins)."""
        w = self._window.stats if self._window is not None else {"forwards": 0, "rebuilds": 0, "shifts": 0}
        c = self._counts
        return {"encoded": c["encoded"], "forwards": w["forwards"], "drains": c["drains"],
                "rebuilds": w["rebuilds"], "shifts": w["shifts"], "barge_ins": c["barge_ins"]}

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every chunk fed so far has its decision and no reply is running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not (self._decided >= self._k and not self._busy) and not self._aborted:
                if not any(t.is_alive() for t in self._threads):
                    return False
                rest = None if deadline is None else deadline - time.monotonic()
                if rest is not None and rest <= 0:
                    return False
                self._lock.wait(0.05 if rest is None else min(rest, 0.05))
        return True

    def run(self, chunks: Iterable[np.ndarray], realtime: bool = False, speed: float = 1.0) -> Iterator[dict]:
        """Feed `chunks` and yield events as they come, then close and yield the rest.

        realtime=False: as fast as possible without queueing — the next chunk is fed once the
        previous one is decided (and its reply finished): deterministic, every chunk decided on
        its own. realtime=True: each chunk is fed when its last sample would have arrived on the
        wall clock (`speed` × real time); the FIFO drains what piles up during replies."""
        t0 = time.perf_counter()
        end_s = 0.0
        try:
            for chunk in chunks:
                chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
                if realtime:
                    end_s += len(chunk) / SAMPLE_RATE / speed
                    while True:
                        rest = t0 + end_s - time.perf_counter()
                        if rest <= 0:
                            break
                        ev = self.get_event(timeout=rest)
                        if ev is not None:
                            yield ev
                    self.feed(chunk, available_at=t0 + end_s)
                else:
                    self.feed(chunk)
                    self.wait_idle()
                yield from self._pending_events()
        except GeneratorExit:
            self.abort()
            raise
        self.close(wait=False)
        yield from self.events()
        self.close()

    # ------------------------------------------------------------------ internals
    def _pending_events(self) -> Iterator[dict]:
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return
            if ev is _END:
                self._ended = True
                return
            yield ev

    def _enqueue(self, chunks: list[np.ndarray], available_at: float | None) -> None:
        if not chunks:
            return
        now = time.perf_counter() if available_at is None else available_at
        with self._lock:
            for c in chunks:
                self._inbox.append(_Chunk(self._k, now, pcm=c))
                self._k += 1
            self._lock.notify_all()

    def _emit(self, ev: Event) -> None:
        self._events.put(ev.to_dict())

    def _guard(self, fn):
        def run():
            try:
                fn()
            except Exception as e:  # noqa: BLE001 — reported as an event, session ends
                self._emit(Error(f"{type(e).__name__}: {e}"))
                with self._lock:
                    self._aborted = True
                    self._lock.notify_all()
            finally:
                if threading.current_thread() is self._threads[-1]:
                    for t in self._threads[:-1]:
                        t.join()
                    if self._batcher is not None:
                        self._batcher.detach()
                    self._events.put(_END)
        return run

    def _encode(self, c: _Chunk) -> None:
        if self._batcher is not None:
            c.audio, c.heard = self._batcher.encode_heard(c.pcm)
        else:
            with torch.inference_mode():
                c.audio, c.heard = self.model.encode_heard(self.model.features(torch.as_tensor(c.pcm)[None]))
        c.pcm = None
        c.encoded = time.perf_counter()
        self._counts["encoded"] += 1

    def _take_inbox(self) -> _Chunk | None:
        """Next raw chunk, or None when closed and empty (or aborted)."""
        with self._lock:
            while not self._inbox:
                if self._closed or self._aborted:
                    return None
                self._lock.wait()
            return self._inbox.popleft()

    # ---- Alg. 4 EncoderLoop: producer, never waits for the decoder
    def _encoder_loop(self) -> None:
        while True:
            c = self._take_inbox()
            if c is None:
                break
            self._encode(c)
            with self._lock:
                self._fifo.append(c)  # atomic append
                self._lock.notify_all()
        with self._lock:
            self._encoder_done = True
            self._lock.notify_all()

    # ---- decoder side (shared by both modes)
    def _encode_spoken(self, wave: np.ndarray | None) -> torch.Tensor | None:
        """A spoken instruction's PCM → adapted chunks, in the decoder's thread (through the batch
        workers when batching): at session start and for a mid-stream one alike."""
        if wave is None:
            return None
        enc = self._batcher.encode if self._batcher is not None else None
        return decoding.encode_instruction_audio(self.model, wave, self.opts.chunk_ms, encode=enc)

    def _start(self) -> None:
        o = self.opts
        self._window = decoding.ContextWindow(
            self.model, self.instruction, self._encode_spoken(self.instruction_audio), max_chunks=o.max_context_chunks,
            evict_chunks=o.evict_chunks, policy=o.context_policy, batcher=self._batcher)

    def _decide(self, k: int, p: float) -> bool:
        if self.opts.policy is not None:
            return bool(self.opts.policy(k, p))
        return p >= self.opts.threshold

    def _t(self, k: int) -> float:
        return (k + 1) * self._chunk_s

    def _decision(self, c: _Chunk, respond: bool, p: float, now: float, **extra) -> Decision:
        return Decision(chunk=c.k, t=self._t(c.k), respond=respond, p_response=p,
                        latency_ms=(now - c.avail) * 1000, input_ms=(c.encoded - c.avail) * 1000, **extra)

    def _apply_instruction(self, instr: tuple[str, np.ndarray | None]) -> None:
        """A mid-stream instruction (text, spoken PCM or None) at an interruption point: it
        replaces the previous one, text or spoken; encoded as a session-start one is
        (`_encode_spoken`), and the window fits it in its budget (`ContextWindow.set_instruction`)."""
        text, wave = instr
        self.instruction = text or None
        self.instruction_audio = wave
        self._window.set_instruction(text, self._encode_spoken(wave))

    def _reply(self, c: _Chunk) -> None:
        """Greedy reply after <response>; token events; barge-in checks between tokens."""
        win, tok = self._window, self.model.tokenizer
        ids: list[int] = []
        text = ""
        gen = win.reply(self.opts.max_reply_tokens)
        cut = None
        probed = 0
        for nxt in gen:
            ids.append(nxt)
            if self._aborted:  # the client is gone: stop spending CPU on its reply
                cut = "aborted"
                break
            full = tok.decode(ids)  # incremental text: multi-byte pieces come out whole
            if full != text:
                self._emit(Token(c.k, full[len(text):] if full.startswith(text) else full))
                text = full
            if self.opts.barge_in:
                with self._lock:
                    if self._new_instruction is not None:
                        cut = "instruction"
                    queued = len(self._fifo)
                if cut is None and queued > probed:
                    probed = queued
                    if self._probe():
                        cut = "audio"
                if cut:
                    break
        gen.close()
        if cut:
            win.close_reply()
        self._emit(Response(c.k, self._t(c.k), tok.decode(ids), cut))
        if cut == "audio":
            self._counts["barge_ins"] += 1
            self._barge = True

    def _probe(self) -> bool:
        """Would the queued chunks cut the reply? P(<response>) ≥ the barge-in threshold had the
        reply ended here (the window rolls the tentative feed back)."""
        with self._lock:
            batch = list(self._fifo)
        if not batch:
            return False
        thr = self.opts.barge_in_threshold
        thr = max(self.opts.threshold, 0.5) if thr is None else thr
        return self._window.probe(torch.cat([c.audio for c in batch]), _heard(batch)) >= thr

    # ---- Alg. 4 DecoderLoop: event-driven consumer
    def _decoder_loop(self) -> None:
        self._start()
        while True:
            with self._lock:
                # r* is <silent>/<eos> here: wait until Q is non-empty (idle otherwise)
                while not self._fifo and self._new_instruction is None:
                    if self._aborted or (self._encoder_done and not self._fifo):
                        return
                    self._lock.wait()
                instr, self._new_instruction = self._new_instruction, None
                if self.opts.drain:
                    batch = list(self._fifo)  # atomic flush
                    self._fifo.clear()
                else:  # ablation: pop one chunk, one decision per decoder step
                    batch = [self._fifo.popleft()] if self._fifo else []
                self._busy = True
            try:
                if instr is not None:
                    self._apply_instruction(instr)
                if batch:
                    self._step(batch)
            finally:
                with self._lock:
                    self._busy = False
                    self._decided = max(self._decided, batch[-1].k + 1) if batch else self._decided
                    self._lock.notify_all()

    def _step(self, batch: list[_Chunk]) -> None:
        """One decoder step: feed the batch (evicting first if the window is full), decide the
        newest chunk, reply if it says so."""
        p = self._window.feed(torch.cat([c.audio for c in batch]), _heard(batch))
        if not math.isfinite(p):  # the state is poisoned: end this session (an error event), never emit NaN
            raise RuntimeError("the model produced a non-finite P(response); session state is corrupt")
        newest = batch[-1]
        respond = self._decide(newest.k, p)
        self._window.push_control(respond)
        now = time.perf_counter()
        self._counts["drains"] += 1
        for c in batch[:-1]:
            self._emit(self._decision(c, False, 0.0, now, drained=True))
        barge, self._barge = self._barge, False
        self._emit(self._decision(newest, respond, p, now, barge_in=barge))
        if respond:
            self._reply(newest)

    # ---- ablation baseline: encode → decide → reply, one chunk at a time, no queue
    def _sequential_loop(self) -> None:
        self._start()
        while True:
            c = self._take_inbox()
            if c is None:
                return
            with self._lock:
                self._busy = True
                instr, self._new_instruction = self._new_instruction, None
            try:
                if instr is not None:
                    self._apply_instruction(instr)
                self._encode(c)
                self._step([c])
            finally:
                with self._lock:
                    self._busy = False
                    self._decided = c.k + 1
                    self._lock.notify_all()
