"""WebSocket streaming server and browser page: `soundflow serve`.

One process holds one model and one `Engine`; every WebSocket connection gets its own engine
session (its own decoder state, KV cache, queues and instruction — nothing is shared between
sessions but the weights). The browser page is served at `/`; `/healthz` answers for probes.

Protocol, version 1 — `ws://HOST:PORT/v1/stream`
------------------------------------------------

Authentication (only when the server has a token): `Authorization: Bearer TOKEN` on the upgrade
request, or `?token=TOKEN` in the URL (browsers cannot set headers on a WebSocket). A missing or
wrong token refuses the upgrade (HTTP 403) before any message is exchanged.

Origin and Host (checked before the token, HTTP 403 on refusal): a browser page may open a
stream only from the server's own origin (`Origin` equal to the request's `Host`) or from an
origin given with `--allow-origin` (`*`: any); a request without `Origin` (not a browser page)
is let through to the token check. On a loopback bind, the `Host` header (of the upgrade and of
every HTTP request) must be a loopback name (`localhost`, `127.x.x.x`, `[::1]`): a rebound DNS
name pointing at 127.0.0.1 is refused. A non-loopback `--host` needs a token; without one the
server refuses to start unless `--insecure` is given.

1. Client → server, first message, a JSON text frame (within 10 s):

       {"type": "hello", "version": 1, "sample_rate": 16000, "chunk_ms": 400,
        "format": "f32le" | "s16le", "instruction": "optional text",
        "instruction_audio": "base64…" | {"samples": N}}

   `chunk_ms` may be omitted (it must equal the server's when present); `format` defaults to
   `f32le`. `instruction_audio` (optional) is a spoken instruction, heard before the stream (the
   paper's audio-instruction setting; after the text when both are given), in one of two forms:
   - `{"samples": N}`: the next N samples the client sends, as ordinary binary frames in the
     negotiated format (each at most `max_frame_samples`, validated like stream frames), are the
     instruction; the server answers `ready` once it has all N (within the handshake timeout).
     Samples past the N-th in the last of those frames are the start of the stream. This is
     what the page sends, and the form for anything longer than a few seconds.
   - a string: base64 of an audio file (WAV, FLAC, Ogg: any rate and channels, downmixed and
     resampled) or of raw 16 kHz mono PCM in the negotiated format. The whole hello must fit in
     one WebSocket message (256 KiB): about 6 s of s16le or 3 s of f32le.
   At most `max_instruction_audio_s` (20 s) and, with the text, `max_instruction_tokens`
   positions (a 400 ms chunk takes 10): longer gets `instruction_too_long` — for the
   `{"samples": N}` form before any audio is sent. The server answers

       {"type": "ready", "version": 1, "session": "3f9c…", "sample_rate": 16000, "chunk_ms": 400,
        "format": "f32le", "max_frame_samples": 16000, "max_queue_chunks": 16, "threshold": 0.5}

   or `{"type": "error", "code": CODE, "message": "…"}` and closes the connection (close code
   1008, or 1013 for `busy`). Handshake codes: `bad_json`, `bad_handshake` (not a hello object,
   a field of the wrong type), `unsupported_version`, `unsupported_sample_rate`,
   `unsupported_chunk_ms`, `unsupported_format` (each must be exactly the JSON integer /
   string expected: `true` is not version 1), `instruction_too_long` (over 4000 characters, or
   over the engine's `max_instruction_tokens`, 1024 by default; instruction audio over
   `max_instruction_audio_s`), `malformed_frame` (instruction audio with NaN/inf or
   out-of-range samples, or a frame of it too large or not whole samples), `handshake_timeout`, `busy`
   (the server is at `max_sessions`), `rate_limited` (1013: too many instructions server-wide,
   see below). A malformed `instruction_audio` (not base64, an undecodable file, a text frame
   where its frames were due) is a `bad_handshake`. Any malformed hello gets an error event, never a dropped
   socket. A handshake error concerns that connection only; other sessions are not touched.

2. Client → server, after `ready`:
   - binary frames: mono 16 kHz PCM in the negotiated format (little-endian float32 in [-1, 1]
     or int16), any length from 1 sample to `max_frame_samples` (1 s). Frames need not align
     with chunks; the server cuts the stream into `chunk_ms` chunks. Float samples slightly
     outside [-1, 1] (up to ±2: resampler ringing, gain) are clipped to [-1, 1]; a frame with
     NaN/inf or any |sample| > 2 (int16 values sent as float, garbage) is refused whole.
   - `{"type": "instruction", "text": "…"}` — replace the instruction from now on. At most
     4000 characters and `max_instruction_tokens` tokens; a burst of 4, then one per 2 s per
     session, and a burst of 8, then one per second for all sessions together, hello
     instructions included, so reconnecting buys no more (`rate_limited` beyond). Instructions replace each other: the newest one costs context
     room like audio (its tokens counted in chunks of 11 positions) and, when it does not fit,
     becomes the cache's prefix in a rebuild that drops the superseded ones — so the KV cache
     stays within instruction + window however many are sent.
   - `{"type": "instruction", "text": "optional", "audio": "base64…" | {"samples": N}}` — a
     spoken instruction mid-session (an addition within version 1), in the hello's two forms
     and with its limits; it replaces the instruction, text or spoken, like a text one (the
     same rate limits; text and audio together bounded by `max_instruction_tokens`).
     `{"samples": N}`: the next N samples of binary frames, counted in whole samples, are the
     instruction, not stream audio — the stream pauses meanwhile, and samples past the N-th in
     the last frame continue the stream. A well-formed announcement claims its N samples even
     when the instruction is refused (too long, rate limited, a bad frame among them): they are
     read and dropped, so a client never waits for an answer and instruction audio never leaks
     into the stream. A text frame before all N arrived drops that instruction (`bad_message`)
     and is then handled as usual. Errors (the session goes on): `instruction_too_long`,
     `malformed_frame` (NaN/inf, out of range), `frame_too_large`, `bad_message` (not base64,
     not audio, a malformed `audio` or `text`), `rate_limited`.
   - `{"type": "end"}` — no more audio: the last partial chunk is flushed (zero-padded), every
     remaining event is sent, then `{"type": "end", "chunks": N}` and a normal close (1000).

3. Server → client, JSON text frames:
   - `{"type": "decision", "chunk": k, "t": seconds, "decision": "silent"|"response",
      "p_response": p, "latency_ms": ms, "input_ms": ms}` — exactly one per chunk, in order
      (`"drained": true` marks a chunk heard while the decoder was busy and decided silent in a
      FIFO batch; `input_ms` is arrival → encoded);
   - `{"type": "token", "chunk": k, "text": "…"}` — a reply streamed piece by piece;
   - `{"type": "response", "chunk": k, "t": seconds, "text": "…"}` — the complete reply;
   - `{"type": "error", "code": CODE, "message": "…"}` — a frame or message was refused; the
     session goes on. Codes: `malformed_frame` (byte count not a whole number of samples,
     NaN/inf or out-of-range samples), `frame_too_large` (more than `max_frame_samples`),
     `bad_message` (unparsable or unknown text frame, instruction not a string),
     `instruction_too_long`, `rate_limited`, `engine_error` (the engine reported a failure).
     A refused frame is dropped whole: the stream continues as if it was never sent. After 100
     refusals the server sends `too_many_errors` and closes (1008). If the engine session
     itself fails — before or after `end` — `engine_error` is the last event (no `end`) and the
     server closes the connection with 1011. A session that sends nothing for `--idle-timeout`
     (60 s) gets `idle_timeout` and a 1008 close.
   Every number is finite: the engine ends a session whose model output is not (an
   `engine_error`) rather than send NaN, which is not JSON.

Isolation: one session's input cannot fail another's. Input is validated at this edge (above)
and again in the engine; with batching (batching.py) a batched forward that raises is re-run
request by request, so only the session whose input fails on its own gets `engine_error`.

Backpressure: the server reads audio only while fewer than `max_queue_chunks` chunks are
waiting for their decision to be *sent* to the client, and fewer than 64 events of any kind
(refusals included) are queued for it. Beyond that it stops reading the socket,
so the client's sends block through ordinary WebSocket/TCP flow control; nothing is dropped and
no error is sent. A client may therefore stream a file as fast as it likes (the page's "fast"
mode does) and will be paced by the model, and a client that stops reading its events stops
being read. Messages larger than 256 KiB (4 s of float32 audio) are refused at the WebSocket
layer (close 1009): with at most 32 messages buffered below the application, a client that is
not being read can make the server hold at most 8 MiB for it.

A client that disappears (socket closed or reset, even in the middle of a reply) has its engine
session aborted (queued audio dropped; a reply in progress stops at its token cap) and its slot
freed; the other sessions keep running. Liveness is judged only while the server listens: a
half-open connection (the peer vanished without a FIN) is found by the idle timeout, which runs
only while the server is reading that client. The server sends no WebSocket pings: a pong is
read in order behind the client's audio, so while backpressure has stopped the reading
(the engine is behind) every ping times out, and a session that was merely slow was closed as
dead (1011) in the overloaded soak (BENCHMARKS.md). An HTTP connection that has not finished its
request headers within 10 s, or sits idle between requests, is closed.

Threads: the event loop never runs torch. Each session has the engine's own threads plus one
pump thread that blocks on `get_event` and hands events to the loop (`call_soon_threadsafe`);
blocking engine calls (session start, close) run in a pool sized to `max_sessions`.

Binds 127.0.0.1 unless told otherwise; give a token (`--token` or `SOUNDFLOW_TOKEN`) before
binding anything else (the server refuses to start without one unless `--insecure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from .audio import SAMPLE_RATE, AudioError, check_pcm

PROTOCOL_VERSION = 1
FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}
WS_MAX_SIZE = 256 * 1024  # protocol-level cap on one WebSocket message (a 1 s frame is 64 KB)
WS_MAX_QUEUE = 32  # messages the WebSocket layer buffers for a session the server is not reading
MAX_INSTRUCTION_CHARS = 4000  # cheap first cut before tokenising; the real bound is in tokens
MAX_INSTRUCTION_AUDIO_S = 20.0  # a spoken instruction in the hello (50 chunks, 500 prefix positions)
MAX_OUT_EVENTS = 64  # events queued for a client that is not reading before the server stops reading it
MAX_REFUSALS = 100  # refused frames/messages per session before the server gives up on the client
INSTRUCTION_BURST, INSTRUCTION_PER_S = 4, 0.5  # instruction messages: a burst of 4, then one per 2 s
# all sessions together (hello instructions included): reconnecting does not buy more prefills
SERVER_INSTRUCTION_BURST, SERVER_INSTRUCTION_PER_S = 8, 1.0
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WEB_DIR = Path(__file__).with_name("web")

log = logging.getLogger("soundflow.server")

_DONE = object()  # pump → writer: the engine session has delivered its last event


class _Bucket:
    """Token bucket: `take()` is True when an action is within `burst` and `per_s` per second."""

    def __init__(self, burst: float, per_s: float):
        self.burst, self.per_s = float(burst), float(per_s)
        self.level, self.t = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.t) * self.per_s)
        self.t = now
        if self.level < 1:
            return False
        self.level -= 1
        return True


class _HandshakeError(Exception):
    def __init__(self, code: str, message: str, close_code: int = 1008):
        super().__init__(message)
        self.code, self.message, self.close_code = code, message, close_code


def _jsonable(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _finite(o: Any):
    """Non-finite floats → None (JSON has no NaN/Infinity; a browser's JSON.parse rejects them)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _dumps(obj: dict) -> str:
    """Strict JSON: never NaN/Infinity (the engine ends a session rather than emit one; this is
    the last line of defence)."""
    try:
        return json.dumps(obj, default=_jsonable, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(json.loads(json.dumps(obj, default=_jsonable))), ensure_ascii=False,
                          allow_nan=False)


def _bearer_ok(expected: str | None, headers, query) -> bool:
    if not expected:
        return True
    auth = headers.get("authorization", "")
    got = auth[7:].strip() if auth[:7].lower() == "bearer " else query.get("token", "")
    return bool(got) and hmac.compare_digest(got.encode(), expected.encode())


def _host_name(netloc: str) -> str:
    """'Example.com:8765' → 'example.com'; '[::1]:8765' → '::1'."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def _is_loopback_name(name: str) -> bool:
    return name in LOOPBACK_NAMES or name.startswith("127.") or name.endswith(".localhost")


def _host_ok(allowed_hosts, host_header: str) -> bool:
    """DNS rebinding guard: a server bound to loopback answers only to loopback host names (a
    page at evil.example whose name was re-pointed to 127.0.0.1 sends Host: evil.example)."""
    if allowed_hosts is None or "*" in allowed_hosts:
        return True
    name = _host_name(host_header or "")
    return _is_loopback_name(name) or name in allowed_hosts


def _origin_ok(allowed_origins, host_header: str, origin: str | None) -> bool:
    """Browsers send Origin on every WebSocket upgrade: accept the page's own origin (same
    host:port as the request) and the explicitly allowed ones. No Origin: not a browser page
    (a script or app), which the token — not the Origin — has to keep out."""
    if origin is None:
        return True
    origin = origin.strip().lower().rstrip("/")
    if "*" in allowed_origins or origin in allowed_origins:
        return True
    if origin == "null" or "://" not in origin:
        return False
    scheme, netloc = origin.split("://", 1)
    return scheme in ("http", "https") and netloc == (host_header or "").strip().lower()


class _FrameError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _frame_pcm(data: bytes, fmt: str, max_samples: int) -> np.ndarray:
    """One binary frame → float32 PCM, validated (the stream's frames and an instruction's alike);
    `_FrameError` ("malformed_frame" | "frame_too_large") otherwise."""
    dtype = FORMATS[fmt]
    if len(data) % dtype.itemsize:
        raise _FrameError("malformed_frame", f"{len(data)} bytes is not a whole number of {fmt} samples")
    n = len(data) // dtype.itemsize
    if n > max_samples:
        raise _FrameError("frame_too_large",
                          f"{n} samples in one frame; at most {max_samples} ({max_samples / SAMPLE_RATE:g} s)")
    pcm = np.frombuffer(data, dtype=dtype)
    if fmt == "s16le":
        return pcm.astype(np.float32) / 32768.0
    try:  # finite and within ±MAX_PEAK, else refused; mild overshoot clipped to [-1, 1]
        return check_pcm(pcm, "frame")
    except ValueError as e:  # soundflow.audio.AudioError
        raise _FrameError("malformed_frame", str(e)) from None


def _instruction_audio_spec(v) -> dict | None:
    """The hello's `instruction_audio`: {"data": base64 str} | {"samples": N} | None."""
    if v is None:
        return None
    if isinstance(v, str):
        return {"data": v} if v else None
    if isinstance(v, dict) and set(v) == {"samples"}:
        n = v["samples"]
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return {"samples": n}
    raise _HandshakeError("bad_handshake", 'instruction_audio must be a base64 string or {"samples": N} with N > 0')


