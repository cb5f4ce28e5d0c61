"""Cross-session batching: encoder and decoder workers shared by all of an Engine's sessions.

Without it every session runs its own forwards (two threads per session, each forward reading
all the weights). With `EngineOptions(batch=True)` the sessions' threads hand their forwards to
shared workers, which run whatever is waiting as ONE forward:

- encoder worker: the waiting chunks of all sessions as one (N, n_mels, frames) batch (every
  chunk is encoded on its own anyway, so this is exact up to float round-off);
- decoder worker: the waiting LM steps of all sessions — a drained chunk batch of one, a
  single reply token of another — as one ragged forward (`AudioLM.hidden_ragged`): linear
  layers over the concatenated tokens, attention per session against its own KV cache.

Nothing waits for a batch to fill: a worker takes what queued while its previous forward ran
(continuous batching), so a lone session pays only a thread hand-off (a worker lingers up to
3 ms only while several sessions' requests keep arriving). With one-thread torch ops (the
engine's default on 2 cores) two decoder workers take batches from the same queue, so decoding
uses both cores; a session has at most one forward in flight, so its steps stay in order and
its cache is only ever touched by one worker at a time.

Measured on 2 cores (BENCHMARKS.md): one ragged forward for 8 sessions' reply tokens is 2.7x,
for 8 chunk steps 1.8x faster than 8 separate forwards (`soundflow bench latency --parts
ragged`); 24 real-time sessions held vs 12 independent ones (`--parts capacity,capacity_batched`).
A session's state (its cache, positions, queue) stays its own; the workers only borrow a cache
for the duration of one forward while its session thread waits.

Isolation: a batch that fails is not everyone's failure. The worker re-runs its requests one by
one (after `undo` restores what the failed forward may have touched — the decoder truncates
each borrowed cache back to the request's start position), so only the request that fails on
its own gets the error; its batch-mates get their results a forward later.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

import torch

from .cache import truncate_cache


class _Request:
    __slots__ = ("payload", "cost", "done", "result", "error")

    def __init__(self, payload, cost: int):
        self.payload, self.cost = payload, cost
        self.done = threading.Event()
        self.result = self.error = None


class BatchWorker:
    """A thread that runs `fn(payloads) -> results` over all requests waiting, up to `max_cost`."""

    def __init__(self, fn: Callable[[list], list], name: str, max_cost: int = 1 << 30,
                 linger_s: float = 0.0, expected: Callable[[], int] | None = None, threads: int = 1,
                 undo: Callable[[object], None] | None = None):
        self.fn, self.max_cost, self.undo = fn, max_cost, undo
        self.linger_s, self.expected = linger_s, expected
        self._q: deque[_Request] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.stats = {"batches": 0, "requests": 0, "max_batch": 0, "retried": 0, "rescued": 0, "failed": 0}
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, payload, cost: int = 1):
        """Run `payload` in the next batch; block until its result (re-raises the batch's error)."""
        r = _Request(payload, cost)
        with self._cv:
            if self._closed:
                raise RuntimeError("batch worker is closed")
            self._q.append(r)
            self._cv.notify()
        r.done.wait()
        if r.error is not None:
            raise r.error
        return r.result

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join()

    def _take(self) -> list[_Request] | None:
        with self._cv:
            while True:
                while not self._q:
                    if self._closed:
                        return None
                    self._cv.wait()
                if self.linger_s and self.expected is not None and self.expected() > 1:
                    self._linger()
                if self._q:  # another worker may have taken them while this one lingered
                    break
            batch = [self._q.popleft()]
            cost = batch[0].cost
            while self._q and cost + self._q[0].cost <= self.max_cost:
                cost += self._q[0].cost
                batch.append(self._q.popleft())
            return batch

    def _linger(self) -> None:
        """Sessions whose chunks were encoded in one batch wake together and submit within a
        millisecond or two: while requests keep coming (gaps under 0.5 ms) and not all sessions
        are in, wait for them (at most linger_s) rather than run a batch of one and make the
        rest wait a whole forward. Called with the lock held."""
        deadline = time.monotonic() + self.linger_s
        while len(self._q) < self.expected() and not self._closed:
            n = len(self._q)
            rest = deadline - time.monotonic()
            if rest <= 0:
                return
            self._cv.wait(min(rest, 0.0005))
            if len(self._q) == n:
                return

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            retried = rescued = failed = 0
            try:
                with torch.inference_mode():
                    results = self.fn([r.payload for r in batch])
                for r, res in zip(batch, results):
                    r.result = res
            except BaseException as e:  # noqa: BLE001
                if len(batch) == 1:
                    batch[0].error = e
                    failed = 1
                else:  # find the culprit: each request alone, from a clean state
                    retried = len(batch)
                    for r in batch:
                        failed += self._run_alone(r)
                    rescued = retried - failed
            with self._cv:
                self.stats["batches"] += 1
                self.stats["requests"] += len(batch)
                self.stats["max_batch"] = max(self.stats["max_batch"], len(batch))
                self.stats["retried"] += retried
                self.stats["rescued"] += rescued
                self.stats["failed"] += failed
            for r in batch:
                r.done.set()


    def _run_alone(self, r: _Request) -> int:
        """Run one request of a failed batch by itself; 1 when it fails alone too."""
        try:
            if self.undo is not None:
                self.undo(r.payload)
            with torch.inference_mode():
                r.result = self.fn([r.payload])[0]
            return 0
        except BaseException as e:  # noqa: BLE001 — this request's own failure: its session only
            r.error = e
            return 1


class Batcher:
    """The encoder and decoder workers of one Engine (created when `EngineOptions.batch`)."""

    def __init__(self, model, max_tokens: int = 1024, linger_ms: float = 3.0, decoder_threads: int = 1):
        self.model = model
        self.ragged = model.supports_ragged
        self.sessions = 0  # attached sessions: a batch never waits for more requests than this
        self._count_lock = threading.Lock()
        linger = linger_ms / 1000
        self.encoder = BatchWorker(self._encode_batch, "sf-batch-enc", linger_s=linger, expected=self._expected)
        # a long prefill (a context rebuild) goes alone rather than delaying many small steps
        self.decoder = BatchWorker(self._forward_batch, "sf-batch-dec", max_cost=max_tokens,
                                   linger_s=linger, expected=self._expected, threads=decoder_threads,
                                   undo=self._undo_forward)

    def _expected(self) -> int:
        return self.sessions

    def attach(self) -> None:
        with self._count_lock:
            self.sessions += 1

    def detach(self) -> None:
        with self._count_lock:
            self.sessions -= 1

    # ---- used by sessions (in their own threads; these block until the batch ran)
    def encode(self, pcm) -> torch.Tensor:
        """One chunk's PCM (samples,) → adapted features (1, slots, d)."""
        return self.encode_heard(pcm)[0]

    def encode_heard(self, pcm) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`AudioLM.encode_heard` for one chunk's PCM: (adapted (1, slots, d), summary or None)."""
        return self.encoder.submit(torch.as_tensor(pcm))

    def hidden_last(self, embeds: torch.Tensor, cache, pos: int) -> torch.Tensor:
        """Append (L, d) embeddings at positions pos.. to `cache`; the last hidden state (d,)."""
        return self.decoder.submit((embeds, cache, pos), cost=embeds.shape[0])

    def close(self) -> None:
        self.encoder.close()
        self.decoder.close()

    @property
    def stats(self) -> dict:
        return {"encoder": dict(self.encoder.stats), "decoder": dict(self.decoder.stats)}

    # ---- run in the workers
    def _encode_batch(self, pcms: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        m = self.model
        out: list = [None] * len(pcms)
        by_len: dict[int, list[int]] = {}
        for i, x in enumerate(pcms):  # sessions may use different chunk sizes
            by_len.setdefault(x.shape[-1], []).append(i)
        for idx in by_len.values():
            enc, heard = m.encode_heard(m.features(torch.stack([pcms[i] for i in idx])))
            for j, i in enumerate(idx):
                out[i] = (enc[j : j + 1], heard[j : j + 1] if heard is not None else None)
        return out

    @staticmethod
    def _undo_forward(req) -> None:
        """A failed ragged forward may have appended some layers' keys/values: drop them."""
        _, cache, pos = req
        truncate_cache(cache, pos)

    def _forward_batch(self, reqs: list) -> list[torch.Tensor]:
        m = self.model
        if self.ragged:
            return m.hidden_ragged(reqs)
        # bodies hidden_ragged does not cover: one stream at a time, still off the sessions' threads
        return [m.hidden_last(e, cache, pos) for e, cache, pos in reqs]
