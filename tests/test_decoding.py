"""decoding.ContextWindow: one stream's decoder state (feed, push_control, reply, probe,
instructions) and its eviction by shift or rebuild."""

from __future__ import annotations

import pytest
import torch

from soundflow import decoding
from soundflow.decoding import ContextWindow
from soundflow.tokens import build_sequence, chunk_run


@pytest.fixture(scope="module")
def audio(model):
    torch.manual_seed(0)
    with torch.inference_mode():
        return model.encode(model.features(torch.randn(12, 6400) * 0.1))


def _keys(win):
    return [layer.keys.clone() for layer in win.cache.layers]


def _same_cache(a, b, atol=1e-5):
    assert a.cache_len == b.cache_len and a.pos == b.pos
    for x, y in zip(a.cache.layers, b.cache.layers):
        torch.testing.assert_close(x.keys, y.keys, atol=atol, rtol=1e-4)
        torch.testing.assert_close(x.values, y.values, atol=atol, rtol=1e-4)


def test_chunk_run_is_alg2_for_silent_chunks(model):
    """The one statement of 'chunks heard while busy are separated by <silent>' is the training
    sequence of that many silent chunks, up to the newest chunk's (undecided) control token."""
    tok = model.tokenizer
    for n in (1, 2, 5):
        seq = build_sequence(tok, n)
        assert chunk_run(tok, n) == seq.input_ids[:-1]
        assert seq.input_ids[-1] == tok.silent_id
    assert chunk_run(tok, 0) == []
    assert len(chunk_run(tok, 3, audio_slots=4)) == 3 * 4 + 2


def test_feed_push_control_and_pending(model, audio):
    tok = model.tokenizer
    win = ContextWindow(model, "hi")
    assert win.prefix_len == win.pos == win.cache_len == 2 and win.pending == ()
    p = win.feed(audio[:1])
    assert 0.0 <= p <= 1.0 and win.pos == 2 + 10 and win.chunks == 1
    win.push_control(False)
    assert win.pending == (tok.silent_id,)  # waits for the next feed: a silent chunk costs one forward
    win.feed(audio[1:4])  # three chunks at once: <silent> between them
    assert win.pos == 2 + 10 + 1 + 3 * 10 + 2 and win.chunks == 4 and win.pending == ()
    win.push_control(True)
    assert win.pending == (tok.response_id,)
    assert win.stats == {"forwards": 3, "rebuilds": 0, "shifts": 0}
    assert win.window_chunks == 4 and win.turns == 2


def test_drained_feed_equals_chunk_by_chunk_silent(model, audio):
    """Feeding m queued chunks in one forward is the same as deciding each of them silent."""
    a, b = ContextWindow(model, "x"), ContextWindow(model, "x")
    pa = a.feed(audio[:4])
    for k in range(4):
        if k:
            b.push_control(False)
        pb = b.feed(audio[k : k + 1])
    assert pa == pytest.approx(pb, abs=1e-5)
    _same_cache(a, b)


def test_reply_and_close_reply(model, audio):
    tok = model.tokenizer
    win = ContextWindow(model)
    win.feed(audio[:1])
    win.push_control(True)
    ids = list(win.reply(3))
    assert len(ids) <= 3 and win.pending[-1] == tok.eos_id  # <eos> pending, also at the cap
    after_reply = (win.pos, win.pending)
    win.feed(audio[1:2])
    win.push_control(True)
    gen = win.reply(50)
    first = next(gen)
    gen.close()  # cut short: the last token waits, then <eos>
    win.close_reply()
    assert win.pending == (first, tok.eos_id)
    ref = decoding.start(model)  # the same tokens through the bare primitives
    decoding.feed_audio(model, ref, audio[:1])
    decoding.push_control(model, ref, True)
    assert list(decoding.reply_tokens(model, ref, 3)) == ids
    assert (ref.pos, tuple(ref.pending)) == after_reply


def test_probe_rolls_back_exactly_and_equals_a_real_feed(model, audio):
    win = ContextWindow(model, "watch")
    win.feed(audio[:2])
    win.push_control(True)
    gen = win.reply(40)
    next(gen)
    before = (win.pos, win.pending, win.chunks, win.window_chunks, win.turns, _keys(win))
    p = win.probe(audio[2:4])
    assert (win.pos, win.pending, win.chunks, win.window_chunks, win.turns) == before[:5]
    for layer, k in zip(win.cache.layers, before[5]):
        assert torch.equal(layer.keys, k)
    gen.close()
    win.close_reply()  # the reply cut there: the real feed sees what the probe saw
    assert win.feed(audio[2:4]) == pytest.approx(p, abs=1e-5)
    assert win.stats["forwards"] == 1 + 1 + 1 + 1 + 1  # prefix, feed, reply step, probe, feed


