"""Fault injection against a real server (issue 13): hostile and careless clients on loopback,
real WebSocket clients, the `tiny` model, every test bounded in time.

The property under test is isolation: whatever one client sends (huge or NaN samples, an input
that makes the model itself fail, floods of instructions, 1-byte frames while never reading,
malformed hellos, a cross-origin page), honest sessions running beside it get exactly the
decisions they get alone, with no error, and the server's memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from helpers import QueueEngine, QueueSession
from test_server import CHUNK, FRAME, audio, finish, hello, make_engine, open_session, recv_json, running_server, send_audio

from soundflow.server import MAX_REFUSALS, _dumps, _RedactTokens

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

POISON = np.float32(0.123456)  # a chunk starting with this sample makes the model raise


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def strict_json(text: str) -> dict:
    def bad(c):
        raise ValueError(f"non-JSON constant {c}")

    return json.loads(text, parse_constant=bad)


async def lockstep(url: str, seed: int, n_chunks: int = 4) -> tuple[list[float], list[dict]]:
    """An honest client: one chunk at a time, each sent once the previous one is decided (so the
    engine never drains two at once and the numbers do not depend on timing)."""
    ws, _ = await open_session(url)
    pcm = audio(seed, n_chunks)
    events = []
    for k in range(n_chunks):
        await send_audio(ws, pcm[k * CHUNK : (k + 1) * CHUNK])
        while True:
            ev = strict_json(await asyncio.wait_for(ws.recv(), 60))
            events.append(ev)
            if ev["type"] == "decision" and ev["chunk"] == k:
                break
    events += await finish(ws)
    return [e["p_response"] for e in events if e["type"] == "decision"], events


@pytest.fixture
def poisonable(model, monkeypatch):
    """The model raises (as the int8 quantiser did on 1e20 samples) for a chunk whose first sample
    is POISON — a fault inside the shared batch forward, caused by one session's input."""
    real = model.features

    def features(x):
        if bool((x[..., 0] == torch.tensor(POISON)).any()):
            raise RuntimeError("In ChooseQuantizationParams, min should be less than or equal to max")
        return real(x)

    monkeypatch.setattr(model, "features", features)
    return model


