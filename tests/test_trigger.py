"""The sound trigger (trigger.py): evidence built live equals evidence built teacher-forced, a fit
separates an easy set, it survives a checkpoint round trip, and decoding uses and resets it."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from soundflow import decoding
from soundflow.checkpoint import load_checkpoint, save_checkpoint
from soundflow.data import split_chunks
from soundflow.trigger import TriggerState, chunk_summary, combine, holding_off, pool, pooled_stream
from soundflow.trigger_fit import TriggerExample, fit_into_checkpoint, fit_trigger, respond_labels


def test_live_evidence_equals_teacher_forced_evidence_with_resets():
    torch.manual_seed(0)
    s = torch.randn(12, 8)
    resets = [3, 7]
    tf = pooled_stream(s, resets, windows=(1, 4))
    st = TriggerState(windows=(1, 4), holdoff=0)
    for t in range(12):
        st.push(s[t: t + 1])
        assert torch.allclose(st.evidence(), tf[t])
        if t in resets:
            st.replied()
    # per window: mean of the first half, max of the second; window 4 covers chunks 4..7 after
    # the reset at 3, window 1 chunk 7 alone
    assert torch.allclose(tf[7], torch.cat([pool(s[7:8]), s[4:8, :4].mean(0), s[4:8, 4:].amax(0)]))
    assert torch.allclose(tf[4], torch.cat([pool(s[4:5]), pool(s[4:5])]))  # a reset empties the evidence
    assert tf.shape == (12, 16)


def test_holdoff_after_a_reply_live_and_teacher_forced():
    s = torch.randn(10, 4)
    st, live = TriggerState(windows=(2,), holdoff=2), []
    for t in range(10):
        st.push(s[t: t + 1])
        live.append(st.evidence() is None)
        if t == 3:
            st.last = (0.2, 0.9)  # the trigger called for this reply
            st.replied()
    assert live == [False, False, False, False, True, True, False, False, False, False]
    assert holding_off(10, [3], 2).tolist() == live
    assert torch.allclose(st.evidence(), pooled_stream(s, [3], (2,))[9])
    st.last = (0.9, 0.2)  # a reply the LM called for (a word): the evidence empties, no hold-off
    st.replied()
    st.push(s[:1])
    assert torch.allclose(st.evidence(), pooled_stream(s[:1], [], (2,))[0])


def test_one_reply_per_sustained_sound_then_it_re_arms():
    """After its own reply the trigger stays out until its logit has stayed TRIGGER_REARM_MARGIN
    below its firing level for TRIGGER_REARM_CHUNKS chunks: a sound that goes on is answered once,
    the next sound after a quiet spell again."""
    from soundflow.trigger import TRIGGER_REARM_CHUNKS, Trigger

    trig = Trigger(d_summary=2, windows=(1,), holdoff=2, hidden=0)
    with torch.no_grad():
        trig.out.weight.copy_(torch.tensor([[1.0, 0.0]]))  # logit = the chunk's (mean) summary
    trig.fire_logit = 0.0  # fires at P >= 0.5
    level = [6.0] * 12 + [-6.0] * 5 + [6.0] * 3  # a long sound, a quiet spell, a second sound
    st, replies = TriggerState(windows=(1,), holdoff=2), []
    for t, v in enumerate(level):
        st.push(torch.tensor([[v, v]]))
        st.last = (0.0, st.score(trig))
        if st.last[1] >= 0.5:
            replies.append(t)
            st.replied()
    assert replies == [0, 17]  # once for the long sound; re-armed after the quiet spell
    assert 5 >= TRIGGER_REARM_CHUNKS  # the quiet spell is long enough to re-arm
    # the hold-off alone would have answered the long sound every holdoff + 1 chunks
    st, again = TriggerState(windows=(1,), holdoff=2), []
    for t, v in enumerate(level[:12]):
        st.push(torch.tensor([[v, v]]))
        if st.evidence() is not None and float(trig.prob(st.evidence())) >= 0.5:
            again.append(t)
            st.last = (0.0, 1.0)
            st.replied()
    assert again == [0, 3, 6, 9]


def _named_trigger():
    """A trigger whose logit is feature 0 (loudness) and whose namer names class "a" or "b" by the
    sign of feature 1; it fires at logit 0."""
    from soundflow.trigger import Trigger

    trig = Trigger(d_summary=2, windows=(1,), holdoff=3, hidden=0, classes=["a", "b"], replies=["A!", "B!"])
    with torch.no_grad():
        trig.out.weight.copy_(torch.tensor([[1.0, 0.0]]))
        trig.namer.weight.copy_(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
    trig.fire_logit = 0.0
    return trig


def _replies(trig, rows):
    st, out = TriggerState(windows=(1,), holdoff=3), []
    for t, (loud, kind) in enumerate(rows):
        st.push(torch.tensor([[loud, kind]]))
        st.last = (0.0, st.score(trig))
        if st.last[1] >= 0.5:
            out.append((t, trig.replies[st.heard_name[0]]))
            st.replied()
    return out


def test_the_same_sound_is_warned_again_only_after_a_quiet_spell_heard_after_the_hold_off():
    """The evidence its reply emptied can read as quiet inside the hold-off while the sound goes on
    (a crying baby was warned about three times in 7.2 s): that re-arms the trigger, but naming the
    same sound again needs TRIGGER_REARM_CHUNKS chunks under `Trigger.rearm_logit` after the hold-off."""
    from soundflow.trigger import TRIGGER_REARM_CHUNKS

    trig = _named_trigger()
    a, quiet_a = (6.0, 5.0), (-6.0, 5.0)
    # quiet inside the hold-off and one chunk after it re-arms (the first rule), but it is the same sound
    assert _replies(trig, [a] + [quiet_a] * 4 + [a] * 6) == [(0, "A!")]
    spell = [quiet_a] * 3 + [quiet_a] * TRIGGER_REARM_CHUNKS  # the hold-off, then a real quiet spell
    assert _replies(trig, [a] + spell + [a] * 2) == [(0, "A!"), (1 + len(spell), "A!")]


def test_another_sound_is_answered_without_the_quiet_spell():
    """A different sound is answered as soon as the first rule re-arms the trigger; only the sound it
    last warned about waits for the quiet spell (the next event of a multi-event stream must not)."""
    trig = _named_trigger()
    a, b, quiet = (6.0, 5.0), (6.0, -5.0), (-6.0, 0.0)
    assert _replies(trig, [a] + [quiet] * 4 + [b] * 3) == [(0, "A!"), (5, "B!")]
    assert _replies(trig, [a] + [quiet] * 4 + [a] * 3) == [(0, "A!")]  # the same sound there would wait


def test_the_re_arm_level_is_measured_from_where_the_second_look_opens():
    from soundflow.trigger import TRIGGER_REARM_MARGIN, Trigger

    assert _named_trigger().rearm_logit == -TRIGGER_REARM_MARGIN
    gated = Trigger(d_summary=2, windows=(1,), holdoff=3, hidden=0, verifier={"n_mels": 4, "gate": 4.0})
    gated.fire_logit = 1.5
    assert gated.rearm_logit == 1.5 - 4.0 - TRIGGER_REARM_MARGIN


def test_chunk_summary_is_slot_mean_then_slot_max():
    e = torch.randn(3, 10, 5)
    out = chunk_summary(e)
    assert out.shape == (3, 10) and torch.allclose(out[:, :5], e.mean(1)) and torch.allclose(out[:, 5:], e.amax(1))


def test_respond_labels_cover_the_counted_chunks_of_respond_clips_only():
    c = 6400
    y = respond_labels(12, [(c + 100, 3 * c + 10, True), (6 * c, 7 * c, False)], c, window_chunks=2)
    # chunks 1..3 overlap the clip, then 2 more; the IGNORE clip stays 0
    assert y.tolist() == [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]


def _easy_examples(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = torch.from_numpy(rng.standard_normal((10, 6)).astype(np.float32))
        y = np.zeros(10, dtype=np.int64)
        if rng.random() < 0.5:
            s[4:7, 1] += 3.0  # the "sound" lifts feature 1 while it lasts
            y[4:9] = 1
        out.append(TriggerExample(s, y, []))
    return out


def test_fit_separates_an_easy_set_held_out():
    from sklearn.metrics import roc_auc_score

    trig, stats = fit_trigger(_easy_examples(60, 0), windows=(1, 3), steps=300)
    assert stats["streams"] == 60 and stats["respond_chunks"] > 0 and trig.windows == (1, 3)
    g, p = [], []
    for e in _easy_examples(40, 1):
        pr = trig.prob(pooled_stream(e.summaries, e.resets, (1, 3)))
        g.append(int(e.labels.any()))
        p.append(float(pr[4:9].max()))
    assert roc_auc_score(g, p) > 0.95


def test_fit_refuses_one_class():
    ex = [TriggerExample(torch.randn(5, 4), np.zeros(5, dtype=np.int64), [])]
    with pytest.raises(ValueError, match="both kinds"):
        fit_trigger(ex)


def test_combine_is_either_path():
    assert combine(0.0, 0.3) == pytest.approx(0.3) and combine(0.4, 0.0) == pytest.approx(0.4)
    assert torch.equal(combine(torch.tensor([0.2, 0.9]), torch.tensor([0.5, 0.1])), torch.tensor([0.5, 0.9]))


def _with_trigger(model, bias: float):
    trig = model.add_trigger(windows=(1, 3))
    with torch.no_grad():
        trig.out.weight.normal_(0, 0.01)
        trig.out.bias.fill_(bias)
    return trig


def test_checkpoint_round_trip_keeps_the_trigger(tmp_path):
    from soundflow.model import build_model

    m = build_model("tiny")
    _with_trigger(m, 0.7)
    save_checkpoint(m, {"special"}, tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "model.json").read_text())
    assert meta["trigger"]["windows"] == [1, 3] and "trigger.out.weight" in meta["trained"]
    back = load_checkpoint(tmp_path / "ck")
    assert back.trigger is not None and back.trigger.windows == (1, 3)
    for n, p in m.trigger.named_parameters():
        assert torch.equal(p, dict(back.trigger.named_parameters())[n])


def test_decoding_uses_the_trigger_and_a_reply_resets_it():
    from soundflow.model import build_model

    m = build_model("tiny").eval()
    rng = np.random.default_rng(0)
    chunks = split_chunks((0.1 * rng.standard_normal(16000 * 2)).astype(np.float32), 400)
    st = decoding.start(m)
    assert st.trigger is None  # no trigger: the paper's decision, P from the control tokens
    a, h = m.encode_heard(m.features(torch.from_numpy(chunks[:1])))
    assert h is None
    p_lm = decoding.feed_audio(m, st, a)

    _with_trigger(m, 10.0)  # P_trigger ≈ 1: every chunk calls for a reply
    st = decoding.start(m)
    a, h = m.encode_heard(m.features(torch.from_numpy(chunks[:1])))
    assert h.shape == (1, 2 * m.encoder.d_out)
    with pytest.raises(ValueError, match="sound trigger"):
        decoding.feed_audio(m, decoding.start(m), a)
    p = decoding.feed_audio(m, st, a, h)
    assert p > 0.99 and p >= p_lm
    decoding.push_control(m, st, True)
    assert st.trigger.evidence() is None  # answered: the evidence starts afresh
    m.trigger = None


def test_sequential_decoder_matches_teacher_forced_scores_with_a_trigger():
    """`decode_stream` (live evidence, resets at its replies) and `calibrate.stream_scores`
    (teacher forced) give the same P on a stream the model stays silent on."""
    from soundflow.calibrate import stream_scores
    from soundflow.data import StreamSample
    from soundflow.model import build_model

    m = build_model("tiny").eval()
    trig = _with_trigger(m, -8.0)
    with torch.no_grad():
        trig.out.weight.normal_(0, 0.5)
    wave = (0.1 * np.random.default_rng(1).standard_normal(16000 * 2)).astype(np.float32)
    live = [e["p_response"] for e in decoding.decode_stream(m, split_chunks(wave, 400), decoding.DecodeOptions(threshold=1.01))
            if e["type"] == "decision"]
    s = StreamSample(id="s", task="proactive", wave=wave, timeline=[], events=[])
    with torch.no_grad():
        tf = stream_scores(m, [s], max_chunks=60)[0][0]
    assert np.allclose(live, tf, atol=1e-4)


def _bench_manifest(tmp_path, n=24):
    rng = np.random.default_rng(0)
    t = np.arange(int(1.6 * 16000)) / 16000
    rows = []
    (tmp_path / "Human" / "Alarm").mkdir(parents=True)
    for i in range(n):
        respond = i % 2 == 0  # RESPOND: a loud tone; IGNORE: soft noise
        w = 0.5 * np.sin(2 * np.pi * rng.uniform(600, 1200) * t) if respond else 0.02 * rng.standard_normal(len(t))
        sf.write(tmp_path / "Human" / "Alarm" / f"c{i}.wav", w.astype(np.float32), 16000)
        rows.append({"id": f"c{i}", "path": f"Human/Alarm/c{i}.wav", "decision": "RESPOND" if respond else "IGNORE"})
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "labels.jsonl"


def test_fit_into_checkpoint_writes_a_loadable_uncalibrated_copy(tmp_path):
    from soundflow.model import build_model

    m = build_model("tiny")
    save_checkpoint(m, {"special"}, tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "model.json").read_text())
    meta["calibration"] = {"threshold": 0.3}
    (tmp_path / "ck" / "model.json").write_text(json.dumps(meta))
    stats = fit_into_checkpoint(tmp_path / "ck", tmp_path / "out", bench_manifest=str(_bench_manifest(tmp_path)),
                                windows=(2,), progress=False)
    assert stats["streams"] > 12 and stats["respond_chunks"] > 0
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert "calibration" not in meta and meta["trigger"]["fit"]["windows"] == [2]
    back = load_checkpoint(tmp_path / "out")
    assert back.trigger is not None and float(back.trigger.out.weight.abs().sum()) > 0
    assert torch.equal(back.special, load_checkpoint(tmp_path / "ck").special)  # the rest copied as is


def test_engine_modes_and_batching_decide_with_the_trigger_as_the_reference_decoder():
    """FIFO, sequential and batched sessions feed the trigger the same evidence as
    `decode_stream`: the same P at every chunk, the same replies (each reply empties it)."""
    from soundflow.audio import iter_chunks
    from soundflow.model import build_model

    m = build_model("tiny").eval()
    trig = _with_trigger(m, -1.0)
    with torch.no_grad():
        trig.out.weight.normal_(0, 0.3)
    rng = np.random.default_rng(2)
    wave = (0.02 * rng.standard_normal(16000 * 4)).astype(np.float32)
    wave[16000:32000] *= 20  # a loud stretch moves the evidence
    def reference(thr):
        return [e for e in decoding.decode_stream(m, list(iter_chunks(wave)), decoding.DecodeOptions(threshold=thr, max_reply_tokens=3))
                if e["type"] == "decision"]
    thr = float(np.quantile([e["p_response"] for e in reference(1.01)], 0.7))  # some replies, not all
    ref = reference(thr)
    assert any(e["decision"] == "response" for e in ref) and any(e["decision"] == "silent" for e in ref)
    assert_engines_decide_as(m, wave, thr, ref)


def assert_engines_decide_as(m, wave, thr, ref):
    """FIFO, sequential and batched sessions make `ref`'s decisions (`decode_stream`'s) with its P."""
    from soundflow.audio import iter_chunks
    from soundflow.engine import Engine, EngineOptions

    for opts in (dict(mode="fifo"), dict(mode="sequential"), dict(batch=True)):
        eng = Engine(m, EngineOptions(threshold=thr, max_reply_tokens=3, **opts))
        evs = [e for e in eng.session().run(iter_chunks(wave), realtime=False) if e["type"] == "decision"]
        assert [e["decision"] for e in evs] == [e["decision"] for e in ref], opts
        assert [e["p_response"] for e in evs] == pytest.approx([e["p_response"] for e in ref], abs=5e-3), opts
        eng.close()


def _one_clip_streams(n, rng, quiet, loud):
    """n 8-chunk streams of one clip each (RESPOND, IGNORE alternating) and trigger P per chunk:
    U(quiet) everywhere, U(loud) at chunk 3 of a RESPOND clip."""
    from soundflow.data import StreamSample

    samples, ps = [], []
    for i in range(n):
        respond = i % 2 == 0
        ev = [{"role": "foreground", "offset_s": 0.8, "length_s": 1.2,
               "provenance": {"type": "clip", "decision": "RESPOND" if respond else "IGNORE"}}]
        samples.append(StreamSample(id=str(i), events=ev))
        p = rng.uniform(*quiet, 8)
        if respond:
            p[3] = rng.uniform(*loud)
        ps.append(p)
    return samples, ps


def test_calibration_aligns_the_trigger_threshold_with_the_models():
    """`calibrate_trigger` picks the trigger's best per-clip threshold t and an offset such that,
    at the model's threshold, the shifted trigger fires exactly where P_trigger ≥ t."""
    from soundflow.calibrate import calibrate_trigger, clip_scores
    from soundflow.trigger import Trigger

    rng = np.random.default_rng(0)
    samples, trig = _one_clip_streams(30, rng, (0.05, 0.3), (0.25, 0.6))  # RESPOND higher, overlapping a little
    lm = [rng.uniform(0.0, 0.2, 8) for _ in samples]
    ys = [np.zeros(8, dtype=int) for _ in samples]
    out = calibrate_trigger(samples, {"lm": lm, "trigger": trig, "y": ys}, threshold=0.45)
    g, best = clip_scores(samples, trig)
    assert len(g) == 30 and out["n_clips"] == 30 and out["balanced_acc"] > 0.8
    t = Trigger(1, windows=(1,), hidden=0)  # the identity head: logit = P's own logit
    t.offset = out["offset"]
    with torch.no_grad():
        t.out.weight.fill_(1.0)
    z = torch.logit(torch.from_numpy(best).clamp(1e-6, 1 - 1e-6)).float().unsqueeze(-1)
    shifted = t.prob(z).numpy()  # sigmoid(logit(P) + offset)
    assert np.array_equal(shifted >= 0.45 - 1e-9, best >= out["threshold"] - 1e-9)


