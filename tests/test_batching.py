"""Cross-session batching (batching.py, AudioLM.hidden_ragged) and the audio barge-in probe."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from soundflow import decoding
from soundflow.audio import iter_chunks
from soundflow.batching import BatchWorker
from soundflow.engine import Engine, EngineOptions
from soundflow.model import build_model


def _wave(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def test_hidden_ragged_equals_one_stream_at_a_time(model):
    """Batched streams, and a stream's own steps (`_forward`, which runs the ragged loop for one
    stream), equal the LM body's own forward (transformers') on each stream alone."""
    torch.manual_seed(0)
    d = model.body.config.hidden_size
    ref = [decoding.start(model, "hi" * (i + 1)) for i in range(3)]
    rag = [decoding.start(model, "hi" * (i + 1)) for i in range(3)]
    one = [decoding.start(model, "hi" * (i + 1)) for i in range(3)]
    for _ in range(4):  # chunk-sized, token-sized and prefill-sized steps, mixed in one batch
        embs = [torch.randn(n, d) for n in (11, 1, 23)]
        with torch.inference_mode():
            want = []
            for s, e in zip(ref, embs):
                p = torch.arange(s.pos, s.pos + e.shape[0]).unsqueeze(0)
                want.append(model.hidden(e[None], cache=s.cache, position_ids=p)[0, -1])
                s.pos += e.shape[0]
            got = model.hidden_ragged([(e, s.cache, s.pos) for s, e in zip(rag, embs)])
            alone = [decoding._forward(model, s, e[None]) for s, e in zip(one, embs)]
        for s, e in zip(rag, embs):
            s.pos += e.shape[0]
        for w, g, a in zip(want, got, alone):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a, w, atol=1e-5, rtol=1e-5)
    assert [s.cache.get_seq_length() for s in rag] == [s.cache.get_seq_length() for s in ref]
    assert [s.cache.get_seq_length() for s in one] == [s.cache.get_seq_length() for s in ref]


def test_ragged_whitelist():
    assert build_model("tiny").supports_ragged
    assert not build_model("tiny-qwen").supports_ragged  # M-RoPE body: one stream at a time


def test_batched_sessions_match_unbatched(model):
    """Concurrent sessions through the shared workers decide and reply as they would alone,
    and the workers really ran several sessions' forwards together."""
    waves = [_wave(4.0, seed=s) for s in range(4)]
    instr = ["a", "bb", None, "say hi"]

    def run(eng):
        out = [None] * len(waves)

        def one(i):
            evs = list(eng.session(instruction=instr[i]).run(iter_chunks(waves[i])))
            out[i] = evs
        th = [threading.Thread(target=one, args=(i,)) for i in range(len(waves))]
        for t in th:
            t.start()
        for t in th:
            t.join()
        return out

    opts = dict(threshold=0.5, max_reply_tokens=5)
    alone = run(Engine(model, EngineOptions(**opts)))
    eng = Engine(model, EngineOptions(batch=True, **opts))
    together = run(eng)
    for a, b in zip(alone, together):
        da = [(e["chunk"], e["decision"]) for e in a if e["type"] == "decision"]
        db = [(e["chunk"], e["decision"]) for e in b if e["type"] == "decision"]
        assert db == da and len(db) == 10
        pa = [e["p_response"] for e in a if e["type"] == "decision"]
        pb = [e["p_response"] for e in b if e["type"] == "decision"]
        assert pb == pytest.approx(pa, abs=1e-3)
        assert [e["text"] for e in b if e["type"] == "response"] == [e["text"] for e in a if e["type"] == "response"]
    st = eng.batcher.stats
    assert st["decoder"]["max_batch"] > 1 and st["decoder"]["batches"] < st["decoder"]["requests"]
    assert st["encoder"]["requests"] == 40  # every chunk encoded exactly once
    eng.close()


