"""`soundflow bench serve`: soak test of `soundflow serve` under honest and abusive clients.

Starts a real server (`soundflow serve`, a subprocess on a free loopback port), then for
`minutes`:

- `sessions` honest clients each stream real audio (bench/latency.py's `real_stream`) at 1x
  real time in 100 ms frames, as the browser page does, and read their events;
- a mix of abusive clients, each in a loop for the whole run: `huge` (1e20 and NaN samples,
  then a little real audio), `instructions` (4000-character instructions every 100 ms),
  `sprayer` (1-byte frames, never reading), `hellos` (malformed and cross-origin handshakes),
  `slowloris` (HTTP requests whose headers never finish), `vanish` (streams, then drops the TCP
  connection without a close).

Reported: per honest session the decision latency p50/p99 — server-side (`latency_ms`: last
sample arrived → decided) and client-side (last sample sent → decision received) —, stalls
(client-side latency above `stall_ms`), errors, missing decisions; the server's RSS and session
count over time; what each abuser did and was told.

It fails loudly (exit 1, `"ok": false`): an honest session with any error event, an abnormal
close, a missing decision or a missing `end`; or the server process dying. RSS growth after
warm-up is reported (`rss_growth_mb`) next to the goal (flat: < 100 MB).
"""

from __future__ import annotations

import asyncio
import contextlib
import json as _json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

from ..audio import SAMPLE_RATE as SR

FRAME = 1600  # 100 ms, as the page sends
ABUSERS = ("huge", "instructions", "sprayer", "hellos", "slowloris", "vanish")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _pct(x, q):
    return round(float(np.percentile(x, q)), 1) if len(x) else None


def _hello(**over) -> str:
    return _json.dumps({"type": "hello", "version": 1, "sample_rate": SR, "format": "f32le", **over})


class _Failed(Exception):
    pass


