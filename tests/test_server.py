"""WebSocket server (`soundflow.server`): protocol, concurrency, isolation, robustness, auth.

Runs uvicorn on a free 127.0.0.1 port in a background thread with the random `tiny` model and
talks to it with the `websockets` client. The helpers here are also used by test_browser.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest
from helpers import QueueEngine, QueueSession

from soundflow.engine import Engine, EngineOptions
from soundflow.model import build_model
from soundflow.server import WS_MAX_SIZE, create_app, uvicorn_config

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

SR = 16_000
CHUNK = 6400  # 400 ms
FRAME = 1600  # 100 ms: what the page sends

def make_engine(model, **opts):
    return Engine(model, EngineOptions(**{"threshold": 0.5, "max_reply_tokens": 48, "chunk_ms": 400, **opts}))


# --------------------------------------------------------------------------------------------
# Server in a background thread


class ServerThread:
    def __init__(self, app, **config_kw):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn_config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2,
                                **config_kw)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def http(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self):
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def health(self) -> dict:
        with urllib.request.urlopen(self.http + "/healthz", timeout=5) as r:
            return json.loads(r.read())


@contextlib.contextmanager
def running_server(model, *, token=None, max_sessions=32, max_queue_chunks=16, app_kw=None, engine=None,
                   config_kw=None, **engine_opts):
    app = create_app(model, token=token, max_sessions=max_sessions, max_queue_chunks=max_queue_chunks,
                     engine=engine or make_engine(model, **engine_opts), **(app_kw or {}))
    with ServerThread(app, **(config_kw or {})) as srv:
        yield srv


@pytest.fixture(scope="module")
def model():
    return build_model("tiny")


# --------------------------------------------------------------------------------------------
# Client helpers


def audio(seed: int, n_chunks: float) -> np.ndarray:
    """Deterministic test audio: a seed-dependent tone plus noise."""
    rng = np.random.default_rng(seed)
    n = int(n_chunks * CHUNK)
    t = np.arange(n) / SR
    return (0.3 * np.sin(2 * np.pi * (200 + 40 * seed) * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def encode(pcm: np.ndarray, fmt: str = "f32le") -> bytes:
    if fmt == "s16le":
        return (np.clip(pcm, -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes()
    return pcm.astype("<f4").tobytes()


def hello(**over) -> str:
    return json.dumps({"type": "hello", "version": 1, "sample_rate": SR, "chunk_ms": 400, "format": "f32le", **over})


async def open_session(url: str, headers=None, **over):
    ws = await connect(url, additional_headers=headers, max_size=None, open_timeout=20)
    await ws.send(hello(**over))
    ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert ready["type"] == "ready", ready
    return ws, ready


async def recv_json(ws, timeout=60):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def expect_refused(url, first, code, frames=()):
    """Open a connection, send `first` (and `frames`): one error event `code`, then close 1008."""
    async with connect(url, max_size=None) as ws:
        await ws.send(first)
        for f in frames:
            await ws.send(f)
        ev = await recv_json(ws, 30)
        assert ev["type"] == "error" and ev["code"] == code, ev
        with pytest.raises(ConnectionClosed):
            await recv_json(ws, 20)
        assert ws.close_code == 1008
        return ev


async def send_audio(ws, pcm: np.ndarray, fmt: str = "f32le", frame: int = FRAME):
    for i in range(0, len(pcm), frame):
        await ws.send(encode(pcm[i : i + frame], fmt))


async def finish(ws, timeout=60) -> list[dict]:
    """Send end and collect every event up to the server's end message."""
    await ws.send(json.dumps({"type": "end"}))
    events = []
    while True:
        ev = await recv_json(ws, timeout)
        events.append(ev)
        if ev["type"] == "end":
            break
    with contextlib.suppress(Exception):
        await ws.close()
    return events


async def until(ws, pred, timeout=60) -> list[dict]:
    """Receive events until one satisfies pred; returns all of them (that one last)."""
    got = []
    while True:
        ev = await recv_json(ws, timeout)
        got.append(ev)
        if pred(ev):
            return got


