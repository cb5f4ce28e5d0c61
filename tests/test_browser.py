"""The browser page in real headless Chromium: microphone → AudioWorklet → WebSocket → timeline.

Chromium's fake capture device plays a WAV file as the microphone; the page is opened with
`?autostart=1` so it starts listening on load. The test reads the page's DOM through the Chrome
DevTools protocol (`--remote-debugging-port`, `Runtime.evaluate`), then stops the microphone
and streams a file through the upload path (`DOM.setFileInputFiles`) in fast mode.

Needs /usr/bin/chromium (Debian: `apt-get install -y chromium`); skipped without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_server import running_server  # tests/ is on sys.path under pytest (no __init__.py)

from soundflow.model import build_model

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs /usr/bin/chromium (apt-get install -y chromium)"),
]


def _wav(path: Path, seconds: float, sr: int) -> Path:
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(0)
    x = 0.25 * np.sin(2 * np.pi * 330 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0) + 0.02 * rng.standard_normal(len(t))
    sf.write(path, x.astype(np.float32), sr, subtype="PCM_16")
    return path


# One second of a sine at `rate` through the page's worklet in an OfflineAudioContext; returns the
# number of 16 kHz samples it posted, their RMS (past the filter's start-up) and zero crossings.
WORKLET_PROBE = """(async () => {
  const ctx = new OfflineAudioContext(1, %(rate)d, %(rate)d);
  await ctx.audioWorklet.addModule("static/worklet.js");
  const node = new AudioWorkletNode(ctx, "soundflow-downsampler", {processorOptions: {frameSamples: 1600}});
  const frames = [];
  node.port.onmessage = (e) => frames.push(e.data.pcm);
  const osc = ctx.createOscillator();
  osc.frequency.value = %(freq)d;
  osc.connect(node).connect(ctx.destination);
  osc.start();
  await ctx.startRendering();
  for (let i = 0; i < 50 && frames.length < 10; i++) await new Promise((r) => setTimeout(r, 20));
  const x = new Float32Array(frames.reduce((a, f) => a + f.length, 0));
  let o = 0;
  for (const f of frames) { x.set(f, o); o += f.length; }
  let ss = 0, crossings = 0;
  for (let i = 800; i < x.length; i++) ss += x[i] * x[i];
  for (let i = 801; i < x.length; i++) if ((x[i - 1] < 0) !== (x[i] < 0)) crossings++;
  return {n: x.length, rms: Math.sqrt(ss / Math.max(1, x.length - 800)), crossings};
})()"""


class DevTools:
    """Minimal Chrome DevTools protocol client over the `websockets` sync client."""

    def __init__(self, url: str):
        from websockets.sync.client import connect

        self._conn = connect(url, max_size=None, open_timeout=20)
        self.ws = self._conn.__enter__()
        self.n = 0

    def call(self, method: str, **params) -> dict:
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                state = self.eval("JSON.stringify({...window.soundflow, log: [...document.querySelectorAll('#log li')].map(l => l.textContent)})")
                raise AssertionError(f"timed out waiting for {what}; page state: {state}")
            time.sleep(0.25)

    def close(self):
        self._conn.__exit__(None, None, None)


@pytest.fixture
def chromium(tmp_path):
    procs = []

    def launch(url: str, fake_audio: Path) -> DevTools:
        profile = tmp_path / "profile"
        profile.mkdir()
        args = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={fake_audio}", "--autoplay-policy=no-user-gesture-required",
            "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "--window-size=1280,900", url,
        ]
        log = open(tmp_path / "chromium.log", "wb")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start: " + (tmp_path / "chromium.log").read_text()[-2000:])
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        while True:
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            pages = [t for t in targets if t.get("type") == "page" and t.get("url", "").startswith("http://127.0.0.1")]
            if pages:
                return DevTools(pages[0]["webSocketDebuggerUrl"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"no page target: {targets}")
            time.sleep(0.1)

    yield launch
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group this test started (chromium + helpers)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_page_streams_microphone_and_file(chromium, tmp_path):
    model = build_model("tiny")
    mic_wav = _wav(tmp_path / "mic.wav", 30.0, 48000)
    file_wav = _wav(tmp_path / "upload.wav", 4.0, 44100)
    with running_server(model, token="browser-token") as srv:
        dt = chromium(f"{srv.http}/?autostart=1&token=browser-token", mic_wav)
        try:
            # live microphone: the fake device → worklet (device rate → 16 kHz) → decisions on the page
            dt.wait("document.querySelectorAll('#timeline .cell').length >= 5", 60, "5 decisions from the microphone")
            chunks = dt.eval("[...document.querySelectorAll('#timeline .cell')].map(c => +c.dataset.chunk)")
            assert chunks == list(range(len(chunks)))
            sf = dt.eval("window.soundflow")
            assert sf["state"] == "live" and not sf["errors"] and sf["session"]
            rate = dt.eval("document.getElementById('status-text').textContent")
            assert "→ 16 kHz" in rate
            # ~real time: 5 chunks are 2 s of audio; the worklet's output rate is 16 kHz, not 44.1/48
            assert srv.health()["sessions"] == 1

            dt.eval("document.getElementById('stop').click()")
            dt.wait("window.soundflow.state === 'done'", 30, "the microphone session to finish")

            # file upload, fast mode: decodeAudioData → OfflineAudioContext at 16 kHz → 10 chunks
            dt.eval("document.getElementById('pace').value = 'fast'")
            doc = dt.call("DOM.getDocument")
            node = dt.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#file")
            dt.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(file_wav)])
            dt.wait("window.soundflow.state === 'done' && window.soundflow.decisions > 0", 60, "the file to stream")
            chunks = dt.eval("[...document.querySelectorAll('#timeline .cell')].map(c => +c.dataset.chunk)")
            assert chunks == list(range(10))  # 4.0 s → ten 400 ms chunks
            assert not dt.eval("window.soundflow.errors")

            # the worklet itself, offline: exactly 16 kHz out, in-band tones kept, aliases removed
            for rate in (48000, 44100):
                for freq, lo, hi in ((1000, 0.6, 0.8), (11000, 0.0, 0.02)):
                    r = dt.eval(WORKLET_PROBE % {"rate": rate, "freq": freq})
                    assert r["n"] == 16000, (rate, r)
                    assert lo <= r["rms"] <= hi, (rate, freq, r)
                    if freq == 1000:
                        assert abs(r["crossings"] - 1900) <= 3, (rate, r)  # 1 kHz over 0.95 s at 16 kHz
        finally:
            dt.close()
        h = srv.health()
        assert h["served"] == 2 and h["sessions"] == 0