async def _honest(i: int, url: str, wave: np.ndarray, t_end: float, chunk_n: int, stall_ms: float) -> dict:
    from websockets.asyncio.client import connect

    r = {"session": i, "sent_chunks": 0, "decisions": 0, "server_ms": [], "client_ms": [], "errors": [],
         "end": None, "close_code": None, "max_send_lag_ms": 0.0}
    try:
        ws = await connect(url, max_size=None, open_timeout=120, ping_interval=None)  # paced, not dead: docs/server-protocol.md
    except Exception as e:  # noqa: BLE001
        r["errors"].append(f"connect: {e}")
        return r
    sent_at: dict[int, float] = {}
    try:
        await ws.send(_hello())
        ready = _json.loads(await asyncio.wait_for(ws.recv(), 120))
        if ready.get("type") != "ready":
            r["errors"].append(f"handshake: {ready}")
            return r

        async def reader():
            async for msg in ws:
                ev = _json.loads(msg)
                typ = ev.get("type")
                if typ == "decision":
                    r["decisions"] += 1
                    r["server_ms"].append(ev["latency_ms"])
                    if ev["chunk"] in sent_at:
                        r["client_ms"].append((time.perf_counter() - sent_at.pop(ev["chunk"])) * 1000)
                elif typ == "error":
                    r["errors"].append(ev)
                elif typ == "end":
                    r["end"] = ev
                    return

        rt = asyncio.create_task(reader())
        t0 = time.perf_counter()
        n = 0
        per_chunk = chunk_n // FRAME
        while time.perf_counter() < t_end and not rt.done():
            target = t0 + (n + 1) * FRAME / SR  # the frame's last sample exists now (real time)
            rest = target - time.perf_counter()
            if rest > 0:
                await asyncio.sleep(rest)
            else:
                r["max_send_lag_ms"] = max(r["max_send_lag_ms"], -rest * 1000)
            j = (n * FRAME) % (len(wave) - FRAME)
            await ws.send(wave[j : j + FRAME].astype("<f4").tobytes())
            n += 1
            if n % per_chunk == 0:
                sent_at[n // per_chunk - 1] = time.perf_counter()
            r["sent_chunks"] = -(-n // per_chunk)  # the partial last chunk is flushed at end
        await ws.send(_json.dumps({"type": "end"}))
        await asyncio.wait_for(rt, 300)
        if rt.exception():
            raise rt.exception()
    except Exception as e:  # noqa: BLE001 — any failure of an honest session is a finding
        r["errors"].append(f"{type(e).__name__}: {e}")
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 10)
        r["close_code"] = ws.close_code
    r["stalls"] = int(sum(1 for x in r["client_ms"] if x > stall_ms))
    return r


async def _abuser(kind: str, url: str, port: int, wave: np.ndarray, t_end: float) -> dict:
    """Loop one kind of abuse until t_end; count what was done and what the server answered."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    st = {"kind": kind, "rounds": 0, "told": {}, "closed": {}, "surprises": []}

    def told(code):
        st["told"][code] = st["told"].get(code, 0) + 1

    async def session():
        ws = await connect(url, max_size=None, open_timeout=60)
        await ws.send(_hello())
        ready = _json.loads(await asyncio.wait_for(ws.recv(), 60))
        if ready.get("type") != "ready":
            told(ready.get("code"))  # busy, when the server is full
            await ws.close()
            await asyncio.sleep(1.0)  # an abuser, not a handshake flood
            return None
        return ws

    async def drain(ws, seconds):
        deadline = time.perf_counter() + seconds
        with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
            while True:
                ev = _json.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.perf_counter())))
                if ev.get("type") == "error":
                    told(ev.get("code"))

    slow: list[socket.socket] = []
    while time.perf_counter() < t_end:
        st["rounds"] += 1
        try:
            if kind == "huge":
                ws = await session()
                if ws:
                    await ws.send(np.full(6400, 1e20, "<f4").tobytes())
                    await ws.send(np.full(FRAME, np.nan, "<f4").tobytes())
                    for j in range(0, 4 * 6400, FRAME):  # then some real audio, in real time
                        await ws.send(wave[j : j + FRAME].astype("<f4").tobytes())
                        await asyncio.sleep(0.1)
                    await drain(ws, 1.0)
                    await ws.close()
                await asyncio.sleep(0.5)
            elif kind == "instructions":
                ws = await session()
                if ws:
                    for k in range(30):
                        await ws.send(_json.dumps({"type": "instruction", "text": f"{k} " + "note every sound " * 234}))
                        await ws.send(wave[k * FRAME : (k + 1) * FRAME].astype("<f4").tobytes())
                        await asyncio.sleep(0.1)
                    await drain(ws, 1.0)
                    await ws.close()
                await asyncio.sleep(0.5)
            elif kind == "sprayer":
                ws = await session()
                if ws:
                    t0 = time.perf_counter()
                    with contextlib.suppress(ConnectionClosed):
                        while time.perf_counter() - t0 < 60 and time.perf_counter() < t_end:
                            await ws.send(b"\x00")
                            await asyncio.sleep(0.002)
                    st["closed"][str(ws.close_code)] = st["closed"].get(str(ws.close_code), 0) + 1
                    await asyncio.sleep(1.0)
            elif kind == "hellos":
                for first in (_hello(format=[]), _hello(version=True), "{", _hello(instruction="x" * 5000)):
                    async with connect(url, open_timeout=60) as ws:
                        await ws.send(first)
                        ev = _json.loads(await asyncio.wait_for(ws.recv(), 30))
                        told(ev.get("code"))
                try:
                    await connect(url, origin="http://evil.example", open_timeout=60)
                    st["surprises"].append("cross-origin upgrade accepted")
                except InvalidStatus as e:
                    told(f"http_{e.response.status_code}")
                await asyncio.sleep(0.5)
            elif kind == "slowloris":
                slow = [s for s in slow if s.fileno() != -1]
                while len(slow) < 20:
                    s = socket.socket()
                    s.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        s.connect(("127.0.0.1", port))
                    await asyncio.sleep(0.01)
                    with contextlib.suppress(OSError):
                        s.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                    slow.append(s)
                await asyncio.sleep(2.0)
                for s in slow:  # reaped ones read as closed
                    with contextlib.suppress(BlockingIOError, OSError):
                        if s.recv(1) == b"":
                            told("reaped")
                            s.close()
            elif kind == "vanish":
                ws = await session()
                if ws:
                    for j in range(0, 2 * SR, FRAME):
                        await ws.send(wave[j : j + FRAME].astype("<f4").tobytes())
                        await asyncio.sleep(0.1)
                    ws.transport.abort()
                    told("vanished")
                await asyncio.sleep(1.0)
        except (ConnectionClosed, OSError, asyncio.TimeoutError) as e:
            st["closed"][type(e).__name__] = st["closed"].get(type(e).__name__, 0) + 1
            await asyncio.sleep(0.5)
    for s in slow:
        s.close()
    return st


def _wait_healthy(url: str, proc, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _Failed(f"the server exited with {proc.returncode} while starting")
        with contextlib.suppress(Exception):
            with urllib.request.urlopen(url, timeout=2) as r:
                return _json.loads(r.read())
        time.sleep(0.5)
    raise _Failed(f"the server did not answer {url} within {timeout:.0f} s")


def bench_serve(model: str = "mini", sessions: int = 24, minutes: float = 30.0, abusers: str = ",".join(ABUSERS),
                quant: str = "auto", stall_ms: float = 2000.0, sample_s: float = 10.0, warmup_s: float = 60.0,
                json: bool = False, verbose: bool = True) -> dict:
    from .latency import real_stream

    kinds = [k for k in abusers.split(",") if k]
    unknown = set(kinds) - set(ABUSERS)
    if unknown:
        raise ValueError(f"unknown abusers {sorted(unknown)} (known: {', '.join(ABUSERS)})")
    port = _free_port()
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if verbose else (lambda *a: None)
    cmd = [sys.executable, "-m", "soundflow.cli", "serve", "--model", model, "--port", str(port), "--quant", quant]
    log(f"bench serve: starting {' '.join(cmd[2:])}")
    errf = tempfile.TemporaryFile("w+")  # a file, not a pipe: the server's log must never block it
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, text=True)
    health_url = f"http://127.0.0.1:{port}/healthz"
    url = f"ws://127.0.0.1:{port}/v1/stream"
    result: dict = {"model": model, "sessions": sessions, "minutes": minutes, "abusers": kinds, "quant": quant,
                    "stall_ms": stall_ms}
    try:
        h = _wait_healthy(health_url, proc, 600)
        chunk_n = SR * int(h["chunk_ms"]) // 1000
        waves = [real_stream(60.0, seed=i) for i in range(max(sessions, 1))]
        rss: list[dict] = []
        t_start = time.perf_counter()
        t_end = t_start + minutes * 60

        async def sampler():
            while time.perf_counter() < t_end + 5:
                if proc.poll() is not None:
                    raise _Failed(f"the server died (exit {proc.returncode})")
                with contextlib.suppress(Exception):
                    hh = await asyncio.to_thread(lambda: _json.loads(urllib.request.urlopen(health_url, timeout=10).read()))
                    rss.append({"t": round(time.perf_counter() - t_start, 1), "rss_mb": round(_rss_mb(proc.pid) or 0, 1),
                                "sessions": hh["sessions"]})
                    log(f"  t={rss[-1]['t']:7.1f} s  server RSS {rss[-1]['rss_mb']:7.1f} MB  sessions {hh['sessions']}")
                await asyncio.sleep(sample_s)

        async def main():
            samp = asyncio.create_task(sampler())
            honest = [asyncio.create_task(_honest(i, url, waves[i], t_end, chunk_n, stall_ms)) for i in range(sessions)]
            await asyncio.sleep(2.0)  # the honest sessions take their slots first
            bad = [asyncio.create_task(_abuser(k, url, port, waves[0], t_end)) for k in kinds]
            res = await asyncio.gather(*honest)
            ab = await asyncio.gather(*bad)
            # every client has left: the server must free every session (a leak check)
            t_left = time.perf_counter()
            deadline = t_left + 120
            while True:
                hh = await asyncio.to_thread(lambda: _json.loads(urllib.request.urlopen(health_url, timeout=10).read()))
                if hh["sessions"] == 0 or time.perf_counter() > deadline:
                    result["sessions_left_after_clients"] = hh["sessions"]
                    result["drain_s"] = round(time.perf_counter() - t_left, 1)
                    break
                await asyncio.sleep(0.5)
            samp.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await samp
            if samp.done() and not samp.cancelled() and samp.exception():
                raise samp.exception()
            return res, ab

        honest, ab = asyncio.run(main())
    except _Failed as e:
        result.update(ok=False, failure=str(e))
        honest, ab, rss = [], [], []
    finally:
        alive = proc.poll() is None
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errf.seek(0)
        err = errf.read()
        errf.close()
    result["server_alive_at_end"] = alive
    per = []
    failures = [result["failure"]] if "failure" in result else []
    for r in honest:
        missing = r["sent_chunks"] - r["decisions"]
        per.append({"session": r["session"], "chunks": r["sent_chunks"], "decisions": r["decisions"],
                    "missing": missing, "server_p50_ms": _pct(r["server_ms"], 50), "server_p99_ms": _pct(r["server_ms"], 99),
                    "client_p50_ms": _pct(r["client_ms"], 50), "client_p99_ms": _pct(r["client_ms"], 99),
                    "stalls": r["stalls"], "errors": len(r["errors"]), "close_code": r["close_code"],
                    "max_send_lag_ms": round(r["max_send_lag_ms"], 1)})
        if r["errors"] or missing or r["end"] is None or r["close_code"] not in (1000, None):
            failures.append(f"honest session {r['session']}: errors {r['errors'][:3]}, missing {missing}, "
                            f"end {r['end']}, close {r['close_code']}")
    if not alive:
        failures.append("the server was not running at the end")
    if result.get("sessions_left_after_clients"):
        failures.append(f"{result['sessions_left_after_clients']} sessions still held 120 s after every client left")
    for a in ab:
        if a["surprises"]:
            failures.append(f"abuser {a['kind']}: {a['surprises']}")
    after = [x["rss_mb"] for x in rss if x["t"] >= min(warmup_s, minutes * 60 / 2)]
    result.update(
        per_session=per, rss=rss, abusers_report=ab,
        rss_after_warmup_mb=after[0] if after else None, rss_max_mb=max(after) if after else None,
        rss_end_mb=after[-1] if after else None,
        rss_growth_mb=round(max(after) - after[0], 1) if after else None,
        server_p50_ms=_pct([x for r in honest for x in r["server_ms"]], 50),
        server_p99_ms=_pct([x for r in honest for x in r["server_ms"]], 99),
        client_p50_ms=_pct([x for r in honest for x in r["client_ms"]], 50),
        client_p99_ms=_pct([x for r in honest for x in r["client_ms"]], 99),
        stalls=sum(p["stalls"] for p in per), honest_errors=sum(p["errors"] for p in per),
        decisions=sum(p["decisions"] for p in per), failures=failures, ok=not failures,
    )
    if failures and err:
        result["server_stderr_tail"] = err[-3000:]
    if json:
        print(_json.dumps(result, indent=2))
    else:
        _print(result)
    return result


def _print(r: dict) -> None:
    print(f"bench serve — {r['model']}, {r['sessions']} real-time sessions, {r['minutes']:g} min, "
          f"abusers: {', '.join(r['abusers']) or 'none'}")
    print("session  chunks  missing  server p50/p99 ms   client p50/p99 ms   stalls  errors  close")
    for p in r.get("per_session", []):
        print(f"{p['session']:>7}  {p['chunks']:>6}  {p['missing']:>7}  {p['server_p50_ms']!s:>8} / {p['server_p99_ms']!s:<8}"
              f"  {p['client_p50_ms']!s:>8} / {p['client_p99_ms']!s:<8}  {p['stalls']:>6}  {p['errors']:>6}  {p['close_code']}")
    print(f"all honest: server p50 {r.get('server_p50_ms')} / p99 {r.get('server_p99_ms')} ms, client p50 "
          f"{r.get('client_p50_ms')} / p99 {r.get('client_p99_ms')} ms, {r.get('decisions')} decisions, "
          f"{r.get('stalls')} stalls (> {r['stall_ms']:g} ms), {r.get('honest_errors')} errors")
    print(f"server RSS after warm-up {r.get('rss_after_warmup_mb')} MB, max {r.get('rss_max_mb')}, end "
          f"{r.get('rss_end_mb')} (growth {r.get('rss_growth_mb')} MB); timeline: "
          + " ".join(f"{x['t']:.0f}s:{x['rss_mb']:.0f}" for x in r.get("rss", [])))
    for a in r.get("abusers_report", []):
        print(f"abuser {a['kind']:<12} rounds {a['rounds']:>4}  told {a['told']}  closed {a['closed']}"
              + (f"  SURPRISES {a['surprises']}" if a["surprises"] else ""))
    print(f"sessions held after every client left: {r.get('sessions_left_after_clients')} "
          f"(after {r.get('drain_s')} s)")
    print("OK" if r["ok"] else "FAILED: " + "; ".join(r["failures"]))