def _too_long_audio(seconds: float, max_s: float) -> _HandshakeError:
    return _HandshakeError("instruction_too_long",
                           f"instruction audio of {seconds:.1f} s is longer than the limit of {max_s:g} s")


def _decode_instruction_audio(data: str, fmt: str, max_s: float) -> np.ndarray:
    """The string form of `instruction_audio` → 16 kHz mono float32 (blocking: run off the loop).
    An audio file is measured (`soundfile.info`) before it is decoded: a small compressed file
    cannot make the server decode minutes of audio."""
    import base64
    import binascii
    import io

    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _HandshakeError("bad_handshake", "instruction_audio is not valid base64") from None
    if raw[:4] in (b"RIFF", b"RIFX", b"fLaC", b"OggS", b"FORM"):
        import soundfile as sf

        from .audio import load_audio

        try:
            info = sf.info(io.BytesIO(raw))
        except Exception:  # noqa: BLE001 — libsndfile's errors vary by container
            raise _HandshakeError("bad_handshake", "instruction_audio: cannot read the audio file") from None
        if info.frames / max(1, info.samplerate) > max_s:
            raise _too_long_audio(info.frames / max(1, info.samplerate), max_s)
        try:
            return load_audio(io.BytesIO(raw))
        except AudioError as e:  # corrupt, NaN, out-of-range samples
            raise _HandshakeError("malformed_frame", f"instruction_audio: {e}") from None
    if len(raw) // FORMATS[fmt].itemsize > max_s * SAMPLE_RATE:
        raise _too_long_audio(len(raw) / FORMATS[fmt].itemsize / SAMPLE_RATE, max_s)
    try:
        return _frame_pcm(raw, fmt, len(raw))
    except _FrameError as e:
        raise _HandshakeError(e.code, f"instruction_audio: {e.message}") from None


