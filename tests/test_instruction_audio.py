"""Spoken instructions end to end (the paper's A^ins, its "audio instruction" setting): the
sample format, the Alg. 2 layout, recipes that speak instructions (through the ASR gate),
training on them, `listen --instruction-audio`, the engine, and the server's hello.

Everything runs on the random `tiny` model and the instant `tone` TTS voice."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from soundflow import asr_gate, decoding, tasks, textnorm
from soundflow.audio import iter_chunks, write_audio
from soundflow.data import StreamSample, read_shards, write_jsonl
from soundflow.dataspec import load_streams
from soundflow.engine import Engine, EngineOptions
from soundflow.tokens import MASK

SR = 16_000


def _wave(seconds: float, seed: int = 0, amp: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    return (amp * np.sin(2 * np.pi * (300 + 50 * seed) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def _tone_resources(**kw) -> tasks.Resources:
    """Shipped chat templates, the instant `tone` voice, no noise library, no gate."""
    return tasks.Resources.from_config({}, tts_families=("tone",), gate=None, **kw)


# ----------------------------------------------------------------------------- sample format


def test_sample_format_is_backward_compatible_and_round_trips(tmp_path):
    old = {"id": "a", "task": "chat", "audio": "a.wav", "sample_rate": 16000, "chunk_ms": 400,
           "instruction": "Answer me.", "timeline": [{"chunk": 1, "text": "hi"}], "events": []}
    s = StreamSample.from_json(old)
    assert s.instruction_audio is None and not s.has_instruction_audio
    assert s.to_json() == old  # no new key for samples without a spoken instruction
    assert s.instruction_chunks().shape == (0, 6400)

    write_audio(tmp_path / "a.wav", _wave(2.0, 1))
    write_audio(tmp_path / "a.instr.wav", _wave(1.0, 2))
    spoken = {**old, "instruction": None, "instruction_audio": "a.instr.wav"}
    write_jsonl(tmp_path / "streams.jsonl", [spoken])
    (back,) = load_streams(str(tmp_path / "streams.jsonl"))
    assert back.instruction_audio == "a.instr.wav" and back.has_instruction_audio
    assert back.to_json() == spoken
    np.testing.assert_allclose(back.load_instruction(), _wave(1.0, 2), atol=1e-4)
    ch = back.instruction_chunks()
    assert ch.shape == (3, 6400) and not ch[2, 3200:].any()  # 1 s → 2.5 chunks, the last zero-padded
    assert json.loads(json.dumps(back.to_json())) == spoken


# ----------------------------------------------------------------------------- sequence + parity


def test_sequence_puts_the_spoken_instruction_before_the_stream_and_matches_inference(model):
    """Alg. 2: [text] [instruction audio] ([audio × 10] <ctrl>)×T; the teacher-forced P(<response>)
    at every control position equals what the streaming decoder computes with the same spoken
    instruction (training and inference see the same sequence)."""
    from soundflow.train import FeatureCache, collate

    tok = model.tokenizer
    instr = _wave(1.0, 3)
    s = StreamSample(id="x", task="chat", instruction="hi", timeline=[], wave=_wave(0.4 * 4, 4),
                     instruction_wave=instr)
    feats = FeatureCache(model, 4)
    b = collate(model, [s], feats, 60)
    ids, am, ys = b["input_ids"][0].tolist(), b["audio_mask"][0].tolist(), b["y_stream"][0].tolist()
    text = tok.encode("hi")
    assert ids[: len(text)] == text and not any(am[: len(text)])
    j = len(text)
    assert all(am[j : j + 30]) and ids[j : j + 30] == [tok.audio_id] * 30  # 3 instruction chunks × 10 slots
    assert all(y == MASK for y in ys[: j + 30])  # the instruction is never a target
    k = j + 30
    for _t in range(4):  # then the stream: 10 slots and a control token per chunk
        assert all(am[k : k + 10]) and not am[k + 10] and ids[k + 10] == tok.silent_id
        k += 11
    assert len(ids) == k
    assert b["enc"].shape[0] == 3 + 4  # instruction chunks first, then the stream's
    enc_instr = model.encode_audio(model.features(torch.from_numpy(s.instruction_chunks())))
    assert torch.allclose(b["enc"][:3], enc_instr)

    with torch.no_grad():
        h = model.hidden(model.embed(b["input_ids"], b["audio_mask"], model.adapt(b["enc"])))[0]
    pos = torch.tensor([i for i, y in enumerate(ys) if y != MASK])
    teacher = model.control_probs(h[pos - 1]).tolist()
    ev = decoding.decode_stream(model, s.chunks(), decoding.DecodeOptions(instruction="hi", instruction_audio=instr,
                                                                          threshold=2.0))
    streamed = [e["p_response"] for e in ev if e["type"] == "decision"]
    assert streamed == pytest.approx(teacher, abs=1e-4)
    without = [e["p_response"] for e in decoding.decode_stream(model, s.chunks(), decoding.DecodeOptions(
        instruction="hi", threshold=2.0)) if e["type"] == "decision"]
    assert streamed != pytest.approx(without, abs=1e-6)  # the spoken instruction is heard


# ----------------------------------------------------------------------------- recipes


def test_recipe_speaks_instructions_and_the_gate_checks_them():
    rng = lambda: np.random.default_rng(3)  # noqa: E731
    text_only = tasks.task_chat(rng(), _tone_resources(instruction_dropout=0.0))
    assert text_only.instruction and text_only.instruction_wave is None
    # the key at 0 (the default) draws nothing: the corpus is the one built before the key existed
    same = tasks.task_chat(rng(), _tone_resources(instruction_dropout=0.0, instruction_audio=0.0))
    assert np.array_equal(same.wave, text_only.wave) and same.timeline == text_only.timeline

    spoken = tasks.task_chat(rng(), _tone_resources(instruction_dropout=0.0, instruction_audio=1.0))
    assert spoken.instruction == "" and spoken.instruction_wave is not None
    rec = [e for e in spoken.events if e.get("type") == "instruction_audio"]
    assert len(rec) == 1 and rec[0]["text"] == text_only.instruction and rec[0]["tts"]["family"] == "tone"
    assert rec[0]["seconds"] == pytest.approx(len(spoken.instruction_wave) / SR, abs=1e-3)
    assert spoken.timeline  # the stream itself is still a chat

    # the agent family's tool list is not something a user says: it stays text
    assert not tasks.speakable('You are a home assistant with tools (a, b). Reply {"tool": ...}')

    class Gate(asr_gate.AsrGate):  # passes everything but the spoken instruction
        def __init__(self, instruction):
            super().__init__(threshold=0.1, retries=1)
            self.instruction, self.refs = instruction, []

        def check(self, waves, refs):
            self.refs += list(refs)
            return [1.0 if r == self.instruction else 0.0 for r in refs]

    gate = Gate(textnorm.normalize_text(text_only.instruction))
    res = _tone_resources(instruction_dropout=0.0, instruction_audio=1.0)
    res.gate = gate
    with pytest.raises(asr_gate.Dropped):
        tasks.task_chat(rng(), res)
    assert gate.refs.count(gate.instruction) == 2  # rendered, checked, re-rendered once, checked, dropped


def test_build_writes_spoken_instructions_into_shards(tmp_path):
    from soundflow import build

    recipe = tmp_path / "spoken.yaml"
    recipe.write_text("seed: 1\nsamples: 2\nsamples_per_shard: 2\nmax_chunks: 30\nsources: {}\n"
                      "tasks: {chat: 1}\ntts: {families: [tone], gate: false}\ntfjp: false\n"
                      "instruction_dropout: 0\ninstruction_audio: 1.0\n")
    summary = build.build(recipe, tmp_path / "out", workers=1, quiet=True)
    assert summary["spoken_instructions"] == 2 and summary["spoken_instruction_s"] > 0
    samples = list(read_shards(tmp_path / "out"))
    assert len(samples) == 2
    for s in samples:
        assert s.instruction == "" and s.instruction_audio == f"{s.id}.instruction.flac"
        assert s.instruction_wave is not None and len(s.instruction_wave) > SR // 2


# ----------------------------------------------------------------------------- training


def test_training_steps_on_spoken_instructions(tmp_path):
    from soundflow.model import ModelConfig
    from soundflow.train import Recipe, StageConfig, train

    rows = []
    for i in range(2):
        write_audio(tmp_path / f"s{i}.wav", _wave(0.4 * 5, 10 + i))
        write_audio(tmp_path / f"s{i}.instr.wav", _wave(0.9, 20 + i))
        rows.append(StreamSample(id=f"s{i}", task="chat", audio=f"s{i}.wav", instruction_audio=f"s{i}.instr.wav",
                                 timeline=[{"chunk": 2 + i, "text": "ok"}]).to_json())
    write_jsonl(tmp_path / "streams.jsonl", rows)
    recipe = Recipe(model=ModelConfig(backend="tiny"), out=str(tmp_path / "run"), save_every=10_000,
                    stages=[StageConfig(name="all", trainable=["adapter", "lm"], data=str(tmp_path / "streams.jsonl"),
                                        lr=1e-3, steps=2, batch_size=2)])
    train(recipe, progress=False)
    logs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "loss" in r]
    assert len(steps) == 2 and all(np.isfinite(r["loss"]) for r in steps)


# ----------------------------------------------------------------------------- engine and listen


def test_engine_session_with_spoken_instruction_matches_the_reference_decoder(model):
    instr = _wave(1.3, 5)
    chunks = list(iter_chunks(_wave(0.4 * 5, 6)))
    ref = [e["p_response"] for e in decoding.decode_stream(
        model, chunks, decoding.DecodeOptions(instruction="go", instruction_audio=instr, threshold=1.01))
        if e["type"] == "decision"]
    for mode, batch in (("fifo", False), ("sequential", False), ("fifo", True)):
        engine = Engine(model, EngineOptions(threshold=1.01, mode=mode, batch=batch))
        sess = engine.session(instruction="go", instruction_audio=instr)
        got = [e["p_response"] for e in sess.run(chunks) if e["type"] == "decision"]
        engine.close()
        assert got == pytest.approx(ref, abs=1e-3), (mode, batch)
    # a rebuild keeps the spoken instruction in the prefix: the same as a fresh decoder on the window
    long = list(iter_chunks(_wave(0.4 * 8, 7)))
    sess = Engine(model, EngineOptions(threshold=1.01, max_context_chunks=6, evict_chunks=3,
                                       context_policy="rebuild")).session(instruction_audio=instr)
    got = [e["p_response"] for e in sess.run(long) if e["type"] == "decision"][6:]
    assert sess.stats["rebuilds"] == 1
    fresh = [e["p_response"] for e in decoding.decode_stream(
        model, long[3:], decoding.DecodeOptions(instruction_audio=instr, threshold=1.01)) if e["type"] == "decision"][3:]
    assert got == pytest.approx(fresh, abs=1e-3)
    # bounded like a text instruction: positions of text + audio within max_instruction_tokens
    with pytest.raises(ValueError, match="instruction audio"):
        Engine(model, EngineOptions(max_instruction_tokens=100)).session(instruction_audio=np.zeros(5 * SR, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        Engine(model).session(instruction_audio=np.full(SR, np.nan, np.float32))


def _decisions_p(events) -> list[float]:
    return [e["p_response"] for e in events if e["type"] == "decision"]


def _lockstep(sess, chunks, instructions=None) -> list[dict]:
    """Feed `chunks` one at a time, each once the previous is decided; `instructions[k]` (kwargs of
    `set_instruction`) is set just before chunk k. Returns every event."""
    events = []
    for k, c in enumerate(chunks):
        if instructions and k in instructions:
            sess.set_instruction(**instructions[k])
        sess.feed(c)
        assert sess.wait_idle(timeout=60)
        while (ev := sess.get_event(timeout=0)) is not None:  # what is ready, no waiting
            events.append(ev)
    sess.close()
    return events + list(sess.events())


def test_engine_applies_a_spoken_instruction_mid_session_as_at_start(model):
    """A spoken instruction given mid-session is fed at the next interruption point, laid out
    and encoded as at session start: it takes the positions a session-start one takes in the
    prefix, costs the window those positions in chunks, and once a rebuild moves it into the
    prefix the decoder is exactly a fresh one started with it on the kept window."""
    instr = _wave(1.3, 21)  # 4 chunks: 40 audio positions, + 2 for "go"
    chunks = list(iter_chunks(_wave(0.4 * 7, 22)))
    start = Engine(model, EngineOptions(threshold=1.01)).session(instruction="go", instruction_audio=instr)
    start.feed(chunks[0])
    assert start.wait_idle(timeout=60)
    positions = start.context.prefix_len
    assert positions == len(model.tokenizer.encode("go")) + 40
    start.close()

    for policy in ("shift", "rebuild"):
        sess = Engine(model, EngineOptions(threshold=1.01, max_context_chunks=8, evict_chunks=4,
                                           context_policy=policy)).session()
        for c in chunks[:2]:
            sess.feed(c)
            assert sess.wait_idle(timeout=60)
        before = sess.cache_len
        sess.set_instruction("go", audio=instr)
        sess.feed(chunks[2])  # applied at this interruption point, before the chunk
        assert sess.wait_idle(timeout=60)
        win = sess.context
        cost = -(-positions // 11)
        assert win.window_chunks == 3 + cost  # counted like audio, in chunks of 11 positions
        assert sess.cache_len - before == positions + 11  # the instruction, then <silent> + chunk 2
        assert win.prefix_len == 0 and win.pos == sess.cache_len
        assert sess.instruction == "go" and np.array_equal(sess.instruction_audio, instr)
        # chunk 4 overflows the window (3 chunks + 4 + 1 > 8): chunks 0, 1 and the instruction
        # leave it, the instruction moves into the prefix (a rebuild, whatever the policy)
        events = _lockstep(sess, chunks[3:])
        assert sess.stats["rebuilds"] == 1 and win.prefix_len == positions
        assert [e["chunk"] for e in events if e["type"] == "decision"] == list(range(7))
        fresh = _decisions_p(decoding.decode_stream(model, chunks[2:], decoding.DecodeOptions(
            instruction="go", instruction_audio=instr, threshold=1.01)))
        assert _decisions_p(events)[4:] == pytest.approx(fresh[2:], abs=1e-3), policy  # chunks 4..6

    # the same mid-session instruction through the batch workers: the same numbers
    ref = _lockstep(Engine(model, EngineOptions(threshold=1.01)).session(), chunks, {2: {"text": "go", "audio": instr}})
    engine = Engine(model, EngineOptions(threshold=1.01, batch=True))
    got = _lockstep(engine.session(), chunks, {2: {"text": "go", "audio": instr}})
    engine.close()
    assert _decisions_p(got) == pytest.approx(_decisions_p(ref), abs=1e-3)
    assert _decisions_p(ref) != pytest.approx(_decisions_p(_lockstep(  # the instruction is heard
        Engine(model, EngineOptions(threshold=1.01)).session(), chunks)), abs=1e-6)


def test_mid_session_instructions_replace_each_other_spoken_or_text(model):
    """Spoken and text instructions alternating: each replaces the last (a rebuild keeps only the
    newest, in the prefix), the window never holds more than its budget, the cache stays within
    instruction + window however many are given."""
    spoken = decoding.encode_instruction_audio(model, _wave(1.3, 23))  # 40 positions: 4 chunks of room
    alone = decoding.ContextWindow(model, None, spoken).prefix_len
    assert alone == 40
    win = decoding.ContextWindow(model, max_chunks=8, evict_chunks=4)
    audio = model.encode(model.features(torch.from_numpy(np.stack(list(iter_chunks(_wave(0.4 * 4, 24)))))))
    seen = []
    for i in range(24):
        if i % 3 == 0:
            if (i // 3) % 2:
                win.set_instruction("hi", spoken)
                assert win.instruction == "hi" and win.instruction_audio is spoken
            else:
                win.set_instruction(f"text {i}")
                assert win.instruction == f"text {i}" and win.instruction_audio is None
        win.feed(audio[i % 4 : i % 4 + 1])
        win.push_control(False)
        seen.append((win.window_chunks, win.cache_len, win.prefix_len))
        assert win.window_chunks <= 8 and win.pos == win.cache_len
    assert win.stats["rebuilds"] >= 4
    # a rebuild's prefix is the newest instruction alone: text ("text N": 6–7 tokens) or spoken
    assert {p for _, _, p in seen} <= {0, 2 + alone, 6, 7}
    assert max(c for _, c, _ in seen) <= 2 + alone + 8 * 11 + 1
    # spoken → text → nothing: the text drops the audio, an empty one drops both at the next rebuild
    win.set_instruction(None, spoken)
    win.set_instruction("")
    assert win.instruction is None and win.instruction_audio is None


def test_mid_session_spoken_instruction_is_validated_like_at_start(model):
    eng = Engine(model, EngineOptions(max_instruction_tokens=100))
    sess = eng.session()
    with pytest.raises(ValueError, match="instruction audio"):  # 5 s: 130 positions > 100
        sess.set_instruction(None, audio=np.zeros(5 * SR, np.float32))
    with pytest.raises(ValueError, match="with the text"):  # 3.6 s (90 positions) + 20 tokens > 100
        sess.set_instruction("x" * 20, audio=np.zeros(int(3.6 * SR), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        sess.set_instruction(None, audio=np.full(SR, np.nan, np.float32))
    sess.set_instruction("x" * 10, audio=np.zeros(int(3.6 * SR), np.float32))  # 100: fits
    sess.close()
    assert sess.instruction == "x" * 10 and len(sess.instruction_audio) == int(3.6 * SR)


def test_listen_with_instruction_audio(tmp_path, capsys):
    from soundflow.cli import main

    write_audio(tmp_path / "stream.wav", _wave(0.4 * 6, 8))
    write_audio(tmp_path / "instr.wav", _wave(1.5, 9))
    args = ["listen", str(tmp_path / "stream.wav"), "--model", "tiny", "--jsonl", "--quant", "none", "--mode", "sequential"]
    assert main(args + ["--instruction-audio", str(tmp_path / "instr.wav")]) == 0
    spoken = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["chunk"] for r in spoken if r["type"] == "decision"] == list(range(6))
    assert main(args) == 0
    plain = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    p = lambda rows: [r["p_response"] for r in rows if r["type"] == "decision"]  # noqa: E731
    assert p(spoken) != p(plain)
    # too long: one error line, exit 2
    write_audio(tmp_path / "long.wav", np.zeros(45 * SR, np.float32))
    assert main(args + ["--instruction-audio", str(tmp_path / "long.wav")]) == 2
    assert "instruction audio of 45.0 s" in capsys.readouterr().err
    assert main(args + ["--instruction-audio", str(tmp_path / "missing.wav")]) == 2


# ----------------------------------------------------------------------------- server


class _RecordingEngine(Engine):
    """The real engine, remembering the spoken instruction each session was started with."""

    def __init__(self, model, **opts):
        super().__init__(model, EngineOptions(**{"threshold": 0.5, "max_reply_tokens": 4, **opts}))
        self.spoken: list = []

    def session(self, instruction=None, instruction_audio=None, **kw):
        self.spoken.append(None if instruction_audio is None else np.array(instruction_audio))
        return super().session(instruction=instruction, instruction_audio=instruction_audio, **kw)


def test_server_hello_accepts_a_spoken_instruction_and_bounds_it(model):
    pytest.importorskip("websockets")
    from test_server import (
        FRAME,
        encode,
        expect_refused,
        finish,
        hello,
        recv_json,
        running_server,
        send_audio,
    )
    from websockets.asyncio.client import connect

    engine = _RecordingEngine(model)
    instr = _wave(1.25, 11)
    stream = _wave(0.4 * 3, 12)

    async def refused(url, first, frames, code):
        return await expect_refused(url, first, code, frames)

    async def main(srv):
        # 1. {"samples": N}, then the frames; the last of them also carries the stream's first samples
        async with connect(srv.ws, max_size=None) as ws:
            await ws.send(hello(instruction_audio={"samples": len(instr)}))
            both = np.concatenate([instr, stream])
            await send_audio(ws, both[: len(instr) + 500])  # the stream starts inside the last frame
            ready = await recv_json(ws)
            assert ready["type"] == "ready", ready
            await send_audio(ws, both[len(instr) + 500 :])
            events = await finish(ws)
        assert [e["chunk"] for e in events if e["type"] == "decision"] == [0, 1, 2]
        assert not [e for e in events if e["type"] == "error"]
        np.testing.assert_allclose(engine.spoken[-1], instr, atol=1e-7)

        # 2. base64 of raw PCM in the hello's format, and of a WAV file at another rate
        pcm16 = base64.b64encode(encode(instr, "s16le")).decode()
        buf = io.BytesIO()
        import soundfile as sf

        sf.write(buf, np.repeat(instr, 3), 48000, format="WAV", subtype="PCM_16")
        for over, fmt in (({"instruction_audio": pcm16, "format": "s16le"}, "s16le"),
                          ({"instruction_audio": base64.b64encode(buf.getvalue()).decode()}, "f32le")):
            async with connect(srv.ws, max_size=None) as ws:
                await ws.send(hello(**over))
                assert (await recv_json(ws))["type"] == "ready"
                await send_audio(ws, stream, fmt)
                events = await finish(ws)
            assert len([e for e in events if e["type"] == "decision"]) == 3
            got = engine.spoken[-1]
            assert abs(len(got) - len(instr)) <= 16
            assert np.corrcoef(got[100:-100], instr[100 : len(got) - 100])[0, 1] > 0.95

        n = len(engine.spoken)
        # 3. over the limit (20 s): refused with an error event, before any audio is sent
        ev = await refused(srv.ws, hello(instruction_audio={"samples": 21 * SR}), [], "instruction_too_long")
        assert "21.0 s" in ev["message"] and "20 s" in ev["message"]
        # malformed: NaN samples, a text frame where the samples were due, bad base64, a bad shape
        await refused(srv.ws, hello(instruction_audio={"samples": FRAME}),
                      [np.full(FRAME, np.nan, "<f4").tobytes()], "malformed_frame")
        await refused(srv.ws, hello(instruction_audio={"samples": FRAME}), [json.dumps({"type": "end"})], "bad_handshake")
        await refused(srv.ws, hello(instruction_audio="not base64!"), [], "bad_handshake")
        await refused(srv.ws, hello(instruction_audio={"samples": True}), [], "bad_handshake")
        await refused(srv.ws, hello(instruction_audio=[1, 2]), [], "bad_handshake")
        assert len(engine.spoken) == n  # no session was started for any of them
        assert (await asyncio.to_thread(srv.health))["sessions"] == 0

    with running_server(model, engine=engine) as srv:
        asyncio.run(main(srv))

    # 4. the string form is bounded too (a server with a 2 s limit; 3 s of s16le fits one message)
    async def small(srv):
        data = base64.b64encode(encode(_wave(3.0, 13), "s16le")).decode()
        ev = await refused(srv.ws, hello(instruction_audio=data, format="s16le"), [], "instruction_too_long")
        assert "3.0 s" in ev["message"]
        buf = io.BytesIO()
        import soundfile as sf

        sf.write(buf, _wave(3.0, 13), SR, format="FLAC")
        await refused(srv.ws, hello(instruction_audio=base64.b64encode(buf.getvalue()).decode()), [],
                      "instruction_too_long")

    with running_server(model, engine=_RecordingEngine(model), app_kw={"max_instruction_audio_s": 2.0}) as srv:
        asyncio.run(small(srv))


class _SpyEngine(Engine):
    """The real engine, keeping its sessions (their `instruction` and `instruction_audio` are the
    ones the decoder applied last)."""

    def __init__(self, model, **opts):
        super().__init__(model, EngineOptions(**opts))
        self.sessions: list = []

    def session(self, *a, **kw):
        sess = super().session(*a, **kw)
        self.sessions.append(sess)
        return sess


def test_server_takes_spoken_instructions_mid_session(model):
    """`{"type": "instruction", "text"?, "audio": {"samples": N} | "base64…"}` after `ready`:
    both forms applied at the next chunk (exactly what the engine computes given the same
    instructions directly); refusals (too long, NaN, bad base64, over the token limit, a text
    frame where samples were due) get their error event and the session goes on; announced
    samples are never stream audio, refused or not, and the stream before and after is decoded
    in order."""
    pytest.importorskip("websockets")
    import soundfile as sf
    from test_server import (
        FRAME,
        encode,
        finish,
        open_session,
        recv_json,
        running_server,
        send_audio,
    )

    from soundflow.audio import load_audio

    opts = {"threshold": 1.01, "max_instruction_tokens": 100}
    chunks = list(iter_chunks(_wave(0.4 * 8, 30)))
    instr1, instr2 = _wave(1.25, 31), _wave(0.9, 32)  # 20000 samples: the last frame is half stream
    buf = io.BytesIO()
    sf.write(buf, _wave(1.1, 33), SR, format="WAV", subtype="PCM_16")
    wav = buf.getvalue()
    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    def instruction(**kw) -> str:
        return json.dumps({"type": "instruction", **kw})

    applied = {1: {"text": "go", "audio": instr1}, 2: {"text": "", "audio": instr2},
               3: {"text": "", "audio": load_audio(io.BytesIO(wav))}, 4: {"text": "now text"}, 7: {"text": "after"}}
    engine = _SpyEngine(model, **opts)

    async def step(ws, k, sends, codes=()):
        """Send `sends` (text messages, or PCM sent as FRAME-sample frames), then chunk k (unless
        it was among them); the error codes before chunk k's decision must be `codes`."""
        for x in sends:
            if isinstance(x, str):
                await ws.send(x)
            else:
                await send_audio(ws, x)
        got = []
        while True:
            ev = await recv_json(ws)
            if ev["type"] == "decision":
                assert ev["chunk"] == k, ev
                break
            got.append(ev)
        assert [e["code"] for e in got if e["type"] == "error"] == list(codes), got
        return got + [ev]

    async def main(srv):
        ws, _ = await open_session(srv.ws)
        sess = engine.sessions[-1]
        events = await step(ws, 0, [chunks[0]])
        # 1. {"samples": N}: the next N samples are the instruction, the rest of the last frame stream
        events += await step(ws, 1, [instruction(text="go", audio={"samples": len(instr1)}),
                                     np.concatenate([instr1, chunks[1]])])
        assert sess.instruction == "go" and np.allclose(sess.instruction_audio, instr1, atol=1e-7)
        # 2. base64 of raw PCM in the session's format, without text; 3. of a WAV file
        events += await step(ws, 2, [instruction(audio=b64(encode(instr2))), chunks[2]])
        assert sess.instruction is None and np.allclose(sess.instruction_audio, instr2, atol=1e-7)
        events += await step(ws, 3, [instruction(audio=b64(wav)), chunks[3]])
        assert len(sess.instruction_audio) == int(1.1 * SR)
        # 4. a text instruction replaces the spoken one
        events += await step(ws, 4, [instruction(text="now text"), chunks[4]])
        assert sess.instruction == "now text" and sess.instruction_audio is None
        # 5. refused, its announced samples read and dropped all the same: too long (3 s > 2 s);
        # NaN in one of its frames (the frame and the instruction dropped, the rest still read)
        ev = await step(ws, 5, [instruction(text="x", audio={"samples": 3 * SR}), _wave(3.0, 34),
                                instruction(audio={"samples": SR}), np.full(FRAME, np.nan, np.float32),
                                np.concatenate([_wave(0.9, 35), chunks[5]])],
                        ["instruction_too_long", "malformed_frame"])
        assert "3.0 s" in ev[0]["message"] and "2 s" in ev[0]["message"]
        events += ev
        # 6. refused base64: not base64, not audio, too long, NaN, over max_instruction_tokens
        # with the text; malformed messages
        nan = np.full(SR, np.nan, np.float32)
        events += await step(ws, 6, [instruction(audio="not base64!"), instruction(audio=b64(b"RIFF" + b"\0" * 40)),
                                     instruction(audio=b64(encode(_wave(2.5, 36)))), instruction(audio=b64(encode(nan))),
                                     instruction(text="y" * 60, audio=b64(encode(_wave(2.0, 37)))),
                                     instruction(audio=[1, 2]), instruction(audio={"samples": 0}),
                                     instruction(text=5, audio={"samples": FRAME}), _wave(0.1, 38), chunks[6]],
                             ["bad_message", "bad_message", "instruction_too_long", "malformed_frame",
                              "instruction_too_long", "bad_message", "bad_message", "bad_message"])
        assert sess.instruction == "now text" and sess.instruction_audio is None  # none of them applied
        # 7. a text frame where announced samples were due: that instruction is dropped, the frame
        # handled as usual (here a text instruction), and what follows is the stream again
        events += await step(ws, 7, [instruction(audio={"samples": SR}), _wave(0.1, 39),
                                     instruction(text="after"), chunks[7]], ["bad_message"])
        assert sess.instruction == "after" and sess.instruction_audio is None
        events += await finish(ws)
        assert events[-1] == {"type": "end", "chunks": 8}
        return events

    with running_server(model, engine=engine, app_kw={"max_instruction_audio_s": 2.0,
                                                      "instruction_rate": (1000, 1000.0),
                                                      "server_instruction_rate": (1000, 1000.0)}) as srv:
        events = asyncio.run(asyncio.wait_for(main(srv), 300))
    assert [e["chunk"] for e in events if e["type"] == "decision"] == list(range(8))
    ref = _lockstep(Engine(model, EngineOptions(**opts)).session(), chunks, applied)
    assert _decisions_p(events) == pytest.approx(_decisions_p(ref), abs=1e-3)

    # the rate limit of text instructions (a burst of 1 here): a refused {"samples": N} is still
    # N samples of instruction, not stream
    async def limited(srv):
        ws, _ = await open_session(srv.ws)
        await ws.send(instruction(audio={"samples": FRAME}))
        await send_audio(ws, instr2[:FRAME])
        for form, samples in (({"samples": FRAME}, instr1[:FRAME]), (b64(encode(instr1)), None)):
            await ws.send(instruction(audio=form))
            if samples is not None:
                await send_audio(ws, samples)
            ev = await recv_json(ws)
            assert ev["type"] == "error" and ev["code"] == "rate_limited", ev
        await send_audio(ws, chunks[0])
        events = await finish(ws)
        assert [e["chunk"] for e in events if e["type"] == "decision"] == [0]
        return events

    engine = _SpyEngine(model, **opts)
    with running_server(model, engine=engine, app_kw={"instruction_rate": (1, 0.001)}) as srv:
        events = asyncio.run(asyncio.wait_for(limited(srv), 120))
    assert np.allclose(engine.sessions[-1].instruction_audio, instr2[:FRAME])
    ref = _lockstep(Engine(model, EngineOptions(**opts)).session(), chunks[:1], {0: {"text": "", "audio": instr2[:FRAME]}})
    assert _decisions_p(events) == pytest.approx(_decisions_p(ref), abs=1e-3)