def test_lowest_quiet_threshold_keeps_the_ambient_budget_and_no_more():
    from soundflow.trigger_fit import false_replies, lowest_quiet_threshold

    rng = np.random.default_rng(3)
    logits = (3 * rng.standard_normal(9000)).astype(np.float32)  # an hour of 0.4-s chunks
    for budget in (0.0, 1.0, 5.0, 40.0):
        t = lowest_quiet_threshold(logits, hours=1.0, budget=budget, holdoff=4)
        assert false_replies(logits, t, 4) <= budget
        below = np.unique(logits[logits < t])
        if len(below):  # the next lower logit heard would break the budget
            assert false_replies(logits, float(below[-1]), 4) > budget
    assert lowest_quiet_threshold(logits, 1.0, 0.0) > logits.max()


def test_false_replies_hold_off_after_each_reply():
    from soundflow.trigger_fit import false_replies

    x = np.array([5, 5, 5, 5, 5, 5, 0, 5], dtype=np.float32)
    assert false_replies(x, 1.0, holdoff=4) == 2  # chunks 0 and 5; 7 is held off
    assert false_replies(x, 1.0, holdoff=0) == 7


def test_calibration_never_sets_the_trigger_below_its_floor():
    from soundflow.calibrate import calibrate_trigger

    samples, trig = _one_clip_streams(20, np.random.default_rng(0), (0.05, 0.2), (0.5, 0.9))
    ys = [np.zeros(8, dtype=int) for _ in samples]
    parts = {"lm": [np.zeros(8)] * 20, "trigger": trig, "y": ys}
    free = calibrate_trigger(samples, parts, threshold=0.5)
    floored = calibrate_trigger(samples, parts, threshold=0.5, floor=float(np.log(0.8 / 0.2)))
    assert free["threshold"] < 0.8 and floored["threshold"] == pytest.approx(0.8)
    assert floored["balanced_threshold"] == free["threshold"] and floored["respond_recall"] <= free["respond_recall"]