def _parse_hello(text: str | None, chunk_ms: int) -> dict:
    if text is None:
        raise _HandshakeError("bad_handshake", "the first message must be a JSON text frame {\"type\": \"hello\", ...}")
    try:
        hello = json.loads(text)
    except (ValueError, RecursionError):
        raise _HandshakeError("bad_json", "the hello message is not valid JSON") from None
    if not isinstance(hello, dict) or hello.get("type") != "hello":
        raise _HandshakeError("bad_handshake", "the first message must be {\"type\": \"hello\", ...}")
    def is_int(v) -> bool:  # JSON true == 1 in Python: a boolean is not a version or a rate
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(hello.get("version")) or hello.get("version") != PROTOCOL_VERSION:
        raise _HandshakeError("unsupported_version",
                              f"protocol version {hello.get('version')!r} is not supported; this server speaks {PROTOCOL_VERSION}")
    if not is_int(hello.get("sample_rate")) or hello.get("sample_rate") != SAMPLE_RATE:
        raise _HandshakeError("unsupported_sample_rate",
                              f"sample_rate {hello.get('sample_rate')!r} is not supported; send mono {SAMPLE_RATE} Hz")
    if "chunk_ms" in hello and (not is_int(hello["chunk_ms"]) or hello["chunk_ms"] != chunk_ms):
        raise _HandshakeError("unsupported_chunk_ms", f"chunk_ms {hello['chunk_ms']!r}: this server runs {chunk_ms} ms chunks")
    fmt = hello.get("format", "f32le")
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise _HandshakeError("unsupported_format",
                              f"format {str(fmt)[:40]!r} is not supported; use one of {sorted(FORMATS)}")
    instruction = hello.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise _HandshakeError("bad_handshake", "instruction must be a string")
    if instruction and len(instruction) > MAX_INSTRUCTION_CHARS:
        raise _HandshakeError("instruction_too_long", f"instruction longer than {MAX_INSTRUCTION_CHARS} characters")
    return {"format": fmt, "instruction": instruction or None,
            "instruction_audio": _instruction_audio_spec(hello.get("instruction_audio"))}