def test_batch_error_reaches_every_waiting_session():
    gate = threading.Event()

    def fn(xs):
        gate.wait(5)
        raise ValueError("boom")

    w = BatchWorker(fn, "t")
    errs = []

    def call():
        try:
            w.submit(1)
        except ValueError as e:
            errs.append(str(e))
    th = [threading.Thread(target=call) for _ in range(3)]
    for t in th:
        t.start()
    gate.set()
    for t in th:
        t.join(5)
    assert errs == ["boom"] * 3
    w.close()
    with pytest.raises(RuntimeError):
        w.submit(1)


def test_probe_rolls_back_exactly(model):
    """The barge-in probe feeds queued chunks tentatively and truncates them away again."""
    sess = Engine(model, EngineOptions(threshold=1.01, barge_in=True, barge_in_threshold=1.01)).session()
    list(sess.run(iter_chunks(_wave(1.2))))  # 3 chunks in the cache
    win = sess.context
    before = (win.pos, win.pending, win.chunks, [layer.keys.clone() for layer in win.cache.layers])
    with torch.inference_mode():
        audio = model.encode(model.features(torch.as_tensor(_wave(0.4, seed=9))[None]))
    assert not win.probe(audio) >= 1.01  # P < the barge-in threshold: rolled back
    assert (win.pos, win.pending, win.chunks) == before[:3]
    for layer, k in zip(win.cache.layers, before[3]):
        assert torch.equal(layer.keys, k)


def test_audio_barge_in_cuts_reply(model):
    """With a zero barge-in threshold, audio queued during a long reply cuts it."""
    sess = Engine(model, EngineOptions(threshold=0.0, max_reply_tokens=400, barge_in=True,
                                       barge_in_threshold=0.0)).session()
    sess.feed(_wave(0.4))
    assert sess.get_event(timeout=10)["decision"] == "response"
    assert sess.get_event(timeout=10)["type"] == "token"
    sess.feed(_wave(0.4, seed=1))  # heard mid-reply
    sess.close()
    evs = list(sess.events())
    resp = [e for e in evs if e["type"] == "response"]
    assert resp[0].get("cut") == "audio"
    d = [e for e in evs if e["type"] == "decision"]
    assert [e["chunk"] for e in d] == [1] and d[0].get("barge_in")
    assert sess.stats["barge_ins"] >= 1


def test_engine_close_ends_running_batched_sessions(model):
    """Closing the engine under live sessions: each gets an error event and ends; nothing hangs."""
    eng = Engine(model, EngineOptions(batch=True, threshold=1.01))
    sessions = [eng.session() for _ in range(3)]
    for s in sessions:
        s.feed(_wave(0.8))
        assert s.wait_idle(timeout=10)
    eng.close()
    for s in sessions:
        s.feed(_wave(0.4))  # needs the (closed) workers
        s.close(timeout=10)
        evs = list(s.events())
        assert s.finished
        assert any(e["type"] == "error" and "closed" in e["message"] for e in evs)


def test_batched_sessions_with_different_chunk_sizes(model):
    eng = Engine(model, EngineOptions(batch=True, threshold=1.01))
    a, b = eng.session(), eng.session(chunk_ms=200)
    a.feed(_wave(1.2))
    b.feed(_wave(1.2))
    a.close()
    b.close()
    da = [e for e in a.events() if e["type"] == "decision"]
    db = [e for e in b.events() if e["type"] == "decision"]
    assert len(da) == 3 and len(db) == 6
    eng.close()


@pytest.mark.parametrize("policy", ["shift", "rebuild"])
def test_batched_eviction_matches_unbatched(model, policy):
    """Context eviction (shift / rebuild prefill) through the batch workers decides as without."""
    chunks = list(iter_chunks(_wave(0.4 * 60, seed=6)))
    ps = {}
    for batch in (False, True):
        eng = Engine(model, EngineOptions(threshold=0.6, max_reply_tokens=3, max_context_chunks=12,
                                          context_policy=policy, batch=batch))
        sess = eng.session(instruction="watch")
        evs = list(sess.run(chunks))
        ps[batch] = [(e["chunk"], e["decision"], e["p_response"]) for e in evs if e["type"] == "decision"]
        assert sess.stats["shifts" if policy == "shift" else "rebuilds"] >= 4
        eng.close()
    assert [x[:2] for x in ps[True]] == [x[:2] for x in ps[False]]
    assert [x[2] for x in ps[True]] == pytest.approx([x[2] for x in ps[False]], abs=1e-4)