def _noise_library(tmp_path) -> list[dict]:
    """A noise manifest of 16 faint 3 s files, every other one ambient, at tmp_path/noise.jsonl."""
    rng = np.random.default_rng(4)
    rows = []
    for i in range(16):
        sf.write(tmp_path / f"n{i}.wav", (0.03 * rng.standard_normal(16000 * 3)).astype(np.float32), 16000)
        rows.append({"id": f"n{i}", "audio": f"n{i}.wav", "kind": "ambient" if i % 2 else "event"})
    (tmp_path / "noise.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_fit_with_a_noise_library_sets_a_floor_from_held_out_folds(tmp_path):
    """Ambient negatives come from the library's training side in two folds of different files;
    the floor is the lowest threshold within the budget on both folds' out-of-fold logits together
    (here 1 min in all: no reply allowed, so the higher fold's); it survives a reload."""
    from soundflow.catalog import noise_rows_of
    from soundflow.model import build_model

    m = build_model("tiny")
    save_checkpoint(m, {"special"}, tmp_path / "ck")
    rows = _noise_library(tmp_path)
    stats = fit_into_checkpoint(tmp_path / "ck", tmp_path / "out", bench_manifest=str(_bench_manifest(tmp_path)),
                                noise_manifest=str(tmp_path / "noise.jsonl"), ambient_minutes=1.0, windows=(2,),
                                progress=False)
    assert len(stats["floor_folds"]) == 2 and stats["floor"] == max(f["threshold_logit"] for f in stats["floor_folds"])
    assert all(f["threshold_logit"] > f["max_logit"] for f in stats["floor_folds"])  # 0.5 min: no reply allowed
    # counted on each fold's recordings only (75 chunks), not its augmented or synthesised share
    assert all(f["hours"] == pytest.approx(75 * 0.4 / 3600, abs=1e-3) for f in stats["floor_folds"])
    back = load_checkpoint(tmp_path / "out")
    assert back.trigger.floor == pytest.approx(stats["floor"]) and back.trigger.hidden_units == 64
    assert {r["id"] for r in noise_rows_of(rows, "dev")}  # the bench keeps a held-out side


def _named(model, bias: float = 10.0):
    """A trigger that always fires and names the second of two classes."""
    from soundflow.replies import PROACTIVE_REPLIES

    trig = _with_trigger(model, bias)
    trig.set_classes(["baby_cry", "glass_break"], [PROACTIVE_REPLIES["baby_cry"], PROACTIVE_REPLIES["glass_break"]])
    with torch.no_grad():
        trig.namer.bias.copy_(torch.tensor([0.0, 5.0]))
    return trig


def test_fit_namer_learns_which_respond_sound_it_heard():
    from soundflow.trigger import Trigger
    from soundflow.trigger_fit import fit_namer

    rng = np.random.default_rng(0)
    ex = []
    for i in range(60):
        s = torch.from_numpy(rng.standard_normal((10, 6)).astype(np.float32))
        cls = ("baby_cry", "glass_break", "no_reply_class")[i % 3]
        s[4:7, i % 3] += 4.0
        y = np.zeros(10, dtype=np.int64)
        y[4:9] = 1
        ex.append(TriggerExample(s, y, [], [""] * 4 + [cls] * 5 + [""]))
    trig = Trigger(6, windows=(1,), hidden=0)
    with torch.no_grad():
        trig.scale.fill_(1.0)
    stats = fit_namer(trig, ex, steps=300)
    assert stats["classes"] == ["baby_cry", "glass_break"]  # a class without a trained reply is left out
    assert trig.replies[1].startswith("I heard glass breaking")
    hits = [trig.name(pooled_stream(e.summaries, (), (1,))[5])[0] == ("baby_cry", "glass_break").index(e.names[5])
            for e in ex if e.names[5] != "no_reply_class"]
    assert np.mean(hits) > 0.9


def test_a_sound_the_trigger_named_gets_the_reply_trained_for_it_and_the_lm_writes_the_rest(tmp_path):
    """When the trigger calls for the reply and names the sound, the reply is that sound's
    trained reply, on the sequential decoder and the engine alike; it survives a checkpoint."""
    from soundflow.audio import iter_chunks
    from soundflow.engine import Engine, EngineOptions
    from soundflow.model import build_model

    m = build_model("tiny").eval()
    trig = _named(m)
    want = trig.replies[1]
    wave = (0.05 * np.random.default_rng(0).standard_normal(16000 * 2)).astype(np.float32)
    evs = list(decoding.decode_stream(m, list(iter_chunks(wave)), decoding.DecodeOptions(threshold=0.5, max_reply_tokens=400)))
    replies = [e["text"] for e in evs if e["type"] == "response"]
    assert replies and all(m.tokenizer.decode(m.tokenizer.encode(want)) == r for r in replies)
    eng = Engine(m, EngineOptions(threshold=0.5, max_reply_tokens=400))
    out = [e for e in eng.session().run(iter_chunks(wave), realtime=False) if e["type"] == "response"]
    eng.close()
    assert [e["text"] for e in out] == replies
    save_checkpoint(m, {"special"}, tmp_path / "ck")
    back = load_checkpoint(tmp_path / "ck")
    assert back.trigger.classes == ("baby_cry", "glass_break") and back.trigger.replies[1] == want
    assert torch.equal(back.trigger.namer.bias, trig.namer.bias)
    with torch.no_grad():  # unsure: the trigger does not call for a reply; the LM's decision stands
        trig.namer.bias.zero_()
    evs = list(decoding.decode_stream(m, list(iter_chunks(wave))[:3], decoding.DecodeOptions(threshold=0.5, max_reply_tokens=4)))
    assert all(e["text"] != replies[0] for e in evs if e["type"] == "response")
    m.trigger = None


def test_a_trigger_with_a_namer_calls_only_for_sounds_it_can_name():
    from soundflow.model import build_model
    from soundflow.replies import PROACTIVE_REPLIES
    from soundflow.trigger import TRIGGER_NAME_MIN, TriggerState

    trig = _with_trigger(build_model("tiny"), 10.0)  # its logit alone always calls for a reply
    classes = ["baby_cry", "glass_break", "siren"]
    trig.set_classes(classes, [PROACTIVE_REPLIES[c] for c in classes])
    st = TriggerState(trig.windows, trig.holdoff)
    st.push(torch.randn(1, trig.d_summary))
    with torch.no_grad():
        trig.namer.weight.zero_()
        trig.namer.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))  # sure: a siren
    assert st.score(trig) > 0.99 and st.heard_name[0] == 2 and st.heard_name[1] > 0.97
    with torch.no_grad():
        trig.namer.bias.zero_()  # a third each: it cannot say which
    assert st.score(trig) == 0.0 and st.heard_name[1] < TRIGGER_NAME_MIN