class _SpokenInstruction:
    """A mid-session instruction announced as `{"samples": n}`: the next n samples of binary
    frames are its audio. `ok` turns False when it is refused (its samples are still read and
    dropped); `text` is applied with it."""

    def __init__(self, n: int):
        self.n, self.got, self.parts, self.ok, self.text = n, 0, [], True, ""


class _Refused(Exception):
    """A session refused MAX_REFUSALS frames/messages: the connection is closed."""


class _Connection:
    """One WebSocket ↔ one engine session: a reader task, a writer task, and a pump thread."""

    def __init__(self, app_state, ws, sess, fmt: str, session_id: str):
        self.st, self.ws, self.sess, self.fmt, self.id = app_state, ws, sess, fmt, session_id
        self.dtype = FORMATS[fmt]
        self.loop = asyncio.get_running_loop()
        self.out: asyncio.Queue = asyncio.Queue()
        self.room = asyncio.Event()  # set whenever an event is delivered (backpressure)
        self.fed_samples = 0
        self.delivered = 0  # chunks whose decision has been sent to the client
        self.closed = threading.Event()  # engine session closed: the pump may stop when drained
        self.engine_failed = False  # the engine session reported a failure (engine_error, close 1011)
        self.refusals = 0
        self.bucket = _Bucket(*app_state.instruction_rate)  # this session's instruction messages
        self.spoken: _SpokenInstruction | None = None  # a mid-session {"samples": N} being received
        self.pump = threading.Thread(target=self._pump, name=f"soundflow-ws-{session_id}", daemon=True)

    # -- engine events → asyncio (a thread per session; get_event blocks) ------------------------
    def _post(self, item) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
            return True
        except RuntimeError:  # the event loop is gone (server shutting down)
            return False

    def _pump(self) -> None:
        try:
            while True:
                try:
                    ev = self.sess.get_event(timeout=0.1)
                except Exception as e:  # noqa: BLE001 — an engine failure ends this session only
                    self.engine_failed = True
                    self._post({"type": "error", "code": "engine_error", "message": f"{type(e).__name__}: {e}"})
                    break
                if ev is None:
                    if self.closed.is_set() or getattr(self.sess, "finished", False):
                        break
                    continue
                if ev.get("type") == "error":  # the engine's own report: its session is over
                    self.engine_failed = True
                if not self._post(ev):
                    return
        finally:
            self._post(_DONE)

    # -- helpers ------------------------------------------------------------------------------
    async def send(self, obj: dict) -> None:
        await self.ws.send_text(_dumps(obj))

    async def error(self, code: str, message: str) -> None:
        """Refuse one frame/message; the session goes on (until MAX_REFUSALS: a client that
        keeps sending what it was told is wrong is broken or hostile, and is closed)."""
        self.refusals += 1
        await self.out.put({"type": "error", "code": code, "message": message})
        if self.refusals >= MAX_REFUSALS:
            raise _Refused(f"{self.refusals} refused frames or messages")

    def pending_chunks(self) -> int:
        return self.fed_samples // self.st.chunk_n - self.delivered

    async def close_engine(self, abort: bool = False) -> None:
        """Graceful: flush and finish every chunk. abort (client gone): drop queued audio."""
        if not self.closed.is_set():
            try:
                if abort and callable(getattr(self.sess, "abort", None)):
                    self.sess.abort()  # non-blocking; a reply in progress ends at its token cap
                await self.loop.run_in_executor(self.st.executor, self.sess.close)
            except Exception as e:  # noqa: BLE001
                log.warning("session %s: engine close failed: %s", self.id, e)
            finally:
                self.closed.set()

    # -- tasks --------------------------------------------------------------------------------
    async def reader(self) -> str:
        """Socket → engine. Returns "end" (client said end), "gone" (client vanished), "idle"
        (nothing received for idle_timeout) or "refused" (too many refusals)."""
        while True:
            # stop reading while the client has not taken its events: its sends then block
            # (TCP backpressure). Counts decisions not yet sent and every queued event (errors too).
            while self.pending_chunks() >= self.st.max_queue_chunks or self.out.qsize() >= MAX_OUT_EVENTS:
                self.room.clear()
                await self.room.wait()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that lands as the receive completes, and the reader then parked for good in
            # `room.wait()` with no writer left to set it — a departed client's session held
            # indefinitely (`test_a_client_that_vanishes_while_parked_is_freed_at_once`)
            try:
                async with asyncio.timeout(self.st.idle_timeout):
                    msg = await self.ws.receive()
            except TimeoutError:
                return "idle"
            if msg["type"] == "websocket.disconnect":
                return "gone"
            data, text = msg.get("bytes"), msg.get("text")
            try:
                if data is not None:
                    await self.on_audio(data)
                elif text is not None:
                    if await self.on_text(text):
                        return "end"
            except _Refused:
                return "refused"

    async def on_audio(self, data: bytes) -> None:
        if not data:
            return
        if self.spoken is not None:
            await self.on_instruction_frame(data)
            return
        try:
            pcm = _frame_pcm(data, self.fmt, self.st.max_frame_samples)
        except _FrameError as e:
            await self.error(e.code, f"{e.message}; frame dropped")
            return
        await self.feed(pcm)

    async def feed(self, pcm: np.ndarray) -> None:
        try:
            self.sess.feed(pcm)
        except ValueError as e:  # soundflow.audio.AudioError (the engine validates again)
            await self.error("malformed_frame", f"{e}; frame dropped")
            return
        self.fed_samples += len(pcm)

    async def on_text(self, text: str) -> bool:
        """Handle a control message; True when the client ended the stream."""
        if self.spoken is not None:  # the announced instruction samples did not all come first
            sp, self.spoken = self.spoken, None
            await self.error("bad_message", f"a text frame after {sp.got} of the {sp.n} announced instruction "
                                            "samples; instruction dropped (send its samples first)")
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            await self.error("bad_message", "text frame is not valid JSON; ignored")
            return False
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "end":
            return True
        if kind == "instruction":
            await self.on_instruction(msg)
            return False
        await self.error("bad_message", f"unknown message type {kind!r}; expected 'instruction' or 'end'")
        return False

    async def on_instruction(self, msg: dict) -> None:
        """`{"type": "instruction", "text"?: str, "audio"?: "base64…" | {"samples": N}}`: replace
        the instruction. A well-formed `{"samples": N}` claims the next N samples of binary frames
        whatever becomes of the instruction (refused messages included: the client need not wait
        for an answer, and its instruction audio never leaks into the stream)."""
        has_audio = msg.get("audio") not in (None, "")
        try:
            spec = _instruction_audio_spec(msg.get("audio"))
        except _HandshakeError:
            await self.error("bad_message", 'instruction audio must be a base64 string or {"samples": N} with N > 0')
            return
        sp = None
        if spec is not None and "samples" in spec:
            sp = self.spoken = _SpokenInstruction(spec["samples"])
        instr = msg.get("text")
        if has_audio and instr is None:
            instr = ""  # a spoken instruction alone
        problem = None
        if not isinstance(instr, str):
            problem = ("bad_message", "instruction text must be a string")
        elif len(instr) > MAX_INSTRUCTION_CHARS:
            problem = ("instruction_too_long", f"instruction longer than {MAX_INSTRUCTION_CHARS} characters")
        elif sp is not None and sp.n > self.st.max_instruction_audio_s * SAMPLE_RATE:
            problem = ("instruction_too_long", _too_long_audio(sp.n / SAMPLE_RATE, self.st.max_instruction_audio_s).message)
        # each applied instruction may cost the decoder a prefill (shared by all sessions)
        elif not self.bucket.take():
            b = self.bucket
            problem = ("rate_limited", f"more than {b.burst:g} instructions in a burst, or more than {b.per_s:g} per second")
        elif not self.st.instruction_bucket.take():
            problem = ("rate_limited", "the server is taking too many instructions from all sessions (retry in a second)")
        if problem is not None:
            if sp is not None:
                sp.ok = False
            await self.error(problem[0], problem[1] + ("; ignored (its announced samples are read and dropped)"
                                                       if sp is not None else "; ignored"))
            return
        if sp is not None:
            sp.text = instr  # applied once its samples are in (on_instruction_frame)
            return
        audio = None
        if spec is not None:
            try:
                audio = await _decode_spoken(self.st, spec["data"], self.fmt)
            except _HandshakeError as e:
                code = "bad_message" if e.code == "bad_handshake" else e.code
                await self.error(code, f"{e.message}; instruction ignored")
                return
        await self.apply_instruction(instr, audio)

    async def apply_instruction(self, text: str, audio: np.ndarray | None) -> None:
        """The engine's `set_instruction`, off the loop (validation and, mid-reply, a lock).
        Text alone is passed as before, so an engine without spoken instructions still works."""
        args = (text,) if audio is None else (text, audio)
        try:
            await self.loop.run_in_executor(self.st.executor, self.sess.set_instruction, *args)
        except ValueError as e:  # over max_instruction_tokens; an AudioError: samples it cannot use
            await self.error("malformed_frame" if isinstance(e, AudioError) else "instruction_too_long",
                             f"{e}; ignored")
        except Exception as e:  # noqa: BLE001
            await self.error("engine_error", f"set_instruction failed: {e}")

    async def on_instruction_frame(self, data: bytes) -> None:
        """A binary frame while a `{"samples": N}` instruction is due: its samples (counted in
        whole samples, refused frames too) go to the instruction until N are in; the rest of the
        last frame is stream audio. A refused frame drops the instruction (and the frame whole)."""
        sp = self.spoken
        n = len(data) // self.dtype.itemsize
        try:
            pcm = _frame_pcm(data, self.fmt, self.st.max_frame_samples)
        except _FrameError as e:
            pcm = None
            ok, sp.ok = sp.ok, False
            await self.error(e.code, f"instruction audio: {e.message}; frame dropped"
                                     + ("; instruction dropped" if ok else ""))
        take = min(n, sp.n - sp.got)
        sp.got += take
        if pcm is not None and sp.ok:
            sp.parts.append(pcm[:take])
        if sp.got < sp.n:
            return
        self.spoken = None
        if sp.ok:
            await self.apply_instruction(sp.text, np.concatenate(sp.parts))
        if pcm is not None and take < len(pcm):  # the stream's next samples, sent with the instruction's last
            await self.feed(pcm[take:])

    async def writer(self) -> str:
        """Engine events → socket. Returns "done" (engine finished) or "gone" (send failed)."""
        while True:
            ev = await self.out.get()
            if ev is _DONE:
                return "done"
            if ev.get("type") == "error" and "code" not in ev:
                ev = {"type": "error", "code": "engine_error", "message": ev.get("message", "")}
            try:
                await self.send(ev)
            except Exception:  # noqa: BLE001 — client vanished or socket broke
                return "gone"
            if ev.get("type") == "decision":
                self.delivered = max(self.delivered, int(ev["chunk"]) + 1)
            self.room.set()

    async def run(self) -> None:
        self.pump.start()
        reader = asyncio.create_task(self.reader())
        writer = asyncio.create_task(self.writer())
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            how = reader.result() if reader in done and not reader.exception() else None
            if how == "end":
                await self.close_engine()  # flushes the partial chunk, finishes the reply
                result = await writer  # everything the engine had left, then _DONE
                if result == "done":
                    with contextlib.suppress(Exception):
                        if self.engine_failed:  # engine_error was the last event (documented: 1011)
                            await self.ws.close(1011)
                        else:
                            await self.send({"type": "end", "chunks": self.delivered})
                            await self.ws.close(1000)
            elif how in ("idle", "refused"):
                code, text = (("idle_timeout", f"nothing received for {self.st.idle_timeout:g} s")
                              if how == "idle" else
                              ("too_many_errors", f"{self.refusals} refused frames or messages; closing"))
                await self.close_engine(abort=True)
                with contextlib.suppress(Exception):  # bounded: this client may not be reading
                    await asyncio.wait_for(asyncio.shield(writer), 5)  # what was queued (the refusals), then _DONE
                    await asyncio.wait_for(self.send({"type": "error", "code": code, "message": text}), 5)
                    await asyncio.wait_for(self.ws.close(1008), 5)
            elif writer in done and not writer.exception() and writer.result() == "done":
                # the engine session ended by itself (it reported an error): close this socket
                with contextlib.suppress(Exception):
                    await self.ws.close(1011)
            # otherwise the client is gone (or a task failed): fall through and free the session
        finally:
            for t in (reader, writer):
                if not t.done():
                    t.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            await self.close_engine(abort=True)  # no-op after a graceful end
            for t in (reader, writer):
                if not t.cancelled() and t.exception() is not None:
                    log.warning("session %s: %r", self.id, t.exception())