async def poll_health(srv, pred, timeout=20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = await asyncio.to_thread(srv.health)
        if pred(h) or time.monotonic() > deadline:
            return h
        await asyncio.sleep(0.05)


def decisions(events):
    return [e for e in events if e["type"] == "decision"]


# --------------------------------------------------------------------------------------------
# Tests


def test_page_and_health(model):
    with running_server(model) as srv:
        h = srv.health()
        assert h["status"] == "ok" and h["version"] == 1 and h["sessions"] == 0 and h["model"] == "tiny"
        with urllib.request.urlopen(srv.http + "/", timeout=5) as r:
            page = r.read().decode()
            assert r.headers["content-type"].startswith("text/html")
        assert "static/app.js" in page
        for f in ("app.js", "worklet.js"):
            with urllib.request.urlopen(f"{srv.http}/static/{f}", timeout=5) as r:
                assert r.status == 200 and len(r.read()) > 200


@pytest.mark.parametrize("batch", [False, True])
def test_twenty_concurrent_sessions(model, batch):
    n_sessions, n_chunks = 20, 3

    async def client(url, i):
        fmt = "s16le" if i % 2 else "f32le"
        ws, ready = await open_session(url, format=fmt)
        assert ready["format"] == fmt and ready["version"] == 1 and ready["chunk_ms"] == 400
        await send_audio(ws, audio(i, n_chunks), fmt)
        events = await finish(ws)
        return ready["session"], events

    async def main(srv):
        return await asyncio.gather(*(client(srv.ws, i) for i in range(n_sessions)))

    with running_server(model, batch=batch) as srv:
        results = asyncio.run(main(srv))
        assert len({sid for sid, _ in results}) == n_sessions
        for _, events in results:
            ds = decisions(events)
            assert [d["chunk"] for d in ds] == list(range(n_chunks))
            for d in ds:
                assert d["decision"] in ("silent", "response") and 0.0 <= d["p_response"] <= 1.0
                assert d["t"] == pytest.approx((d["chunk"] + 1) * 0.4)
                assert d["latency_ms"] >= 0
            assert not [e for e in events if e["type"] == "error"]
            assert events[-1] == {"type": "end", "chunks": n_chunks}
        h = srv.health()
        assert h["sessions"] == 0 and h["served"] == n_sessions


def test_client_vanishing_mid_reply_frees_its_session(model):
    """threshold 0 → every chunk replies with max_reply_tokens; one client drops mid-reply."""
    n_steady = 3

    async def victim(url):
        ws, _ = await open_session(url)
        await send_audio(ws, audio(99, 3))
        await until(ws, lambda e: e["type"] == "token")  # a reply is being streamed right now
        ws.transport.abort()  # vanish: no close frame, connection reset

    async def steady(srv, i, victim_gone: asyncio.Event):
        ws, _ = await open_session(srv.ws)
        first = []
        for _k in range(2):
            await send_audio(ws, audio(i, 1)[:CHUNK])
            first += await until(ws, lambda e: e["type"] == "response")
        await victim_gone.wait()
        await send_audio(ws, audio(i + 10, 2))
        events = first + await finish(ws)
        return events

    async def main(srv):
        gone = asyncio.Event()
        steady_tasks = [asyncio.create_task(steady(srv, i, gone)) for i in range(n_steady)]
        await poll_health(srv, lambda h: h["sessions"] == n_steady)
        await victim(srv.ws)
        # The victim's slot is freed while the steady sessions are still open.
        h = await poll_health(srv, lambda h: h["sessions"] == n_steady)
        assert h["sessions"] == n_steady and h["served"] == n_steady + 1
        gone.set()
        return await asyncio.gather(*steady_tasks)

    with running_server(model, threshold=0.0, max_reply_tokens=48) as srv:
        results = asyncio.run(main(srv))
        for events in results:
            ds = decisions(events)
            assert [d["chunk"] for d in ds] == [0, 1, 2, 3]
            # every decided chunk replies (a chunk the FIFO drained while busy is "silent")
            assert all(d["decision"] == "response" or d.get("drained") for d in ds)
            resp = [e for e in events if e["type"] == "response"]
            assert [r["chunk"] for r in resp] == [d["chunk"] for d in ds if d["decision"] == "response"]
            for r in resp:  # tokens streamed for chunk k add up to its response
                toks = "".join(e["text"] for e in events if e["type"] == "token" and e["chunk"] == r["chunk"])
                assert toks == r["text"]
            assert events[-1]["type"] == "end"
        assert srv.health()["sessions"] == 0


def test_malformed_and_oversized_frames(model):
    async def main(srv):
        ws, ready = await open_session(srv.ws)
        assert ready["max_frame_samples"] == SR
        bad = [
            (b"\x00" * 5, "malformed_frame"),  # not a whole number of float32 samples
            (np.array([0.1, np.nan, 0.2], "<f4").tobytes(), "malformed_frame"),
            (np.array([np.inf] * 10, "<f4").tobytes(), "malformed_frame"),
            (np.zeros(2 * SR, "<f4").tobytes(), "frame_too_large"),  # 2 s in one frame
        ]
        for data, code in bad:
            await ws.send(data)
            ev = await recv_json(ws)
            assert ev["type"] == "error" and ev["code"] == code, ev
        for text in ("{not json", json.dumps({"type": "bogus"}), json.dumps([1, 2])):
            await ws.send(text)
            ev = await recv_json(ws)
            assert ev["type"] == "error" and ev["code"] == "bad_message", ev
        # the session goes on: refused frames never happened
        await send_audio(ws, audio(1, 2))
        events = await finish(ws)
        assert [d["chunk"] for d in decisions(events)] == [0, 1]
        assert events[-1] == {"type": "end", "chunks": 2}

        ws, _ = await open_session(srv.ws, format="s16le")
        await ws.send(b"\x01\x02\x03")  # odd byte count
        ev = await recv_json(ws)
        assert ev["code"] == "malformed_frame"
        await send_audio(ws, audio(2, 1.5), "s16le")  # partial last chunk: flushed at end
        events = await finish(ws)
        assert [d["chunk"] for d in decisions(events)] == [0, 1]

        # beyond the WebSocket message cap the connection is closed (1009), cleanly
        ws, _ = await open_session(srv.ws)
        with pytest.raises(ConnectionClosed) as info:
            await ws.send(b"\x00" * (WS_MAX_SIZE + 4))
            await recv_json(ws, 20)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        h = await poll_health(srv, lambda h: h["sessions"] == 0)
        assert h["sessions"] == 0

    with running_server(model) as srv:
        asyncio.run(main(srv))


def test_handshake_errors_reach_only_that_client(model):
    async def main(srv):
        ws, _ = await open_session(srv.ws)
        await send_audio(ws, audio(5, 1))
        got = await until(ws, lambda e: e["type"] == "decision")
        cases = [
            (hello(sample_rate=48000), "unsupported_sample_rate"),
            (hello(sample_rate=8000), "unsupported_sample_rate"),
            (hello(version=2), "unsupported_version"),
            (hello(chunk_ms=200), "unsupported_chunk_ms"),
            (hello(format="mp3"), "unsupported_format"),
            (hello(instruction=5), "bad_handshake"),
            ('{"type": "hello", ', "bad_json"),
            (json.dumps({"type": "instruction", "text": "hi"}), "bad_handshake"),
            (np.zeros(FRAME, "<f4").tobytes(), "bad_handshake"),
        ]
        await asyncio.gather(*(expect_refused(srv.ws, first, code) for first, code in cases))
        # the good session never noticed
        await send_audio(ws, audio(6, 1))
        events = got + await finish(ws)
        assert [d["chunk"] for d in decisions(events)] == [0, 1]
        assert not [e for e in events if e["type"] == "error"]
        assert (await asyncio.to_thread(srv.health))["served"] == 1

    with running_server(model) as srv:
        asyncio.run(main(srv))


def test_busy_when_at_max_sessions(model):
    async def main(srv):
        ws, _ = await open_session(srv.ws)
        async with connect(srv.ws) as ws2:
            await ws2.send(hello())
            ev = await recv_json(ws2)
            assert ev["code"] == "busy"
            with pytest.raises(ConnectionClosed):
                await recv_json(ws2)
            assert ws2.close_code == 1013
        await finish(ws)
        await poll_health(srv, lambda h: h["sessions"] == 0)
        ws3, _ = await open_session(srv.ws)  # the slot is free again
        await finish(ws3)

    with running_server(model, max_sessions=1) as srv:
        asyncio.run(main(srv))


@pytest.mark.parametrize("batch", [False, True])
def test_sessions_do_not_leak_state(model, batch):
    """Two sessions with different audio and instructions, run concurrently, give exactly what
    each gives alone. Lockstep (next chunk only after the previous reply) keeps the engine from
    draining several chunks at once, so the result does not depend on timing."""
    scripts = {
        "a": {"seed": 11, "instruction": "Tell me when the kettle boils.", "switch": (2, "Now transcribe.")},
        "b": {"seed": 12, "instruction": None, "switch": None},
    }
    n_chunks = 4

    async def run_script(url, name):
        s = scripts[name]
        ws, _ = await open_session(url, instruction=s["instruction"])
        pcm = audio(s["seed"], n_chunks)
        out = []
        for k in range(n_chunks):
            if s["switch"] and s["switch"][0] == k:
                await ws.send(json.dumps({"type": "instruction", "text": s["switch"][1]}))
            await send_audio(ws, pcm[k * CHUNK : (k + 1) * CHUNK])
            evs = await until(ws, lambda e: e["type"] == "response")
            out += [(e["type"], e["chunk"], e.get("decision"), e.get("p_response"), e.get("text"))
                    for e in evs if e["type"] in ("decision", "response")]
        await finish(ws)
        return out

    async def main(srv):
        alone = {name: await run_script(srv.ws, name) for name in scripts}
        together = await asyncio.gather(run_script(srv.ws, "a"), run_script(srv.ws, "b"), run_script(srv.ws, "a"))
        return alone, dict(zip(["a", "b", "a2"], together))

    with running_server(model, threshold=0.0, max_reply_tokens=8, batch=batch) as srv:
        alone, together = asyncio.run(main(srv))

    def same(x, y):
        assert len(x) == len(y)
        for ex, ey in zip(x, y):
            assert ex[:3] == ey[:3] and ex[4] == ey[4]
            if ex[3] is not None:
                assert ex[3] == pytest.approx(ey[3], abs=1e-4)

    assert alone["a"] != alone["b"]  # the scripts really differ
    same(together["a"], alone["a"])
    same(together["a2"], alone["a"])
    same(together["b"], alone["b"])


def test_fast_sender_is_paced_not_dropped(model):
    """A client that sends far faster than real time (and reads nothing meanwhile) gets every
    decision, in order, with no error: the server stops reading instead of queueing or dropping."""
    n_chunks = 12

    async def main(srv):
        ws, ready = await open_session(srv.ws)
        assert ready["max_queue_chunks"] == 2
        await send_audio(ws, audio(3, n_chunks), frame=SR)  # 1 s frames, as fast as the socket takes them
        events = await finish(ws, timeout=120)
        assert [d["chunk"] for d in decisions(events)] == list(range(n_chunks))
        assert not [e for e in events if e["type"] == "error"]

    with running_server(model, max_queue_chunks=2) as srv:
        asyncio.run(main(srv))


def slow_policy(k, p):
    """An engine far slower than real time: a decision every 0.3 s (never a reply)."""
    time.sleep(0.3)
    return False


async def open_unpinged(url):
    """A session whose client sends no WebSocket pings (as the bench's honest clients)."""
    ws = await connect(url, max_size=None, open_timeout=20, ping_interval=None)
    await ws.send(hello())
    assert (await recv_json(ws, 30))["type"] == "ready"
    return ws


def test_a_slow_session_is_paced_not_closed_as_dead(model):
    """The engine falls far behind a client (a decision every 0.3 s, the client sends 20 chunks at
    once and reads nothing): the server stops reading it for seconds, longer than the idle timeout
    and than a ping interval + timeout would allow. It is slow, not dead: every decision arrives,
    no error, a normal close. (With WebSocket pings the pong waits behind the queued audio and the
    session was closed with 1011: the overloaded soak in BENCHMARKS.md.)"""
    n_chunks = 20

    async def main(srv):
        ws = await open_unpinged(srv.ws)
        t0 = time.monotonic()
        await send_audio(ws, audio(4, n_chunks))
        events = await finish(ws, timeout=60)
        assert time.monotonic() - t0 > 2 * 1.0  # parked longer than the idle timeout, twice over
        assert [d["chunk"] for d in decisions(events)] == list(range(n_chunks))
        assert not [e for e in events if e["type"] == "error"]
        assert ws.close_code == 1000

    with running_server(model, max_queue_chunks=2, app_kw={"idle_timeout": 1.0}, policy=slow_policy) as srv:
        asyncio.run(main(srv))


def test_a_client_that_vanishes_while_parked_is_freed_at_once(model):
    """A client sends far more audio than the engine keeps up with (a decision every 0.3 s), so the
    server stops reading it, then vanishes without a close frame. Its session is freed at the next
    event the server fails to send, not after the engine has worked through everything queued.
    (About 1 run in 6 held the session for good while the reader's receive used `asyncio.wait_for`:
    a cancellation it swallowed left the reader parked in `room.wait()`.)"""
    queued = 8

    async def main(srv):
        ws = await open_unpinged(srv.ws)
        await send_audio(ws, audio(5, 3 * queued))
        await until(ws, lambda e: e["type"] == "decision")
        t0 = time.monotonic()
        ws.transport.abort()
        h = await poll_health(srv, lambda h: h["sessions"] == 0, timeout=30)
        assert h["sessions"] == 0
        assert time.monotonic() - t0 < queued * 0.3  # the engine's share of the queue alone takes longer

    with running_server(model, max_queue_chunks=queued, policy=slow_policy) as srv:
        asyncio.run(main(srv))


def test_bearer_token_required_when_set(model):
    async def main(srv):
        for headers, url in [(None, srv.ws), ({"Authorization": "Bearer nope"}, srv.ws),
                             (None, srv.ws + "?token=nope"), ({"Authorization": "Basic s3cret"}, srv.ws)]:
            with pytest.raises(InvalidStatus) as info:
                await connect(url, additional_headers=headers, open_timeout=10)
            assert info.value.response.status_code == 403
        ws, _ = await open_session(srv.ws, headers={"Authorization": "Bearer s3cret"})
        await finish(ws)
        ws, _ = await open_session(srv.ws + "?token=s3cret")
        await finish(ws)

    with running_server(model, token="s3cret") as srv:
        asyncio.run(main(srv))
        assert srv.health()["served"] == 2


def test_handshake_timeout(model):
    async def main(srv):
        async with connect(srv.ws) as ws:
            ev = await recv_json(ws, 10)  # says nothing: the server gives up after handshake_timeout
            assert ev["type"] == "error" and ev["code"] == "handshake_timeout"
            with pytest.raises(ConnectionClosed):
                await recv_json(ws, 10)
        await poll_health(srv, lambda h: h["sessions"] == 0)

    with running_server(model, app_kw={"handshake_timeout": 0.3}) as srv:
        asyncio.run(main(srv))


class _CrashesOnSecondChunk(QueueSession):
    """Fails on the second chunk, as the real engine reports a crash: an error event, then the
    session is over (get_event → None, finished)."""

    def feed(self, pcm):
        super().feed(pcm)
        if self.n >= 2 * CHUNK and not self.finished:
            self.crash("RuntimeError: boom")


def test_engine_failure_is_reported_and_closes_only_that_session(model):
    async def main(srv):
        good, _ = await open_session(srv.ws, format="s16le")
        ws, _ = await open_session(srv.ws)
        await send_audio(ws, audio(1, 2))
        got = await until(ws, lambda e: e["type"] == "error")
        assert got[-1] == {"type": "error", "code": "engine_error", "message": "RuntimeError: boom"}
        with pytest.raises(ConnectionClosed):
            await recv_json(ws, 10)
        assert ws.close_code == 1011
        h = await poll_health(srv, lambda h: h["sessions"] == 1)
        assert h["sessions"] == 1  # the other session is still open
        await good.close()

    with running_server(model, engine=QueueEngine(_CrashesOnSecondChunk)) as srv:
        asyncio.run(main(srv))


def test_serve_binds_loopback_by_default():
    import inspect

    from soundflow.server import serve

    sig = inspect.signature(serve)
    assert sig.parameters["host"].default == "127.0.0.1" and sig.parameters["port"].default == 8765


def test_serve_batches_connections_by_default(model, monkeypatch):
    """`soundflow serve` gives its connections shared batch workers unless --no-batch."""
    import uvicorn

    from soundflow import server

    seen = {}
    real = server.create_app

    def spy(m, **kw):
        seen["options"] = kw["options"]
        return real(m, **kw)

    monkeypatch.setattr(server, "create_app", spy)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: None)
    for batch in (True, False):
        assert server.serve(model=model, quant=None, batch=batch, log_level="warning") == 0
        assert seen["options"].batch is batch