def test_adversaries_harm_no_honest_session(poisonable):
    model = poisonable
    n_honest = 10

    async def huge_then_mild(url):
        ws, _ = await open_session(url)
        await ws.send(np.full(CHUNK, 1e20, "<f4").tobytes())
        ev = await recv_json(ws, 30)
        assert ev["type"] == "error" and ev["code"] == "malformed_frame" and "peak amplitude" in ev["message"], ev
        await ws.send(np.full(FRAME, np.nan, "<f4").tobytes())
        assert (await recv_json(ws, 30))["code"] == "malformed_frame"
        await ws.send((1.5 * np.sign(audio(50, 1))).astype("<f4").tobytes())  # mild overshoot: clipped, decided
        ev = await recv_json(ws, 30)
        assert ev["type"] == "decision" and ev["chunk"] == 0 and np.isfinite(ev["p_response"]), ev
        ws.transport.abort()  # and vanish without a close frame
        return "huge"

    async def poison(url):
        ws, _ = await open_session(url)
        pcm = audio(51, 1)
        pcm[0] = POISON
        await send_audio(ws, pcm)
        ev = await recv_json(ws, 60)
        assert ev["type"] == "error" and ev["code"] == "engine_error" and "min should be" in ev["message"], ev
        with pytest.raises(ConnectionClosed):
            await recv_json(ws, 30)
        assert ws.close_code == 1011
        return "poison"

    async def instruction_flood(url):
        ws, _ = await open_session(url)
        for i in range(40):
            await ws.send(json.dumps({"type": "instruction", "text": f"{i} " + "x" * 3990}))
        codes = [(await recv_json(ws, 30))["code"] for _ in range(40)]
        # tiny's byte tokenizer: 4000 tokens > max_instruction_tokens (1024); the rest: rate limit
        assert set(codes) <= {"instruction_too_long", "rate_limited"} and "instruction_too_long" in codes, codes
        await send_audio(ws, audio(52, 1))
        events = await finish(ws)
        assert [e["chunk"] for e in events if e["type"] == "decision"] == [0]
        return "flood"

    async def byte_sprayer(url):
        """1-byte frames (never a whole sample), never reading: told at most MAX_REFUSALS times
        (the server stops reading it while its events are unread), then closed."""
        ws, _ = await open_session(url)
        t0 = time.monotonic()
        n = 0
        with pytest.raises(ConnectionClosed):
            while time.monotonic() - t0 < 40:
                await ws.send(b"\x00")
                n += 1
                await asyncio.sleep(0.001)  # keep this client's own event loop alive
        assert time.monotonic() - t0 < 25, "the server never closed a client it refused MAX_REFUSALS times"
        codes = []  # what it was sent, read only now (its library stopped reading at its queue limit)
        with contextlib.suppress(ConnectionClosed):
            async for msg in ws:
                codes.append(json.loads(msg)["code"])
        assert codes and set(codes) <= {"malformed_frame", "too_many_errors"}, codes
        assert n > MAX_REFUSALS
        return "sprayer"

    async def bad_hellos(url):
        for first in (hello(format=[]), hello(format={}), hello(version=True), hello(sample_rate="16000"),
                      hello(chunk_ms=[400]), json.dumps({"type": "hello", "version": 1e400})):
            async with connect(url) as ws:
                await ws.send(first)
                ev = await recv_json(ws, 20)
                assert ev["type"] == "error" and ev["code"] in ("bad_handshake", "unsupported_format",
                                                                 "unsupported_version", "unsupported_sample_rate",
                                                                 "unsupported_chunk_ms", "bad_json"), ev
        return "hellos"

    async def cross_origin(url):
        with pytest.raises(InvalidStatus) as info:
            await connect(url, origin="http://evil.example", open_timeout=10)
        assert info.value.response.status_code == 403
        return "origin"

    async def main(srv):
        alone = [await lockstep(srv.ws, i) for i in range(n_honest)]
        rss0 = rss_mb()
        honest = [asyncio.create_task(lockstep(srv.ws, i)) for i in range(n_honest)]
        await asyncio.sleep(0.2)  # the honest sessions are streaming when the adversaries arrive
        bad = await asyncio.gather(huge_then_mild(srv.ws), poison(srv.ws), instruction_flood(srv.ws),
                                   byte_sprayer(srv.ws), bad_hellos(srv.ws), cross_origin(srv.ws))
        together = await asyncio.gather(*honest)
        return alone, together, bad, rss_mb() - rss0

    with running_server(model, batch=True, threshold=1.01) as srv:
        alone, together, bad, grew = asyncio.run(asyncio.wait_for(main(srv), 240))
        assert bad == ["huge", "poison", "flood", "sprayer", "hellos", "origin"]
        for (p_alone, _), (p_together, events) in zip(alone, together):
            assert not [e for e in events if e["type"] == "error"], events
            assert events[-1] == {"type": "end", "chunks": 4}
            assert p_together == pytest.approx(p_alone, abs=1e-4)
        deadline = time.monotonic() + 20
        while srv.health()["sessions"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.health()["sessions"] == 0
        assert grew < 100, f"server memory grew {grew:.0f} MB"


def test_forty_long_instructions_keep_the_cache_and_latency_bounded(model):
    """40 instructions of 4000 characters (accepted here: max_instruction_tokens 4096, no rate
    limit), each followed by a chunk so each is really applied. Before issue 13 every one was
    appended to the KV cache outside the context budget (160k positions after 40); now each
    replaces the last, the cache stays within instruction + window, and decisions stay fast."""
    engine = make_engine(model, threshold=1.01, max_instruction_tokens=4096, batch=True)
    sessions = []
    real_session = engine.session

    def spy(**kw):
        s = real_session(**kw)
        sessions.append(s)
        return s

    engine.session = spy
    window = engine.options.max_context_chunks * 11  # positions: 10 audio slots + a control token per chunk

    async def main(srv):
        ws, _ = await open_session(srv.ws)
        lat = []

        async def chunk(seed):
            await send_audio(ws, audio(seed, 1))
            while True:
                ev = strict_json(await asyncio.wait_for(ws.recv(), 60))
                assert ev["type"] != "error", ev
                if ev["type"] == "decision":
                    return ev["latency_ms"]

        for i in range(5):
            lat.append(await chunk(i))
        before = float(np.median(lat))
        for i in range(2):  # warm-up: the first rebuilds allocate the working buffers at full size
            await ws.send(json.dumps({"type": "instruction", "text": f"w{i} " + "watch the kettle " * 235}))
            await chunk(90 + i)
        rss0 = rss_mb()
        cache = []
        for i in range(40):
            await ws.send(json.dumps({"type": "instruction", "text": f"{i:02d} " + "watch the kettle " * 235}))
            await chunk(100 + i)
            cache.append(sessions[0].cache_len)
        grew = rss_mb() - rss0
        after = [await chunk(200 + i) for i in range(5)]
        events = await finish(ws)
        assert events[-1] == {"type": "end", "chunks": 52}
        return before, after, cache, grew

    with running_server(model, engine=engine, app_kw={"instruction_rate": (1000, 1000.0),
                                                              "server_instruction_rate": (1000, 1000.0)}) as srv:
        before, after, cache, grew = asyncio.run(asyncio.wait_for(main(srv), 240))
    assert max(cache) <= 4096 + window + 64, max(cache)
    assert sessions[0].instruction.startswith("39 ")  # the last one is in force
    assert grew < 100, f"memory grew {grew:.0f} MB"
    assert float(np.median(after)) < max(4 * before, before + 300), (before, after)


def test_malformed_hello_gets_an_error_event(model):
    cases = [
        (hello(format=[]), "unsupported_format"),
        (hello(format={}), "unsupported_format"),
        (hello(version=True), "unsupported_version"),
        (hello(sample_rate=16000.5), "unsupported_sample_rate"),
        (hello(sample_rate=True), "unsupported_sample_rate"),
        (hello(chunk_ms={"a": 1}), "unsupported_chunk_ms"),
        (hello(instruction=["x"]), "bad_handshake"),
        (hello(instruction="x" * 4001), "instruction_too_long"),
        (hello(instruction="y" * 2000), "instruction_too_long"),  # 2000 byte tokens > 1024
        (json.dumps([{"type": "hello"}]), "bad_handshake"),
        ("[" * 100000, "bad_json"),
    ]

    async def one(url, first, code):
        async with connect(url) as ws:
            await ws.send(first)
            ev = await recv_json(ws, 20)
            assert ev == {"type": "error", "code": code, "message": ev["message"]}, (first[:60], ev)
            with pytest.raises(ConnectionClosed):
                await recv_json(ws, 20)
            assert ws.close_code == 1008

    async def main(srv):
        await asyncio.gather(*(one(srv.ws, f, c) for f, c in cases))
        ws, _ = await open_session(srv.ws, instruction="y" * 1000)  # within the limit
        await send_audio(ws, audio(1, 1))
        assert (await finish(ws))[-1] == {"type": "end", "chunks": 1}

    with running_server(model) as srv:
        asyncio.run(asyncio.wait_for(main(srv), 120))


def test_cross_origin_and_rebinding_refused(model):
    async def main(srv):
        same = f"http://127.0.0.1:{srv.port}"
        for origin in ("http://evil.example", "null", f"http://127.0.0.1:{srv.port + 1}", "https://evil.example"):
            with pytest.raises(InvalidStatus) as info:
                await connect(srv.ws, origin=origin, open_timeout=10)
            assert info.value.response.status_code == 403, origin
        for origin in (same, "https://app.example"):  # the page's own origin; an allowed one
            ws, _ = await open_session(srv.ws, headers={"Origin": origin})
            await finish(ws)
        ws, _ = await open_session(srv.ws)  # no Origin: not a browser page
        await finish(ws)
        # DNS rebinding: a page at evil.example re-pointed to 127.0.0.1 (same-origin as far as
        # the browser knows: Origin and Host agree) is refused by the Host check
        with pytest.raises(InvalidStatus) as info:
            await connect(f"ws://evil.example:{srv.port}/v1/stream", host="127.0.0.1", port=srv.port,
                          origin=f"http://evil.example:{srv.port}", open_timeout=10)
        assert info.value.response.status_code == 403

    with running_server(model, app_kw={"allowed_origins": ["https://app.example/"]}) as srv:
        asyncio.run(asyncio.wait_for(main(srv), 120))
        req = urllib.request.Request(srv.http + "/healthz", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert info.value.code == 403
        req = urllib.request.Request(srv.http + "/healthz", headers={"Host": f"localhost:{srv.port}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200


def test_any_origin_when_allowed(model):
    async def main(srv):
        ws, _ = await open_session(srv.ws, headers={"Origin": "http://anything.example"})
        await finish(ws)

    with running_server(model, app_kw={"allowed_origins": ["*"]}) as srv:
        asyncio.run(asyncio.wait_for(main(srv), 60))


def test_half_sent_requests_and_idle_sessions_are_reaped(model):
    async def main(srv):
        ws, _ = await open_session(srv.ws)  # ready, then silent
        t0 = time.monotonic()
        ev = await recv_json(ws, 20)
        assert ev["code"] == "idle_timeout"
        with pytest.raises(ConnectionClosed):
            await recv_json(ws, 20)
        assert ws.close_code == 1008 and time.monotonic() - t0 < 5
        # a session that keeps sending is not idle
        ws, _ = await open_session(srv.ws)
        for k in range(4):
            await send_audio(ws, audio(k, 0.5))
            await asyncio.sleep(0.4)
        await finish(ws)

    with running_server(model, app_kw={"idle_timeout": 1.0}, config_kw={"header_timeout": 0.5}) as srv:
        socks = []
        for _ in range(50):  # headers never finished (slowloris)
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            socks.append(s)
        quiet = socket.create_connection(("127.0.0.1", srv.port), timeout=10)  # nothing at all
        time.sleep(2.0)
        for s in socks + [quiet]:
            assert s.recv(1) == b""  # closed by the server
            s.close()
        assert srv.health()["status"] == "ok"
        asyncio.run(asyncio.wait_for(main(srv), 60))


class _CrashesAtFlush(QueueSession):
    """Decides chunk 0, then fails while flushing at close (after `end`)."""

    def feed(self, pcm):
        pass

    def close(self):
        self.crash("RuntimeError: boom at flush")


def test_engine_failure_after_end_closes_1011_without_end(model):
    async def main(srv):
        ws, _ = await open_session(srv.ws)
        await send_audio(ws, audio(1, 0.5))
        await ws.send(json.dumps({"type": "end"}))
        got = []
        with pytest.raises(ConnectionClosed):
            while True:
                got.append(await recv_json(ws, 20))
        assert [e["type"] for e in got] == ["decision", "error"] and got[-1]["code"] == "engine_error"
        assert ws.close_code == 1011

    with running_server(model, engine=QueueEngine(_CrashesAtFlush)) as srv:
        asyncio.run(asyncio.wait_for(main(srv), 60))


def test_non_finite_probability_ends_that_session_never_reaches_json(model, monkeypatch):
    monkeypatch.setattr(model, "control_probs", lambda h: torch.tensor(float("nan")))

    async def main(srv):
        ws, _ = await open_session(srv.ws)
        await send_audio(ws, audio(1, 1))
        got = []
        with pytest.raises(ConnectionClosed):
            while True:
                got.append(strict_json(await asyncio.wait_for(ws.recv(), 30)))
        assert got[-1]["code"] == "engine_error" and "non-finite" in got[-1]["message"]
        assert ws.close_code == 1011

    with running_server(model) as srv:
        asyncio.run(asyncio.wait_for(main(srv), 60))
    assert strict_json(_dumps({"p": float("nan"), "q": [float("inf"), 1.5], "r": {"s": -float("inf")}})) == \
        {"p": None, "q": [None, 1.5], "r": {"s": None}}


def test_token_redaction_keeps_access_log_formatting():
    """`/?token=…` in the access log: hidden, and uvicorn's formatter still works (it unpacks
    record.args itself; flattening them printed a 60-line logging traceback)."""
    from uvicorn.logging import AccessFormatter

    rec = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                            ("127.0.0.1:5555", "GET", "/?token=s3cret&x=1", "1.1", 200), None)
    assert _RedactTokens().filter(rec)
    line = AccessFormatter("%(client_addr)s - \"%(request_line)s\" %(status_code)s", use_colors=False).format(rec)
    assert "s3cret" not in line and "token=***" in line and "200" in line


def test_serve_refuses_public_bind_without_token(model, monkeypatch, capsys):
    import uvicorn

    from soundflow import server

    ran = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: ran.append(self.config.host))
    monkeypatch.delenv("SOUNDFLOW_TOKEN", raising=False)
    assert server.serve(host="0.0.0.0", model=model, quant=None, log_level="warning") == 2
    assert "without a token" in capsys.readouterr().err and not ran
    assert server.serve(host="0.0.0.0", model=model, quant=None, log_level="warning", insecure=True) == 0
    assert server.serve(host="0.0.0.0", model=model, quant=None, log_level="warning", token="t") == 0
    assert server.serve(host="127.0.0.1", model=model, quant=None, log_level="warning") == 0
    assert ran == ["0.0.0.0", "0.0.0.0", "127.0.0.1"]