def test_failed_batch_fails_only_the_culprit():
    """A batch that raises is re-run request by request: only the request that fails on its own
    gets the error; its batch-mates get their own results."""
    gate = threading.Event()
    seen = []

    def fn(xs):
        gate.wait(5)
        seen.append(list(xs))
        if "bad" in xs:
            raise ValueError("poisoned")
        return [x.upper() for x in xs]

    undone = []
    w = BatchWorker(fn, "t", undo=undone.append)
    out = {}

    def call(x):
        try:
            out[x] = w.submit(x)
        except ValueError as e:
            out[x] = e

    first = threading.Thread(target=call, args=("first",))
    first.start()  # occupies the worker (gate) while the others queue into one batch
    time.sleep(0.1)
    th = [threading.Thread(target=call, args=(x,)) for x in ("a", "bad", "b")]
    for t in th:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in [first, *th]:
        t.join(5)
    w.close()
    assert out["first"] == "FIRST" and out["a"] == "A" and out["b"] == "B"
    assert isinstance(out["bad"], ValueError)
    assert ["a", "bad", "b"] in seen  # they did run as one batch first
    assert sorted(undone) == ["a", "b", "bad"]  # each retried from a clean state
    assert w.stats["retried"] == 3 and w.stats["failed"] == 1 and w.stats["rescued"] == 2


def test_poisoned_forward_in_a_batch_leaves_the_other_sessions_exact(model, monkeypatch):
    """A decoder forward that fails for one stream's input (as the int8 quantiser did on huge
    activations) fails that stream only; sessions batched with it decide exactly as alone."""
    chunks = list(iter_chunks(_wave(0.4 * 6, seed=3)))
    eng = Engine(model, EngineOptions(threshold=1.01))
    alone = [e["p_response"] for e in eng.session().run(chunks) if e["type"] == "decision"]

    real = model.hidden_ragged

    def poisoned(reqs):  # fails whenever the poisoned stream's embeddings are in the batch
        if any(bool((e == 7.0).all()) for e, _, _ in reqs):
            raise RuntimeError("min should be less than or equal to max")
        return real(reqs)

    monkeypatch.setattr(model, "hidden_ragged", poisoned)
    eng = Engine(model, EngineOptions(threshold=1.01, batch=True))
    assert model.supports_ragged
    good = [eng.session() for _ in range(4)]
    poison = torch.full((11, model.embed_ids([1]).shape[-1]), 7.0)
    results, errors = {}, []
    done = threading.Event()

    def run_good(i, s):
        results[i] = [e["p_response"] for e in s.run(chunks) if e["type"] == "decision"]

    def run_bad():
        while not done.is_set():
            try:
                eng.batcher.hidden_last(poison, model.new_cache(), 0)
            except RuntimeError as e:
                errors.append(str(e))

    goods = [threading.Thread(target=run_good, args=(i, s)) for i, s in enumerate(good)]
    bads = [threading.Thread(target=run_bad) for _ in range(2)]
    for t in goods + bads:
        t.start()
    for t in goods:
        t.join(60)
    done.set()
    for t in bads:
        t.join(10)
    stats = eng.batcher.stats["decoder"]
    eng.close()
    assert errors and all("min should be" in e for e in errors)
    assert stats["rescued"] > 0 and stats["failed"] > 0  # batch-mates of the poison succeeded when re-run
    for i in range(4):
        assert results[i] == pytest.approx(alone, abs=1e-4)