def _stream(win, audio, batches, respond=(), reply_tokens=2):
    """Feed `batches` (lists of chunk indices), replying after the batches listed in `respond`."""
    ps = []
    for i, ks in enumerate(batches):
        ps.append(win.feed(audio[ks[0] : ks[-1] + 1]))
        win.push_control(i in respond)
        if i in respond:
            list(win.reply(reply_tokens))
    return ps


def test_rebuild_equals_a_fresh_start_on_the_kept_window(model, audio):
    """After a rebuild the cache is what a fresh decoder builds from the kept chunks."""
    win = ContextWindow(model, "x", max_chunks=4, evict_chunks=2, policy="rebuild")
    _stream(win, audio, [[0], [1], [2, 3]])  # window 4
    p = win.feed(audio[4:5])  # 5 > 4: evict down to 2 (chunks 2, 3), rebuild, then feed chunk 4
    assert win.stats["rebuilds"] == 1 and win.window_chunks == 3 and win.chunks == 5
    fresh = ContextWindow(model, "x")
    fresh.feed(audio[2:4])  # the kept turn: chunks 2, 3 drained together (no leading <silent>)
    fresh.push_control(False)
    assert fresh.feed(audio[4:5]) == pytest.approx(p, abs=1e-4)
    _same_cache(win, fresh, atol=1e-4)
    assert win.prefix_len == fresh.prefix_len


def test_shift_and_rebuild_keep_the_same_window(model, audio):
    """Both policies evict the same turns (replies and drains included), leaving the window
    contiguous after the prefix; the only difference is that a shift keeps the first kept chunk's
    leading control token (or a reply's <eos>), which a rebuild starts without, as a fresh
    decoder would. A shift needs no forward."""
    batches = [[0], [1, 2], [3], [4], [5, 6], [7], [8], [9], [10], [11]]
    wins = {pol: ContextWindow(model, "watch", max_chunks=5, evict_chunks=2, policy=pol) for pol in ("shift", "rebuild")}
    lens = {}
    for pol, win in wins.items():
        for i, ks in enumerate(batches):
            _stream(win, audio, [ks], respond=(0,) if i % 3 == 0 else ())
            lens.setdefault(pol, []).append((win.pos, win.cache_len, win.window_chunks))
        assert win.pos == win.cache_len
    for (ps, ls, ws), (pr, lr, wr) in zip(lens["shift"], lens["rebuild"]):
        assert ws == wr and ps == ls and pr == lr and 0 <= ps - pr <= 2
    assert wins["shift"].stats["shifts"] >= 3 and wins["shift"].stats["rebuilds"] == 0
    assert wins["rebuild"].stats["rebuilds"] == wins["shift"].stats["shifts"]
    assert wins["rebuild"].stats["forwards"] == wins["shift"].stats["forwards"] + wins["rebuild"].stats["rebuilds"]


def test_instruction_fits_or_becomes_the_prefix(model, audio):
    win = ContextWindow(model, "start", max_chunks=4, evict_chunks=2)
    win.feed(audio[:1])
    win.push_control(False)
    win.set_instruction("hi")  # 2 tokens: one chunk of window room, fed now
    assert win.window_chunks == 2 and win.instruction == "hi" and win.prefix_len == len("start")
    win.set_instruction("y" * 40)  # 4 chunks of room: does not fit, becomes the prefix
    assert win.stats["rebuilds"] == 1 and win.prefix_len == 40
    assert win.window_chunks == 1  # the superseded instruction no longer counts
    win.set_instruction("")
    assert win.instruction is None


def test_shift_works_after_an_instruction_rebuild(model, audio):
    """An instruction leaving the window forces a rebuild (it moves to the prefix); the window's
    record then matches the cache again, so the next eviction is a plain shift."""
    win = ContextWindow(model, max_chunks=4, evict_chunks=2, policy="shift")
    _stream(win, audio, [[0]])
    win.set_instruction("hi")  # costs one chunk of window room
    _stream(win, audio, [[1], [2], [3]])  # evicts chunk 0 and the instruction: rebuild
    assert (win.stats["rebuilds"], win.stats["shifts"], win.prefix_len) == (1, 0, 2)
    _stream(win, audio, [[4], [5]])  # evicts chunks 1, 2: shift
    assert win.stats["shifts"] == 1 and win.stats["rebuilds"] == 1
    assert win.pos == win.cache_len == win.prefix_len + 3 * 11  # chunks 3, 4, 5 each after a <silent>


def test_bad_options_are_refused(model):
    with pytest.raises(ValueError, match="shift"):
        ContextWindow(model, policy="slide")
    with pytest.raises(ValueError, match="max_chunks"):
        ContextWindow(model, max_chunks=1)