# ----------------------------------------------------------------------------- the page


@contextlib.contextmanager
def _live_page(tmp_path, model, engine):
    """The page in Chromium, loaded from a running server with `engine`; its fake microphone
    plays a 30 s tone."""
    import test_browser
    from test_server import running_server

    fx = test_browser.chromium  # the page test's fixture, its generator driven by hand
    launch_gen = (getattr(fx, "__wrapped__", None) or fx.__pytest_wrapped__.obj)(tmp_path)
    launch = next(launch_gen)
    try:
        with running_server(model, engine=engine) as srv:
            dt = launch(f"{srv.http}/", test_browser._wav(tmp_path / "mic.wav", 30.0, 48000))
            try:
                dt.wait("document.readyState === 'complete' && window.soundflow", 30, "the page")
                yield dt
            finally:
                dt.close()
    finally:
        for _ in launch_gen:
            pass


@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)")
def test_page_records_a_spoken_instruction_and_sends_it_in_hello(tmp_path, model):
    """Record instruction (fake microphone → the page's worklet → 16 kHz), then start the
    microphone: the session's hello carries it and the engine starts with it."""
    engine = _RecordingEngine(model)
    with _live_page(tmp_path, model, engine) as dt:
        dt.eval("document.getElementById('record-instruction').click()")
        dt.wait("document.getElementById('record-instruction').classList.contains('recording')", 30,
                "recording to start")
        dt.wait("/Recording… [1-9]/.test(document.getElementById('spoken-instruction').textContent)", 30,
                "a second of recorded instruction")
        assert dt.eval("document.getElementById('mic').disabled")  # one capture at a time
        dt.eval("document.getElementById('record-instruction').click()")
        secs = dt.wait("window.soundflow.spokenInstruction", 30, "the recording to stop")
        assert secs >= 1.0
        assert not dt.eval("document.getElementById('clear-instruction').hidden")
        dt.eval("document.getElementById('mic').click()")
        dt.wait("window.soundflow.decisions >= 2", 60, "decisions after the spoken instruction")
        assert not dt.eval("window.soundflow.errors")
        dt.eval("document.getElementById('stop').click()")
        dt.wait("window.soundflow.state === 'done'", 30, "the session to finish")
    spoken = [s for s in engine.spoken if s is not None]
    assert len(spoken) == 1 and len(spoken[0]) == round(secs * SR)
    assert np.sqrt(np.mean(spoken[0][SR // 2 :] ** 2)) > 0.01  # the fake microphone's tone, not silence


@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)")
def test_page_sends_a_spoken_instruction_to_a_running_session(tmp_path, model):
    """Start the microphone, then record an instruction: the session's own capture becomes the
    instruction (the stream pauses), and stopping the recording sends it mid-session; the engine
    session applies it and the stream goes on."""
    engine = _SpyEngine(model, threshold=0.5, max_reply_tokens=4)
    with _live_page(tmp_path, model, engine) as dt:
        dt.eval("document.getElementById('mic').click()")
        dt.wait("window.soundflow.decisions >= 2", 60, "decisions from the microphone")
        assert not dt.eval("document.getElementById('record-instruction').disabled")  # live: allowed
        dt.eval("document.getElementById('record-instruction').click()")
        dt.wait("/Recording… [1-9]/.test(document.getElementById('spoken-instruction').textContent)", 30,
                "a second of recorded instruction")
        dt.eval("document.getElementById('record-instruction').click()")
        dt.wait("window.soundflow.spokenSent === 1", 30, "the instruction to be sent")
        secs = dt.eval("window.soundflow.spokenInstruction")
        n = dt.eval("window.soundflow.decisions")
        dt.wait(f"window.soundflow.decisions >= {n + 2}", 60, "decisions after the spoken instruction")
        assert not dt.eval("window.soundflow.errors")
        dt.eval("document.getElementById('stop').click()")
        dt.wait("window.soundflow.state === 'done'", 30, "the session to finish")
        chunks = dt.eval("[...document.querySelectorAll('#timeline .cell')].map(c => +c.dataset.chunk)")
        assert chunks == list(range(len(chunks)))
    (sess,) = engine.sessions  # one session, started without a spoken instruction, given one
    assert secs >= 1.0 and len(sess.instruction_audio) == round(secs * SR)
    assert np.sqrt(np.mean(sess.instruction_audio[SR // 2 :] ** 2)) > 0.01  # the fake microphone's tone