def test_a_reply_the_lm_called_for_stays_the_lms_even_when_the_namer_is_sure():
    """The LM alone called (the trigger stayed under its threshold): the reply is the LM's own,
    whatever the namer thinks it heard (given the namer's words, the LM's transcriptions of
    spoken digits became "Bless you!"), and the trigger does not hold off for a call it did not make."""
    from soundflow.model import build_model
    from soundflow.replies import PROACTIVE_REPLIES
    from soundflow.trigger import TriggerState

    m = build_model("tiny")
    trig = _with_trigger(m, -10.0)  # never calls by itself
    classes = ["baby_cry", "glass_break", "siren"]
    trig.set_classes(classes, [PROACTIVE_REPLIES[c] for c in classes])
    with torch.no_grad():
        trig.namer.weight.zero_()
        trig.namer.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))  # sure: a siren
    st = TriggerState(trig.windows, trig.holdoff)
    st.push(torch.randn(1, trig.d_summary))
    p = st.score(trig)
    assert p < 0.01 and st.heard_name[0] == 2 and st.heard_name[1] > 0.97
    st.last = (0.9, p)  # the LM's P crossed the threshold
    st.replied()
    assert st.named is None and st.quiet == 0 and not st.waiting
    assert decoding.named_reply(m, decoding.DecoderState(cache=None, trigger=st)) is None