class _State:
    def __init__(self, engine, *, token, chunk_ms, max_sessions, max_queue_chunks, max_frame_samples,
                 handshake_timeout, threshold, model_name, idle_timeout=60.0, allowed_origins=(),
                 allowed_hosts=None, instruction_rate=(INSTRUCTION_BURST, INSTRUCTION_PER_S),
                 server_instruction_rate=(SERVER_INSTRUCTION_BURST, SERVER_INSTRUCTION_PER_S),
                 max_instruction_audio_s=MAX_INSTRUCTION_AUDIO_S):
        from .audio import chunk_samples

        self.max_instruction_audio_s = float(max_instruction_audio_s)
        self.engine, self.token, self.chunk_ms = engine, token, chunk_ms
        self.chunk_n = chunk_samples(chunk_ms)
        self.max_sessions, self.max_queue_chunks = max_sessions, max_queue_chunks
        self.max_frame_samples, self.handshake_timeout = max_frame_samples, handshake_timeout
        self.threshold, self.model_name = threshold, model_name
        self.idle_timeout, self.instruction_rate = idle_timeout, instruction_rate
        self.instruction_bucket = _Bucket(*server_instruction_rate)
        self.allowed_origins = {o.strip().lower().rstrip("/") for o in allowed_origins}
        self.allowed_hosts = None if allowed_hosts is None else {h.strip().lower() for h in allowed_hosts}
        self.sessions: set[str] = set()
        self.served = 0
        # Blocking engine calls (session start/close, set_instruction) run here, never on the loop.
        self.executor = ThreadPoolExecutor(max_workers=max(8, max_sessions), thread_name_prefix="soundflow-engine")


