"""FIFO streaming engine (Alg. 4): scheduling invariants, context policy, CLI `listen`."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from contextlib import redirect_stdout

import numpy as np
import pytest

from soundflow import decoding
from soundflow.audio import AudioError, iter_chunks, write_audio
from soundflow.engine import Engine, EngineOptions


def _wave(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def _decisions(evs):
    return [e for e in evs if e["type"] == "decision"]


class _SlowEncode:
    """Wrap model.encode_heard (what a stream's chunks go through): count calls."""

    def __init__(self, model):
        self.model, self.orig = model, model.encode_heard
        self.calls = 0
        self.lock = threading.Lock()

    def __enter__(self):
        def enc(mel):
            with self.lock:
                self.calls += mel.shape[0]
            return self.orig(mel)
        self.model.encode_heard = enc
        return self

    def __exit__(self, *a):
        del self.model.encode_heard  # back to the class method


def test_drain_whole_queue_on_trigger(model):
    """Chunks queued while the decoder is busy are drained in ONE feed, in order; the older ones
    get drained silent decisions, the newest the model's decision."""
    calls = []
    orig = decoding.feed_audio

    gate = threading.Event()

    def slow_feed(m, st, audio, heard=None):
        calls.append(audio.shape[0])
        if len(calls) == 1:
            gate.wait(5)  # hold the decoder on chunk 0 while 5 more chunks arrive
        return orig(m, st, audio, heard)

    decoding.feed_audio = slow_feed
    try:
        with _SlowEncode(model) as enc:
            sess = Engine(model, EngineOptions(threshold=1.01, torch_threads=None)).session()
            chunks = list(iter_chunks(_wave(2.4)))
            sess.feed(chunks[0])
            while not calls:
                time.sleep(0.005)
            for c in chunks[1:]:
                sess.feed(c)
            deadline = time.time() + 10
            while sess.queued < 5 and time.time() < deadline:  # all 5 encoded AND queued
                time.sleep(0.005)
            gate.set()
            sess.close()
            evs = list(sess.events())
    finally:
        decoding.feed_audio = orig
    assert calls == [1, 5]
    d = _decisions(evs)
    assert [e["chunk"] for e in d] == list(range(6))
    assert [bool(e.get("drained")) for e in d] == [False, True, True, True, True, False]
    assert all(e["decision"] == "silent" for e in d)
    assert enc.calls == 6


@pytest.mark.parametrize("mode", ["fifo", "sequential"])
def test_one_decision_per_chunk_in_order_encoded_once(model, mode):
    wave = _wave(8.1)  # 20 full chunks + a partial one flushed by close()
    with _SlowEncode(model) as enc:
        sess = Engine(model, EngineOptions(mode=mode, threshold=0.0, max_reply_tokens=4)).session()
        pieces = [wave[i:i + 1234] for i in range(0, len(wave), 1234)]  # arbitrary feed sizes
        for p in pieces:
            sess.feed(p)
        sess.close()
        evs = list(sess.events())
    d = _decisions(evs)
    assert [e["chunk"] for e in d] == list(range(21))
    assert enc.calls == 21
    assert all(e["latency_ms"] >= 0 and e["t"] == pytest.approx((e["chunk"] + 1) * 0.4) for e in d)
    json.dumps(evs)  # JSON-serialisable
    # every response decision is followed by its response event
    resp = [e["chunk"] for e in d if e["decision"] == "response"]
    assert [e["chunk"] for e in evs if e["type"] == "response"] == resp
    assert not [e for e in evs if e["type"] == "error"]


def test_fifo_matches_sequential_when_decoder_keeps_up(model):
    chunks = list(iter_chunks(_wave(12, seed=3)))
    out = {}
    for mode in ("fifo", "sequential"):
        eng = Engine(model, EngineOptions(mode=mode, threshold=0.5, max_reply_tokens=6))
        evs = list(eng.session(instruction="say hi").run(chunks, realtime=False))
        out[mode] = [(e["chunk"], e["decision"], e["p_response"]) for e in _decisions(evs)], \
            [e["text"] for e in evs if e["type"] == "response"]
    assert out["fifo"] == out["sequential"]
    # and both match the sequential reference decoder of decoding.py
    ref = list(decoding.decode_stream(model, chunks, decoding.DecodeOptions(instruction="say hi", max_reply_tokens=6)))
    assert [(e["chunk"], e["decision"]) for e in _decisions(ref)] == [(c, d) for c, d, _ in out["fifo"][0]]


def test_memory_across_replies(model):
    """The cache is never reset after a reply: it holds every chunk and every reply token."""
    n = 10
    sess = Engine(model, EngineOptions(threshold=0.0, max_reply_tokens=3, max_context_chunks=None)).session()
    evs = list(sess.run(iter_chunks(_wave(0.4 * n))))
    replies = [e for e in evs if e["type"] == "response"]
    assert len(replies) == n
    # every chunk (10 slots + control token) and the replies are still in the cache
    assert sess.cache_len == sess.context.pos > n * 11 + n
    assert sess.context.chunks == n
    # the decision on the last chunk depends on the history: a fresh decoder gives another P
    fresh = list(decoding.decode_stream(model, list(iter_chunks(_wave(0.4 * n)))[-1:], decoding.DecodeOptions(threshold=0.0)))
    assert _decisions(fresh)[0]["p_response"] != pytest.approx(_decisions(evs)[-1]["p_response"], abs=1e-4)


@pytest.mark.parametrize("policy", ["shift", "rebuild"])
def test_context_policy_bounds_cache_on_long_stream(model, policy):
    cap = 20
    opts = EngineOptions(threshold=0.95, max_reply_tokens=2, max_context_chunks=cap, context_policy=policy)
    sess = Engine(model, opts).session(instruction="watch")
    n = 2000
    rng = np.random.default_rng(1)
    lens = []
    evs = []
    chunk = (rng.standard_normal(6400) * 0.1).astype(np.float32)
    for k in range(n):
        sess.feed(chunk * (1 + (k % 7) / 7))
        sess.wait_idle()
        lens.append(sess.cache_len)
        while (ev := sess.get_event(timeout=0)) is not None:
            evs.append(ev)
    sess.close()
    evs += list(sess.events())
    d = _decisions(evs)
    assert [e["chunk"] for e in d] == list(range(n))
    assert not [e for e in evs if e["type"] == "error"]
    per_chunk_max = 10 + 1 + 2 + 1  # audio, control, reply cap, <eos>
    prefix = len("watch")
    assert max(lens) <= prefix + cap * per_chunk_max + 1
    evictions = sess.stats["rebuilds"] + sess.stats["shifts"]
    assert evictions >= (n - cap) // (cap // 2) - 1
    assert sess.stats["shifts" if policy == "shift" else "rebuilds"] == evictions
    assert sess.context.pos == sess.cache_len  # contiguous positions after every eviction


def test_rebuild_equals_fresh_decode_of_the_window(model):
    """After a rebuild the cache is what a fresh decoder would build from the kept window."""
    cap = 6
    chunks = list(iter_chunks(_wave(0.4 * 8, seed=5)))
    sess = Engine(model, EngineOptions(threshold=1.01, max_context_chunks=cap, evict_chunks=3,
                                       context_policy="rebuild")).session(instruction="x")
    evs = list(sess.run(chunks))
    # 8 chunks: rebuild before chunk 6 (window 6 → keep 3: chunks 3,4,5), then 6, 7 appended
    assert sess.stats["rebuilds"] == 1
    fresh = list(decoding.decode_stream(model, chunks[3:], decoding.DecodeOptions(instruction="x", threshold=1.01)))
    got = [e["p_response"] for e in _decisions(evs)][6:]
    want = [e["p_response"] for e in _decisions(fresh)][3:]
    assert got == pytest.approx(want, abs=1e-3)


def test_nan_input_raises(model):
    sess = Engine(model).session()
    with pytest.raises(AudioError):
        sess.feed(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(AudioError):
        sess.feed(np.array([np.inf] * 10, dtype=np.float32))
    sess.close()
    assert list(sess.events()) == []


def test_instruction_barge_in_cuts_reply(model):
    opts = EngineOptions(threshold=0.0, max_reply_tokens=200, barge_in=True)
    sess = Engine(model, opts).session()
    sess.feed(_wave(0.4))
    first = sess.get_event(timeout=10)
    assert first["type"] == "decision" and first["decision"] == "response"
    tok = sess.get_event(timeout=10)
    assert tok["type"] == "token"
    sess.set_instruction("stop and listen")
    sess.close()
    evs = list(sess.events())
    resp = [e for e in evs if e["type"] == "response"]
    assert resp and resp[0].get("cut") == "instruction"
    assert sess.instruction == "stop and listen"


def test_listen_jsonl_one_decision_per_chunk(model, tmp_path, capsys):
    from soundflow.listen import listen

    path = tmp_path / "a.wav"
    write_audio(path, _wave(60, seed=7))
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = listen(str(path), model=model, jsonl=True, threshold=0.9)
    assert rc == 0
    rows = [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    d = [r for r in rows if r["type"] == "decision"]
    assert len(d) == 150
    assert [r["chunk"] for r in d] == list(range(150))
    assert all({"type", "chunk", "t", "decision", "latency_ms"} <= r.keys() for r in d)
    assert "untrained" in capsys.readouterr().err


def test_listen_jsonl_stdout_holds_json_only(model, tmp_path, monkeypatch):
    """What a library prints or logs to stdout mid-stream (deepspeed's accelerator warning, through
    a logger bound to stdout before the run) goes to stderr: every stdout line parses."""
    import logging

    from soundflow.engine import Session
    from soundflow.listen import listen

    path = tmp_path / "c.wav"
    write_audio(path, _wave(2, seed=9))
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    noisy = logging.getLogger("DeepSpeed")
    handler = logging.StreamHandler(sys.stdout)
    noisy.addHandler(handler)
    run = Session.run

    def chatty(self, *a, **k):
        noisy.warning("Setting accelerator to CPU")
        print("a library's print")
        yield from run(self, *a, **k)

    monkeypatch.setattr(Session, "run", chatty)
    try:
        assert listen(str(path), model=model, jsonl=True, threshold=0.9) == 0
    finally:
        noisy.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert len([json.loads(x) for x in lines]) >= 5  # five decisions, nothing else
    assert "Setting accelerator to CPU" in err.getvalue() and "a library's print" in err.getvalue()
    assert handler.stream is out  # put back as it was


def test_listen_plain_and_plot(model, tmp_path):
    from soundflow.listen import listen

    path = tmp_path / "b.wav"
    write_audio(path, _wave(4, seed=8))
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = listen(str(path), model=model, threshold=0.0, plot=str(tmp_path / "p.png"))
    assert rc == 0
    assert "response" in buf.getvalue() or "▶" in buf.getvalue()
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_pop_one_ablation_decides_every_chunk_on_its_own(model):
    """drain=False: chunks queued during a reply are decided one decoder step each, in order,
    encoded once, and none is marked drained."""
    wave = _wave(4.0)
    with _SlowEncode(model) as enc:
        sess = Engine(model, EngineOptions(threshold=0.0, max_reply_tokens=30, drain=False)).session()
        sess.feed(wave)  # 10 chunks at once: they pile up behind the first reply
        sess.close()
        evs = list(sess.events())
    d = _decisions(evs)
    assert [e["chunk"] for e in d] == list(range(10))
    assert enc.calls == 10
    assert not any(e.get("drained") for e in d)
    assert sess.stats["drains"] == 10  # one decoder step per chunk


def test_fifo_takes_input_in_while_replying(model):
    """input_ms (arrival → encoded): FIFO's encoder never waits for a reply; sequential's
    chunks wait behind every reply before them (the paper's stalls)."""
    wave = _wave(4.0)
    worst = {}
    for mode in ("fifo", "sequential"):
        sess = Engine(model, EngineOptions(mode=mode, threshold=0.0, max_reply_tokens=150)).session()
        sess.feed(wave)  # 10 chunks at once
        sess.close()
        d = _decisions(list(sess.events()))
        assert [e["chunk"] for e in d] == list(range(10))
        assert all(0 <= e["input_ms"] <= e["latency_ms"] + 1e-6 for e in d)
        worst[mode] = max(e["input_ms"] for e in d)
    assert worst["fifo"] < worst["sequential"] / 2


@pytest.mark.parametrize("policy", ["shift", "rebuild"])
def test_instructions_replace_each_other_within_the_context_budget(model, policy):
    """An instruction every 3 chunks used to be appended to the cache for good (outside the
    window's count): now each costs window room like audio and the newest becomes the prefix
    when old ones leave, so the cache stays within instruction + window."""
    cap = 12
    sess = Engine(model, EngineOptions(threshold=1.01, max_context_chunks=cap, context_policy=policy)).session(
        instruction="start")
    chunk = _wave(0.4, seed=4)
    lens, texts = [], []
    for k in range(90):
        if k % 3 == 0:
            texts.append(f"instruction {k:03d}: " + "listen for the doorbell " * 3)
            sess.set_instruction(texts[-1])
        sess.feed(chunk)
        assert sess.wait_idle(timeout=30)
        lens.append(sess.cache_len)
    sess.close()
    evs = list(sess.events())
    assert [e["chunk"] for e in _decisions(evs)] == list(range(90))
    assert not [e for e in evs if e["type"] == "error"]
    longest = max(len(t) for t in texts)  # byte tokenizer: one token per character
    assert max(lens) <= longest + cap * 11 + 2, max(lens)  # uncounted, they sat on top of the window
    assert sess.instruction == texts[-1]
    assert sess.context.pos == sess.cache_len


def test_overlong_instruction_is_refused_before_the_session_starts(model):
    eng = Engine(model, EngineOptions(max_instruction_tokens=64))
    with pytest.raises(ValueError, match="longer than"):
        eng.session(instruction="x" * 65)
    sess = eng.session(instruction="x" * 64)
    with pytest.raises(ValueError, match="longer than"):
        sess.set_instruction("y" * 10_000_000)  # refused without tokenising 10 MB
    sess.set_instruction("fine")
    sess.close()
    assert sess.instruction == "fine"  # set before close: applied at the decoder's next turn