def test_extra_recorded_ambience_is_folded_by_halves_of_its_files(tmp_path):
    """`--ambient-manifest`: every file training-side, each fold drawing from its own half."""
    from soundflow.bench.ambient import ambient_stream
    from soundflow.model import build_model
    from soundflow.trigger_fit import ambient_examples

    rng = np.random.default_rng(5)
    for name, n in (("lib", 8), ("extra", 6)):
        rows = []
        for i in range(n):
            sf.write(tmp_path / f"{name}{i}.wav", (0.03 * rng.standard_normal(16000 * 3)).astype(np.float32), 16000)
            rows.append({"id": f"{name}{i}", "audio": f"{name}{i}.wav", "kind": "ambient"})
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = build_model("tiny").eval()
    folds = [ambient_examples(str(tmp_path / "lib.jsonl"), m, 0.5, 0, side, augmented=0, synthetic=0,
                              extra=[str(tmp_path / "extra.jsonl")]) for side in ("train-a", "train-b")]
    for f in folds:  # 0.5 min of the library's side and 0.5 min of the extra half: 75 + 75 chunks
        assert {e.source for e in f} == {"recorded"} and sum(len(e.labels) for e in f) == 150
    played = [{s.source for s in ambient_stream(tmp_path / "extra.jsonl", 2.0, seed=1, split=h)[1]} for h in ("dev", "train")]
    assert played[0] and played[1] and not played[0] & played[1]
    with pytest.raises(ValueError, match="halves"):
        ambient_examples(str(tmp_path / "lib.jsonl"), m, 0.5, 0, "train", extra=[str(tmp_path / "extra.jsonl")])