async def _decode_spoken(st, data: str, fmt: str) -> np.ndarray:
    """The base64 form of a spoken instruction (the hello's or a mid-session one) → 16 kHz mono
    float32, decoded off the event loop; `_HandshakeError` (bad_handshake, instruction_too_long,
    malformed_frame) otherwise."""
    loop = asyncio.get_running_loop()
    pcm = await loop.run_in_executor(st.executor, _decode_instruction_audio, data, fmt, st.max_instruction_audio_s)
    if len(pcm) > st.max_instruction_audio_s * SAMPLE_RATE:  # resampling rounds
        raise _too_long_audio(len(pcm) / SAMPLE_RATE, st.max_instruction_audio_s)
    return pcm


async def _receive_instruction_audio(ws, st, fmt: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The `{"samples": N}` form: N samples of binary frames, validated like stream frames, all
    within the handshake timeout. Returns (instruction, samples past it), or None if the client
    left; `_HandshakeError` for a text frame, a bad frame or the timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + st.handshake_timeout
    parts, got = [], 0
    while got < n:
        rest = deadline - loop.time()
        try:
            if rest <= 0:
                raise asyncio.TimeoutError
            msg = await asyncio.wait_for(ws.receive(), timeout=rest)
        except asyncio.TimeoutError:
            raise _HandshakeError("handshake_timeout", f"instruction audio: {got} of {n} samples within "
                                                       f"{st.handshake_timeout:g} s") from None
        if msg["type"] == "websocket.disconnect":
            return None
        data = msg.get("bytes")
        if data is None:
            raise _HandshakeError("bad_handshake", f"instruction audio: a text frame after {got} of the {n} "
                                                   "announced samples; send them as binary frames first")
        try:
            pcm = _frame_pcm(data, fmt, st.max_frame_samples)
        except _FrameError as e:
            raise _HandshakeError(e.code, f"instruction audio: {e.message}") from None
        parts.append(pcm)
        got += len(pcm)
    pcm = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return pcm[:n], pcm[n:]


def create_app(model=None, token: str | None = None, options=None, max_sessions: int = 32,
               max_queue_chunks: int = 16, *, engine=None, max_frame_ms: int = 1000,
               handshake_timeout: float = 10.0, idle_timeout: float = 60.0,
               allowed_origins=(), allowed_hosts=("loopback",),
               instruction_rate: tuple[int, float] = (INSTRUCTION_BURST, INSTRUCTION_PER_S),
               server_instruction_rate: tuple[int, float] = (SERVER_INSTRUCTION_BURST, SERVER_INSTRUCTION_PER_S),
               max_instruction_audio_s: float = MAX_INSTRUCTION_AUDIO_S):
    """The FastAPI app: `/` (page), `/v1/stream` (WebSocket, see the module docstring), `/healthz`.

    `model` is an `AudioLM`; `options` an `EngineOptions`. `engine` may be passed instead of
    `model` (anything with `.session(instruction=)` and `.options`). `allowed_origins`: page
    origins besides the server's own that may open a stream (`"*"`: any). `allowed_hosts`:
    Host names answered besides the loopback ones (`None` or `"*"`: any — for a server bound
    to a public address, where the token is the guard). `instruction_rate`: (burst, per
    second) of instruction messages a session may send; `server_instruction_rate`: the same
    for all sessions together, hello instructions included. `max_instruction_audio_s`: the
    longest spoken instruction a hello may carry."""
    if engine is None:
        if model is None:
            raise ValueError("create_app needs a model or an engine")
        from .calibrate import default_threshold
        from .engine import Engine, EngineOptions

        engine = Engine(model, options or EngineOptions(threshold=default_threshold(model)))
    opts = options or getattr(engine, "options", None)
    chunk_ms = int(getattr(opts, "chunk_ms", 400))
    threshold = getattr(opts, "threshold", None)
    cfg = getattr(model if model is not None else getattr(engine, "model", None), "cfg", None)
    st = _State(engine, token=token, chunk_ms=chunk_ms, max_sessions=max_sessions,
                max_queue_chunks=max(1, max_queue_chunks),
                max_frame_samples=SAMPLE_RATE * max_frame_ms // 1000,
                handshake_timeout=handshake_timeout, threshold=threshold,
                model_name=getattr(cfg, "backend", None), idle_timeout=idle_timeout,
                allowed_origins=allowed_origins, instruction_rate=instruction_rate,
                server_instruction_rate=server_instruction_rate, max_instruction_audio_s=max_instruction_audio_s,
                allowed_hosts=None if allowed_hosts is None else [h for h in allowed_hosts if h != "loopback"])

    @asynccontextmanager
    async def lifespan(app):
        yield
        st.executor.shutdown(wait=False, cancel_futures=True)
        closer = getattr(engine, "close", None)
        if callable(closer):
            closer()

    app = FastAPI(title="soundflow", version=str(PROTOCOL_VERSION), lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.soundflow = st
    page_headers = {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob:; "
                                   "img-src 'self' data:; style-src 'self' 'unsafe-inline'",
    }

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=page_headers)

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.middleware("http")
    async def revalidate_static(request, call_next):
        if not _host_ok(st.allowed_hosts, request.headers.get("host", "")):
            return JSONResponse({"error": "host not allowed"}, status_code=403)  # DNS rebinding
        response = await call_next(request)
        if request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-cache"  # revalidate (ETag) so upgrades show up
        return response

    @app.get("/healthz")
    async def healthz():
        return JSONResponse({"status": "ok", "version": PROTOCOL_VERSION, "model": st.model_name,
                             "sessions": len(st.sessions), "max_sessions": st.max_sessions,
                             "served": st.served, "chunk_ms": st.chunk_ms})

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket):
        host = ws.headers.get("host", "")
        if not _host_ok(st.allowed_hosts, host):
            log.warning("refused a stream for Host %r (DNS rebinding guard)", host[:100])
            await ws.close(code=1008, reason="host not allowed")  # before accept: HTTP 403
            return
        if not _origin_ok(st.allowed_origins, host, ws.headers.get("origin")):
            log.warning("refused a stream from origin %r (allow it with --allow-origin)",
                        ws.headers.get("origin", "")[:100])
            await ws.close(code=1008, reason="origin not allowed")
            return
        if not _bearer_ok(st.token, ws.headers, ws.query_params):
            await ws.close(code=1008, reason="missing or wrong bearer token")  # before accept: HTTP 403
            return
        await ws.accept()
        loop = asyncio.get_running_loop()
        session_id = None
        try:
            try:
                try:
                    msg = await asyncio.wait_for(ws.receive(), timeout=st.handshake_timeout)
                except asyncio.TimeoutError:
                    raise _HandshakeError("handshake_timeout", f"no hello within {st.handshake_timeout:g} s") from None
                if msg["type"] == "websocket.disconnect":
                    return
                try:
                    hello = _parse_hello(msg.get("text"), st.chunk_ms)
                except _HandshakeError:
                    raise
                except Exception as e:  # noqa: BLE001 — any odd hello is the client's error, not a crash
                    raise _HandshakeError("bad_handshake", f"malformed hello ({type(e).__name__})") from None
                spec = hello["instruction_audio"]
                if spec is not None and "samples" in spec and spec["samples"] > st.max_instruction_audio_s * SAMPLE_RATE:
                    raise _too_long_audio(spec["samples"] / SAMPLE_RATE, st.max_instruction_audio_s)  # before any audio
                if len(st.sessions) >= st.max_sessions:
                    raise _HandshakeError("busy", f"the server is at its limit of {st.max_sessions} sessions; retry later", 1013)
                if (hello["instruction"] or spec is not None) and not st.instruction_bucket.take():
                    raise _HandshakeError("rate_limited", "the server is taking too many instructions; retry in a second", 1013)
                session_id = secrets.token_hex(6)
                st.sessions.add(session_id)  # reserve the slot before reading instruction audio / starting
                spoken, rest = None, None
                if spec is not None and "samples" in spec:
                    got = await _receive_instruction_audio(ws, st, hello["format"], spec["samples"])
                    if got is None:  # the client left
                        return
                    spoken, rest = got
                elif spec is not None:
                    spoken = await _decode_spoken(st, spec["data"], hello["format"])
            except _HandshakeError as e:
                try:
                    await ws.send_text(_dumps({"type": "error", "code": e.code, "message": e.message}))
                    await ws.close(e.close_code)
                except Exception:  # noqa: BLE001 — the client left already
                    pass
                return

            kw = {"instruction": hello["instruction"]}
            if spoken is not None:  # only then: an engine need not know the keyword otherwise
                kw["instruction_audio"] = spoken
            try:
                sess = await loop.run_in_executor(st.executor, lambda: engine.session(**kw))
            except Exception as e:  # noqa: BLE001
                too_long = isinstance(e, ValueError)  # the instruction is over max_instruction_tokens
                if not too_long:
                    log.exception("session start failed")
                try:
                    code = "instruction_too_long" if too_long else "engine_error"
                    await ws.send_text(_dumps({"type": "error", "code": code,
                                               "message": str(e) if too_long else f"session start failed: {e}"}))
                    await ws.close(1008 if too_long else 1011)
                except Exception:  # noqa: BLE001
                    pass
                return
            st.served += 1
            conn = _Connection(st, ws, sess, hello["format"], session_id)
            try:
                await conn.send({"type": "ready", "version": PROTOCOL_VERSION, "session": session_id,
                                 "sample_rate": SAMPLE_RATE, "chunk_ms": st.chunk_ms, "format": hello["format"],
                                 "max_frame_samples": st.max_frame_samples,
                                 "max_queue_chunks": st.max_queue_chunks, "threshold": st.threshold})
            except Exception:  # noqa: BLE001
                await loop.run_in_executor(st.executor, sess.close)
                return
            if rest is not None and len(rest):  # the stream's first samples, sent with the instruction's last
                await conn.feed(rest)
            await conn.run()
        finally:
            if session_id is not None:
                st.sessions.discard(session_id)

    return app


class _RedactTokens(logging.Filter):
    """Keep `?token=…` out of the access and error logs (browsers put the token in the URL)."""

    _re = re.compile(r"([?&]token=)[^&\s\"']+")

    def _redact(self, v):
        return self._re.sub(r"\1***", v) if isinstance(v, str) and "token=" in v else v

    def filter(self, record: logging.LogRecord) -> bool:
        # redact inside the arguments: uvicorn's access formatter unpacks record.args itself,
        # so flattening them into msg breaks its formatting
        record.msg = self._redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._redact(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self._redact(v) for k, v in record.args.items()}
        return True


def _is_loopback(host: str) -> bool:
    return _is_loopback_name(host.strip("[]").lower())


def _reaping_h11(header_timeout: float):
    """uvicorn's h11 protocol, plus: a connection that has no request in progress and started
    none for `header_timeout` seconds is closed. uvicorn reaps idle keep-alive connections but
    not ones that never finish their headers (200 such sockets stayed open indefinitely);
    upgraded (WebSocket) connections are left to the WebSocket keepalive and idle timeout."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class ReapingH11(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._sf_seen = object()
            self._sf_timer = self.loop.call_later(header_timeout, self._sf_check)

        def _sf_check(self) -> None:
            t = self.transport
            if t.is_closing() or t.get_protocol() is not self:  # gone, or now a WebSocket
                return
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self.cycle is self._sf_seen:  # no new request for a whole period
                t.close()
                return
            self._sf_seen = self.cycle
            self._sf_timer = self.loop.call_later(header_timeout, self._sf_check)

        def connection_lost(self, exc) -> None:
            self._sf_timer.cancel()
            super().connection_lost(exc)

    return ReapingH11


def uvicorn_config(app, header_timeout: float = 10.0, ws_ping_interval: float | None = None,
                   ws_ping_timeout: float | None = None, **kw):
    """uvicorn settings of `soundflow serve` (tests use them too): the message size and queue caps,
    reaping of half-sent requests, and no WebSocket pings by default: a ping's pong waits behind
    the audio a paced client has queued, so pings closed slow sessions as dead; the idle timeout,
    counted while the server reads, finds half-open connections instead (see the module's doc)."""
    import uvicorn

    # no permessage-deflate: PCM barely compresses, and per-connection zlib state (~300 KB) and
    # compressing every event on the event loop cost more than the bytes saved on loopback/LAN
    return uvicorn.Config(app, ws_max_size=WS_MAX_SIZE, ws_max_queue=WS_MAX_QUEUE, ws_per_message_deflate=False,
                          http=_reaping_h11(header_timeout),
                          ws_ping_interval=ws_ping_interval, ws_ping_timeout=ws_ping_timeout,
                          timeout_keep_alive=5, **kw)


def serve(host: str = "127.0.0.1", port: int = 8765, model="mini", token: str | None = None,
          options=None, max_sessions: int = 32, log_level: str = "info", quant: str | None = "auto",
          batch: bool = True, device: str | None = None, allow_origins=(), insecure: bool = False,
          idle_timeout: float = 60.0) -> int:
    """Run the server until interrupted (the `soundflow serve` command). Returns an exit code."""
    import sys

    import uvicorn

    token = token or os.environ.get("SOUNDFLOW_TOKEN") or None
    loopback = _is_loopback(host)
    if not loopback and not token:
        if not insecure:
            print(f"soundflow: error: refusing to serve on {host} without a token: anyone who can reach it could "
                  "use the model. Set --token or SOUNDFLOW_TOKEN (or pass --insecure to do it anyway)",
                  file=sys.stderr)
            return 2
        log.warning("serving on %s without a token (--insecure): anyone who can reach it can use the model", host)
    if isinstance(model, str):
        from .loading import load_model

        model = load_model(model)
    from .optimize import apply_precision

    apply_precision(model, quant, device)
    if options is None:
        from .calibrate import default_threshold
        from .engine import EngineOptions

        # connections share batch workers (batching.py): more real-time sessions per machine
        options = EngineOptions(threshold=default_threshold(model), batch=batch)
    # Host check only on loopback (DNS rebinding); on a public address the token is the guard
    app = create_app(model, token=token, options=options, max_sessions=max_sessions,
                     allowed_origins=allow_origins, allowed_hosts=("loopback",) if loopback else None,
                     idle_timeout=idle_timeout)
    shown = f"[{host}]" if ":" in host else host
    print(f"soundflow: page http://{shown}:{port}/{'?token=…' if token else ''}  "
          f"stream ws://{shown}:{port}/v1/stream", flush=True)
    config = uvicorn_config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)  # Config.__init__ sets up uvicorn's loggers; filter them now
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(_RedactTokens())
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0