def test_fit_with_named_sounds_sets_class_floors_no_higher_than_the_floor(tmp_path, monkeypatch):
    """Streams that name their RESPOND sounds give the fit a namer, and each named class its own
    cross-fitted floor, counted on the out-of-fold ambience its fold namer gives that class: never
    above the one floor (a subset of the chunks can only fire less). They survive a reload; a
    namer fitted again (`trigger name`) drops them."""
    import functools

    from soundflow import trigger_fit
    from soundflow.model import build_model
    from soundflow.trigger_fit import name_into_checkpoint

    # the plumbing, not the fit's quality: fewer steps (a namer on a few hundred chunks would
    # otherwise take thousands of one-batch epochs)
    monkeypatch.setattr(trigger_fit, "fit_trigger", functools.partial(trigger_fit.fit_trigger, steps=200))
    monkeypatch.setattr(trigger_fit, "fit_namer", functools.partial(trigger_fit.fit_namer, steps=50))
    m = build_model("tiny")
    save_checkpoint(m, {"special"}, tmp_path / "ck")
    man = _bench_manifest(tmp_path)
    rows = [json.loads(x) for x in man.read_text().splitlines()]
    for i, r in enumerate(rows):  # two RESPOND classes with a trained reply
        r["class"] = ("baby_cry", "glass_break")[(i // 2) % 2] if r["decision"] == "RESPOND" else "rain"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _noise_library(tmp_path)
    stats = fit_into_checkpoint(tmp_path / "ck", tmp_path / "out", bench_manifest=str(man),
                                noise_manifest=str(tmp_path / "noise.jsonl"), ambient_minutes=0.5, windows=(2,),
                                hidden=0, progress=False)
    assert stats["name_fit"]["classes"] == ["baby_cry", "glass_break"]
    back = load_checkpoint(tmp_path / "out")
    assert back.trigger.classes == ("baby_cry", "glass_break") and len(back.trigger.class_floors) == 2
    assert all(f <= stats["floor"] + 1e-9 for f in back.trigger.class_floors)
    name_into_checkpoint(tmp_path / "out", tmp_path / "renamed", bench_manifest=str(man), progress=False)
    assert load_checkpoint(tmp_path / "renamed").trigger.class_floors is None


def test_class_floors_give_each_named_class_its_own_threshold():
    """With class floors the calibration gives each class t_c = max(t, its floor) and an offset
    that fires it exactly there; the trigger's logit takes the offset of the class its namer
    names at that chunk."""
    from soundflow.calibrate import calibrate_trigger
    from soundflow.model import build_model

    samples, trig = _one_clip_streams(20, np.random.default_rng(0), (0.05, 0.2), (0.5, 0.9))
    ys = [np.zeros(8, dtype=int) for _ in samples]
    cls = [np.full(8, i % 2) for i in range(20)]  # the namer's class at each chunk
    parts = {"lm": [np.zeros(8)] * 20, "trigger": trig, "y": ys, "trigger_class": cls}
    lo, hi = float(np.log(0.6 / 0.4)), float(np.log(0.95 / 0.05))
    out = calibrate_trigger(samples, parts, threshold=0.5, floor=hi, class_floors=[lo, hi])
    t_bal = out["balanced_threshold"]
    assert out["class_thresholds"] == pytest.approx([max(t_bal, 0.6), max(t_bal, 0.95)])
    assert out["threshold"] == pytest.approx(0.95)  # the one floor, for a trigger without class offsets
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    assert out["class_offsets"] == pytest.approx([logit(0.5) - logit(t) for t in out["class_thresholds"]])

    m = build_model("tiny")
    t = _named(m, bias=0.0)  # names class 1 everywhere
    ev = torch.zeros(3, t.mean.numel())
    base = t.logit(ev)
    t.class_offsets = torch.tensor([-50.0, 2.0])
    assert torch.allclose(t.logit(ev), base + 2.0)
    assert t.named_class(ev).tolist() == [1, 1, 1]


def test_a_features_cache_is_reused_for_the_same_inputs_only(tmp_path, monkeypatch):
    """`trigger fit --features-cache`: the second fit with the same inputs encodes nothing and fits
    the same trigger; changed inputs (another seed) encode again."""
    import functools

    from soundflow import trigger_fit
    from soundflow.model import build_model

    monkeypatch.setattr(trigger_fit, "fit_trigger", functools.partial(trigger_fit.fit_trigger, steps=100))
    save_checkpoint(build_model("tiny"), {"special"}, tmp_path / "ck")
    man, cache = str(_bench_manifest(tmp_path)), str(tmp_path / "feats.pt")
    kw = dict(bench_manifest=man, windows=(2,), hidden=0, progress=False, features_cache=cache)
    first = fit_into_checkpoint(tmp_path / "ck", tmp_path / "a", **kw)
    encode = trigger_fit.examples_from_bench_streams
    monkeypatch.setattr(trigger_fit, "examples_from_bench_streams", lambda *a, **k: pytest.fail("encoded again"))
    again = fit_into_checkpoint(tmp_path / "ck", tmp_path / "b", **kw)
    assert again == first
    wa, wb = (load_checkpoint(tmp_path / d).trigger.out.weight for d in "ab")
    assert torch.equal(wa, wb)
    calls = []
    monkeypatch.setattr(trigger_fit, "examples_from_bench_streams", lambda *a, **k: calls.append(1) or encode(*a, **k))
    fit_into_checkpoint(tmp_path / "ck", tmp_path / "c", **{**kw, "seed": 1})
    assert calls


def test_the_floor_pools_the_folds_budget(monkeypatch):
    """Two folds of 0.6 h each: alone, each allows no reply (its threshold is above its highest
    logit); together (1.2 h) one reply is allowed, so the floor sits just above the second-highest
    event, never at the lone outlier of one fold."""
    from soundflow import trigger_fit

    outlier, second = 12.0, 7.0
    fold_logits = [np.r_[np.zeros(5400), outlier], np.r_[np.zeros(5400), second]]
    calls = iter(range(2))

    class Fake:
        holdoff = 4
        classes = ()

        def __init__(self):
            self.k = next(calls)

        def logit(self, v):
            return torch.from_numpy(fold_logits[self.k][: len(v)]).float()

    monkeypatch.setattr(trigger_fit, "fit_trigger", lambda *a, **k: (Fake(), {}))
    monkeypatch.setattr(trigger_fit, "pooled_stream", lambda s, r, w: s)
    folds = [[TriggerExample(torch.zeros(5401, 1), np.zeros(5401, dtype=np.int64), [], source="recorded")] for _ in range(2)]
    floor, per_fold, classes = trigger_fit.ambient_floor([], folds, (1,), 0, 0)
    assert classes is None and [f["max_logit"] for f in per_fold] == [outlier, second]
    assert all(f["threshold_logit"] > f["max_logit"] for f in per_fold)  # 0.6 h alone: no reply allowed
    assert second < floor < outlier  # 1.2 h together: the one allowed reply is the outlier
