"""The trigger's second look (trigger.Verifier): asked only near the trigger's firing level, it
decides there; it is fitted so that no training ambience passes; it survives a checkpoint round
trip; and every engine mode feeds it the same log-mels as the reference decoder."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trigger import (  # the manifest: loud tones (RESPOND) and soft noise (IGNORE), 1.6 s each
    _bench_manifest,
    assert_engines_decide_as,
)

from soundflow import decoding
from soundflow.checkpoint import load_checkpoint, save_checkpoint
from soundflow.trigger import TriggerState, Verifier, logit_of, window_summary
from soundflow.trigger_fit import (
    bench_style_streams,
    confirmed_floor,
    fit_verifier,
    stream_windows,
    verify_into_checkpoint,
    verify_windows,
    window_summaries,
)


def _tiny_with_verifier(bias: float, v_bias: float, gate: float = 4.0, layers=None, chunks: int = 3):
    from soundflow.model import build_model

    m = build_model("tiny").eval()
    trig = m.add_trigger(windows=(1, 3))
    trig.verifier = Verifier(trig.d_summary, m.n_mels, chunks=chunks, gate=gate, layers=layers)
    with torch.no_grad():
        trig.out.bias.fill_(bias)  # the trigger's logit, whatever it hears
        trig.verifier.bias.fill_(v_bias)  # the verifier's, likewise
    return m, trig


def _heard(m, seconds: float, seed: int = 0) -> torch.Tensor:
    """The heard rows (summary, then log-mel) of `seconds` of noise, as the engine makes them."""
    from soundflow.data import split_chunks

    wave = (0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))).astype(np.float32)
    return m.encode_heard(m.features(torch.from_numpy(split_chunks(wave, 400))))[1]


def test_windows_pad_short_clips_in_front_and_end_at_the_last_sample():
    w = np.arange(3 * 6400, dtype=np.float32)
    win = verify_windows(w, 6400, chunks=6)
    assert win.shape == (1, 6, 6400) and (win[0, :3] == 0).all() and win[0, -1, -1] == w[-1]
    w = np.arange(int(8.2 * 6400), dtype=np.float32)  # 8.2 chunks: windows end at chunk 6, then at the end
    win = verify_windows(w, 6400, chunks=6, hop_chunks=3)
    assert win.shape[0] == 2 and win[0, -1, -1] == w[6 * 6400 - 1] and win[1, -1, -1] == w[-1]


def test_stream_windows_end_at_every_hop_padded_in_front_and_labelled_as_the_trigger():
    from soundflow.bench.common import BenchItem
    from soundflow.bench.proactive import Event, Stream

    def item(i, decision):
        return BenchItem(id=i, path=Path(i), description="", decision=decision, macro="m", meso="m")

    n = 6400
    wave = np.arange(10 * n, dtype=np.float32) + 1  # 10 chunks; a RESPOND clip over chunks 3-4, an IGNORE one 7-8
    ev = [Event(item("a", "RESPOND"), 3 * n, 5 * n), Event(item("b", "IGNORE"), 7 * n, 9 * n)]
    win, y = stream_windows(Stream("s", "multi", wave, ev), n, chunks=4, hop_chunks=2)
    assert win.shape == (5, 4, n)  # windows end at chunks 0, 2, 4, 6, 8
    assert (win[0, :3] == 0).all() and win[0, 3, 0] == 1 and win[2, -1, -1] == wave[5 * n - 1]
    assert y.tolist() == [0, 0, 1, 1, 0]  # the counted range: the clip's chunks and 2 after (3..6)


def test_a_verifier_fitted_on_streams_hears_what_came_before_the_sound(tmp_path):
    from soundflow.bench.common import load_manifest
    from soundflow.model import build_model

    m = build_model("tiny").eval()
    items = load_manifest(_bench_manifest(tmp_path, 12))
    streams = bench_style_streams(items)
    assert {s.tier for s in streams} == {"single", "multi"} and all(len(s.wave) > 0 for s in streams)
    amb = [(0.05 * np.random.default_rng(7).standard_normal(16000 * 8)).astype(np.float32)]
    v, stats = fit_verifier(m, items, amb, chunks=3, depth=0, confirm=1, streams=streams)
    want = sum(len(stream_windows(s, 6400, 3)[1]) for s in streams)
    assert stats["windows_from"] == "streams" and stats["clip_windows"] == want
    assert stats["train_respond_windows_passing"] >= stats["train_ignore_windows_passing"]


def test_the_verifier_decides_only_near_the_firing_level():
    """Far below the gate it is not asked; within it, it fires or vetoes; above the firing level
    its veto holds too."""
    for bias, v_bias, asked, fires in [(-10.0, 5.0, False, False),  # far under: not asked
                                       (-2.0, 5.0, True, True),  # within the gate, confirmed: fires
                                       (-2.0, -5.0, True, False),  # within the gate, vetoed
                                       (3.0, -5.0, True, False)]:  # above the level, vetoed
        m, trig = _tiny_with_verifier(bias, v_bias)
        trig.fire_logit = 0.0  # threshold 0.5
        st = TriggerState.of(trig)
        st.push(_heard(m, 1.2))
        p = st.score(trig, m.summarize)
        assert (st.verified is not None) == asked, (bias, v_bias)
        assert (p >= 0.5) == fires, (bias, v_bias, p)
        if not asked:
            assert p == pytest.approx(torch.sigmoid(torch.tensor(-10.0)).item(), abs=1e-4)


def test_a_verifier_that_must_confirm_fires_only_after_agreeing_that_often_in_a_row():
    m, trig = _tiny_with_verifier(-2.0, 5.0)  # within the gate, and the verifier agrees at every chunk
    trig.verifier.confirm, trig.fire_logit = 2, 0.0
    st = TriggerState.of(trig)
    heard = _heard(m, 2.0)
    fired = []
    for k in range(3):
        st.push(heard[k: k + 1])
        fired.append(st.score(trig, m.summarize) >= 0.5)
    assert fired == [False, True, True] and st.agreed == 3
    with torch.no_grad():
        trig.verifier.bias.fill_(-5.0)  # one veto starts the count again
    st.push(heard[3:4])
    assert st.score(trig, m.summarize) < 0.5 and st.agreed == 0
    with torch.no_grad():
        trig.verifier.bias.fill_(5.0)
    st.push(heard[4:5])
    assert st.score(trig, m.summarize) < 0.5 and st.agreed == 1
    assert trig.verifier.config()["confirm"] == 2
    assert "confirm" not in Verifier(trig.d_summary, m.n_mels).config()  # older checkpoints read as before
    with pytest.raises(ValueError, match="confirm"):
        Verifier(trig.d_summary, m.n_mels, confirm=0)


def test_the_confirmed_floor_is_the_highest_level_ambience_holds_that_long():
    lg = np.array([0.0, 3.0, 1.0, 2.0, 2.5, 0.0])
    assert [confirmed_floor([lg], k) for k in (1, 2, 3)] == [3.0, 2.0, 1.0]
    # two waves never form a run across their edge
    assert confirmed_floor([np.array([0.0, 4.0]), np.array([4.0, 0.0])], 2) == 0.0
    assert confirmed_floor([np.array([1.0])], 2) == -np.inf


def test_the_verifier_hears_the_last_chunks_joined_as_one_window():
    m, trig = _tiny_with_verifier(-1.0, 0.0)
    torch.manual_seed(0)
    with torch.no_grad():
        trig.verifier.weight.normal_()
    heard = _heard(m, 2.0)  # 5 chunks; the verifier keeps the last 3
    st = TriggerState.of(trig)
    st.push(heard)
    st.score(trig, m.summarize)
    mels = heard[-3:, trig.d_summary:].reshape(1, 3, m.n_mels, -1)
    want = float(trig.verifier.logit(window_summary(m.summarize, mels))[0])
    assert st.verified == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="encoder"):
        st.score(trig)


@pytest.mark.parametrize("depth,layers", [(0, None), (4, (1, 2))])  # 4 on a 2-layer encoder: all of its layers
def test_fit_sets_the_floor_above_all_training_ambience(tmp_path, depth, layers):
    from soundflow.bench.common import load_manifest
    from soundflow.model import build_model

    m = build_model("tiny").eval()
    amb = [(0.05 * np.random.default_rng(k).standard_normal(16000 * 8)).astype(np.float32) for k in range(2)]
    items = load_manifest(_bench_manifest(tmp_path, 12))
    v, stats = fit_verifier(m, items, amb, chunks=3, depth=depth, confirm=1)
    assert stats["clip_windows"] == 12 * 2  # 4 chunks a clip: windows end at chunk 3 and at the end
    assert stats["ambient_windows"] == 2 * 18  # 20 chunks: a window ending at every chunk from the third
    assert v.layers == layers and stats["layers"] == (None if layers is None else list(layers))
    amb_logits = torch.cat([v.logit(window_summaries(m, verify_windows(a, 6400, 3, hop_chunks=1), v.layers)) for a in amb])
    assert float(amb_logits.max()) == pytest.approx(v.floor, abs=1e-4)
    assert stats["train_respond_windows_passing"] >= stats["train_ignore_windows_passing"]
    floors = stats["floors_by_confirm"]  # what a verifier that must agree 2 or 3 times in a row would need
    assert floors["1"] == pytest.approx(v.floor) and floors["1"] >= floors["2"] >= floors["3"]
    v2, stats2 = fit_verifier(m, items, amb, chunks=3, depth=depth, confirm=2)
    assert v2.confirm == 2 and v2.floor == pytest.approx(floors["2"], abs=1e-4) and stats2["confirm"] == 2


def test_verify_into_checkpoint_round_trips_and_keeps_the_calibration(tmp_path):
    from soundflow.model import build_model

    m = build_model("tiny")
    m.add_trigger(windows=(1, 3))
    save_checkpoint(m, {"special"}, tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "model.json").read_text())
    meta["calibration"] = {"threshold": 0.3}
    (tmp_path / "ck" / "model.json").write_text(json.dumps(meta))
    stats = verify_into_checkpoint(tmp_path / "ck", tmp_path / "out", str(_bench_manifest(tmp_path, 12)), gate=3.0,
                                   depth=4, progress=False)
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["calibration"] == {"threshold": 0.3}
    assert meta["trigger"]["verifier"]["gate"] == 3.0 and meta["trigger"]["verify_fit"]["clip_windows"] == stats["clip_windows"]
    back = load_checkpoint(tmp_path / "out")
    v = back.trigger.verifier
    assert v is not None and v.floor == pytest.approx(stats["floor"]) and float(v.weight.abs().sum()) > 0
    assert v.layers == (1, 2) and meta["trigger"]["verifier"]["layers"] == [1, 2]
    assert back.trigger.fire_logit == pytest.approx(logit_of(0.3))
    back2 = load_checkpoint(tmp_path / "out")
    assert torch.equal(back2.trigger.verifier.weight, v.weight)


@pytest.mark.parametrize("layers", [None, (1, 2)])
def test_engine_modes_feed_the_verifier_as_the_reference_decoder(layers):
    from soundflow.audio import iter_chunks

    m, trig = _tiny_with_verifier(-1.0, 0.0, gate=10.0, layers=layers, chunks=5)  # asked at every chunk
    torch.manual_seed(1)
    with torch.no_grad():
        trig.out.weight.normal_(0, 0.3)
        trig.verifier.weight.normal_(0, 0.05)
    rng = np.random.default_rng(2)
    wave = (0.02 * rng.standard_normal(16000 * 4)).astype(np.float32)
    wave[16000:32000] *= 20
    thr = 0.5
    trig.fire_logit = logit_of(thr)
    ref = [e for e in decoding.decode_stream(m, list(iter_chunks(wave)), decoding.DecodeOptions(threshold=thr, max_reply_tokens=3))
           if e["type"] == "decision"]
    assert any(e["decision"] == "response" for e in ref) and any(e["decision"] == "silent" for e in ref)
    assert_engines_decide_as(m, wave, thr, ref)


def test_layer_summaries_pool_each_asked_layer_and_run_no_deeper():
    from soundflow.model import build_model
    from soundflow.trigger_fit import verify_layers

    m = build_model("tiny").eval()
    mel = m.features(torch.from_numpy((0.1 * np.random.default_rng(0).standard_normal((2, 6400 * 3))).astype(np.float32)))
    both = m.summarize(mel, (1, 2))
    d = 2 * m.encoder.d_out
    assert both.shape == (2, 2 * d)
    assert torch.allclose(both[:, :d], m.summarize(mel, (1,)), atol=1e-5)
    assert torch.allclose(both[:, d:], m.summarize(mel, (2,)), atol=1e-5)
    assert torch.allclose(m.summarize(mel, (2, 1)), torch.cat([both[:, d:], both[:, :d]], 1), atol=1e-5)
    assert verify_layers(m, 4) == (1, 2) and verify_layers(m, 1) == (1,) and verify_layers(m, 0) is None
    with pytest.raises(ValueError, match="has 2"):
        m.summarize(mel, (3,))


def test_a_streams_first_seconds_are_padded_with_silence_as_the_fit_pads_short_clips():
    """Fewer chunks heard than the window holds: the served window is the fit's zero-padded one."""
    from soundflow.data import split_chunks

    m, trig = _tiny_with_verifier(-1.0, 0.0, layers=(1, 2), chunks=5)
    torch.manual_seed(0)
    with torch.no_grad():
        trig.verifier.weight.normal_()
    wave = (0.1 * np.random.default_rng(3).standard_normal(6400 * 3)).astype(np.float32)
    st = TriggerState.of(trig)
    st.push(m.encode_heard(m.features(torch.from_numpy(split_chunks(wave, 400))))[1])
    st.score(trig, m.summarize)
    want = float(trig.verifier.logit(window_summaries(m, verify_windows(wave, 6400, 5), (1, 2)))[0])
    assert st.verified == pytest.approx(want, abs=1e-4)


def test_a_floor_from_ambient_folds_is_what_a_fit_without_each_fold_reads_on_it(tmp_path):
    """Two folds of different ambience: each is read by a regression fitted without it, and the
    floor is the highest level those held-out logits hold for `confirm` windows in a row; the
    verifier itself is fitted on all of it, and its own (in-sample) floors are kept for the record."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from soundflow.bench.common import load_manifest
    from soundflow.model import build_model
    from soundflow.trigger_fit import verifier_features

    m = build_model("tiny").eval()
    rng = np.random.default_rng(3)
    amb = [(a * rng.standard_normal(16000 * 8)).astype(np.float32) for a in (0.02, 0.3, 0.05, 0.2)]
    items = load_manifest(_bench_manifest(tmp_path, 12))
    feats = verifier_features(m, items, amb, chunks=3, depth=0, folds=[0, 1, 0, 1])
    v, stats = fit_verifier(m, None, (), confirm=2, features=feats)
    assert stats["floor_from"] == "held-out folds" and stats["ambient_folds"] == 2 and stats["ambient_windows"] == 4 * 18
    held = []
    for fold in (0, 1):
        X = np.concatenate([feats.X.numpy(), *[a.numpy() for a, g in zip(feats.ambient, feats.folds) if g != fold]])
        y = np.r_[feats.y, np.zeros(len(X) - len(feats.y), np.int64)]
        sc = StandardScaler().fit(X)
        lr = LogisticRegression(C=stats["C"], max_iter=5000, class_weight="balanced", random_state=0).fit(sc.transform(X), y)
        held += [lr.decision_function(sc.transform(a.numpy())) for a, g in zip(feats.ambient, feats.folds) if g == fold]
    assert v.floor == pytest.approx(confirmed_floor(held, 2), abs=1e-3)
    assert stats["floors_by_confirm"]["2"] == pytest.approx(v.floor)
    own = torch.cat([v.logit(a) for a in feats.ambient]).detach().numpy()
    assert stats["in_sample_floors_by_confirm"]["1"] == pytest.approx(float(own.max()), abs=1e-4)
    one, one_stats = fit_verifier(m, items, amb, chunks=3, depth=0, confirm=2)  # one fold: the floor is its own
    assert one_stats["floor_from"] == "in-sample" and one.floor == pytest.approx(one_stats["in_sample_floors_by_confirm"]["2"])


def test_a_budgeted_floor_allows_one_pass_an_hour_and_a_class_counts_only_its_own_windows():
    """`quiet_confirmed_floor`: the lowest floor at which runs of `confirm` windows pass at most the
    budget (one here); `class_confirmed_floors`: each class the same over the windows its namer
    comes near, never above the one floor; a class never near keeps the one floor."""
    from soundflow.trigger_fit import class_confirmed_floors, quiet_confirmed_floor

    lg = np.zeros(30)
    lg[[2, 3]], lg[[12, 13]], lg[[22, 23]] = 5.0, 3.0, 1.0
    assert quiet_confirmed_floor([lg], 2, hours=1.0) == pytest.approx(3.0)  # the 5-run passes, the 3-run not
    assert quiet_confirmed_floor([lg], 2, hours=0.5) == pytest.approx(5.0)  # no pass allowed: the highest run
    assert quiet_confirmed_floor([lg], 3, hours=1.0) == pytest.approx(0.0, abs=1e-5)  # no run of three above 0 (just above it)
    assert quiet_confirmed_floor([lg[:1]], 2, hours=1.0) == -np.inf
    probs = np.zeros((30, 3))
    probs[[2, 3], 0] = 0.9  # class 0 only near the 5-run
    probs[[12, 13, 22, 23], 1] = 0.2  # class 1 near the 3- and 1-runs
    one, per = class_confirmed_floors([lg], [probs], 2, hours=1.0)
    assert one == pytest.approx(3.0)
    assert per[0] == pytest.approx(3.0)  # its own would be the 5-run's: never above the one floor
    assert per[1] == pytest.approx(1.0)  # the 3-run is its one pass an hour
    assert per[2] == one  # no ambient window near it


def test_window_class_probs_are_the_namer_at_each_windows_last_chunk():
    from soundflow.data import split_chunks
    from soundflow.model import build_model
    from soundflow.trigger import pooled_stream
    from soundflow.trigger_fit import window_class_probs

    m = build_model("tiny").eval()
    trig = m.add_trigger(windows=(1, 3))
    with pytest.raises(ValueError, match="namer"):
        window_class_probs(m, np.zeros(6400 * 5, np.float32), chunks=3)
    trig.set_classes(["knock", "siren"], ["Someone knocked.", "A siren."])
    torch.manual_seed(0)
    with torch.no_grad():
        trig.namer.weight.normal_()
    wave = (0.1 * np.random.default_rng(1).standard_normal(int(6400 * 7.5))).astype(np.float32)
    got = window_class_probs(m, wave, chunks=3)
    assert got.shape == (len(verify_windows(wave, 6400, 3, hop_chunks=1)), 2)  # ends at chunks 2..6, then 7 (the part)
    with torch.no_grad():
        su = torch.cat([torch.cat([e.mean(1), e.amax(1)], -1) for e in
                        [m.encode_audio(m.features(torch.from_numpy(split_chunks(wave, 400))))]])
        want = torch.softmax(trig.namer(trig.standardise(pooled_stream(su, (), trig.windows))), -1).numpy()
    np.testing.assert_allclose(got, want[[2, 3, 4, 5, 6, 7]], atol=1e-5)


def test_a_verifier_with_class_floors_measures_each_named_sound_by_its_own(tmp_path):
    """Cross-fitted with the namer's probabilities over the ambient windows: the one floor and each
    class's are `class_confirmed_floors` of the held-out logits, and the served rule uses them;
    without two folds there is nothing held out to count."""
    from soundflow.bench.common import load_manifest
    from soundflow.model import build_model
    from soundflow.trigger_fit import class_confirmed_floors, verifier_features

    m = build_model("tiny").eval()
    rng = np.random.default_rng(3)
    amb = [(a * rng.standard_normal(16000 * 8)).astype(np.float32) for a in (0.02, 0.3, 0.05, 0.2)]
    items = load_manifest(_bench_manifest(tmp_path, 12))
    feats = verifier_features(m, items, amb, chunks=3, depth=0, folds=[0, 1, 0, 1])
    probs = [np.stack([np.linspace(0, 1, len(a)), np.linspace(1, 0, len(a))], 1) for a in feats.ambient]
    plain, plain_stats = fit_verifier(m, None, (), confirm=2, features=feats)
    v, stats = fit_verifier(m, None, (), confirm=2, features=feats, class_probs=probs)
    assert torch.equal(v.weight, plain.weight)  # the same regression; only its floors differ
    held = []  # as fit_verifier reads them: fold 0's waves, then fold 1's
    for fold in (0, 1):
        from soundflow.trigger_fit import _fit_logistic

        keep = [a.numpy() for a, g in zip(feats.ambient, feats.folds) if g != fold]
        pipe = _fit_logistic(np.concatenate([feats.X.numpy(), *keep]),
                             np.r_[feats.y, np.zeros(sum(map(len, keep)), np.int64)], stats["C"], 0)
        held += [pipe.logit(a.numpy()) for a, g in zip(feats.ambient, feats.folds) if g == fold]
    order = [0, 2, 1, 3]
    one, per = class_confirmed_floors(held, [probs[i] for i in order], 2, hours=len(torch.cat(feats.ambient)) * 0.4 / 3600)
    assert stats["floor_from"] == "held-out folds, per namer class"
    assert v.floor == pytest.approx(one, abs=1e-3) and v.class_floor == pytest.approx(per, abs=1e-3)
    assert v.rule_of(0) == (2, pytest.approx(per[0], abs=1e-3)) and v.rule_of(None) == (2, v.floor)
    assert stats["class_floors_by_confirm"]["2"] == pytest.approx(per, abs=1e-3)
    assert stats["held_out_strict_floors_by_confirm"] == plain_stats["floors_by_confirm"]
    with pytest.raises(ValueError, match="two folds"):
        fit_verifier(m, items, amb[:1], chunks=3, depth=0, confirm=2, class_probs=probs[:1])
    with pytest.raises(ValueError, match="one .* array per ambient wave"):
        fit_verifier(m, None, (), confirm=2, features=feats, class_probs=probs[:3])


def test_verify_with_two_folds_splits_each_source_by_file_and_caches_what_it_encoded(tmp_path, monkeypatch):
    """`trigger verify --ambient-folds 2 --features-cache F`: the noise library's training side
    and each extra manifest in two halves of their files; the second fit with the same inputs
    encodes nothing and writes the same verifier; other inputs encode again."""
    from test_trigger import _noise_library

    from soundflow import trigger_fit
    from soundflow.model import build_model

    m = build_model("tiny")
    m.add_trigger(windows=(1, 3))
    save_checkpoint(m, {"special"}, tmp_path / "ck")
    _noise_library(tmp_path)
    man, cache = str(_bench_manifest(tmp_path, 12)), str(tmp_path / "feats.pt")
    kw = dict(noise_manifest=str(tmp_path / "noise.jsonl"), ambient_manifests=[str(tmp_path / "noise.jsonl")],
              ambient_minutes=0.2, depth=0, chunks=3, ambient_folds=2, features_cache=cache, progress=False)
    first = verify_into_checkpoint(tmp_path / "ck", tmp_path / "a", man, **kw)
    assert first["floor_from"] == "held-out folds" and first["ambient_folds"] == 2
    assert first["ambient_windows"] == 4 * (int(0.1 * 60 / 0.4) - 2)  # 2 sources x 2 folds of 0.1 min
    encode = trigger_fit.verifier_features
    monkeypatch.setattr(trigger_fit, "verifier_features", lambda *a, **k: pytest.fail("encoded again"))
    assert verify_into_checkpoint(tmp_path / "ck", tmp_path / "b", man, **kw) == first
    wa, wb = (load_checkpoint(tmp_path / d).trigger.verifier.weight for d in "ab")
    assert torch.equal(wa, wb)
    with pytest.raises(ValueError, match="namer"):
        verify_into_checkpoint(tmp_path / "ck", tmp_path / "d", man, **kw, class_floors=True)
    # another checkpoint with the same encoder (a named trigger here), its inputs touched but unchanged:
    # the windows come from the cache; only the namer runs over the ambience, for the class floors
    named = load_checkpoint(tmp_path / "ck")
    _named(named, named.trigger, 1)
    save_checkpoint(named, {"special"}, tmp_path / "named")
    os.utime(tmp_path / "noise.jsonl")
    per = verify_into_checkpoint(tmp_path / "named", tmp_path / "e", man, **kw, class_floors=True)
    assert per["floor_from"] == "held-out folds, per namer class" and len(per["class_floors_by_confirm"]["2"]) == 2
    back = load_checkpoint(tmp_path / "e").trigger.verifier
    assert back.class_floor == pytest.approx(per["class_floors_by_confirm"]["2"]) and back.class_confirm == [2, 2]
    with pytest.raises(ValueError, match="two folds|ambient-folds 2"):
        verify_into_checkpoint(tmp_path / "named", tmp_path / "f", man, **{**kw, "ambient_folds": 1}, class_floors=True)
    calls = []
    monkeypatch.setattr(trigger_fit, "verifier_features", lambda *a, **k: calls.append(1) or encode(*a, **k))
    single = verify_into_checkpoint(tmp_path / "ck", tmp_path / "c", man, **{**kw, "ambient_folds": 1})
    assert calls and single["floor_from"] == "in-sample"
    with pytest.raises(ValueError, match="ambient_folds"):
        verify_into_checkpoint(tmp_path / "ck", tmp_path / "d", man, **{**kw, "ambient_folds": 3})


def _named(m, trig, k: int):
    """A two-class namer that always names class `k`, sure of it."""
    trig.set_classes(["knock", "siren"], ["Someone knocked.", "A siren."])
    with torch.no_grad():
        trig.namer.bias.copy_(torch.tensor([5.0, 0.0] if k == 0 else [0.0, 5.0]))


@pytest.mark.parametrize("k, fired", [(0, [True, True, True]), (1, [False, False, True])])
def test_a_short_sounds_class_is_asked_fewer_decisions_in_a_row(k, fired):
    """Class 0 (a knock: short) fires at the first agreeing look, class 1 (a siren) after three,
    each measured against its own floor."""
    m, trig = _tiny_with_verifier(-2.0, 0.5)  # within the gate; the verifier's logit 0.5 everywhere
    trig.fire_logit, trig.verifier.confirm = 0.0, 3
    _named(m, trig, k)
    trig.verifier.set_class_confirm([1, 3], [0.0, 0.0])
    st = TriggerState.of(trig)
    heard, got = _heard(m, 1.6), []
    for j in range(3):
        st.push(heard[j: j + 1])
        got.append(st.score(trig, m.summarize) >= 0.5)
    assert got == fired
    trig.verifier.set_class_confirm([1, 3], [1.0, 0.0])  # the knock's floor over the verifier's logit: vetoed
    st = TriggerState.of(trig)
    st.push(heard[:1])
    assert st.score(trig, m.summarize) < 0.5  # the knock vetoed under its floor; the siren not yet confirmed
    assert trig.verifier.rule_of(None) == (3, trig.verifier.floor)  # an unnamed sound: the verifier's own rule


def test_the_per_class_rule_round_trips_and_a_new_namer_drops_it(tmp_path):
    m, trig = _tiny_with_verifier(-2.0, 0.5)
    _named(m, trig, 0)
    trig.verifier.set_class_confirm([2, 3], [0.25, -0.5])
    save_checkpoint(m, {"special"}, tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "model.json").read_text())
    assert meta["trigger"]["verifier"]["class_confirm"] == [2, 3]
    back = load_checkpoint(tmp_path / "ck").trigger.verifier
    assert back.rule_of(0) == (2, 0.25) and back.rule_of(1) == (3, -0.5)
    trig.set_classes(["a", "b", "c"], ["A", "B", "C"])  # other classes: the per-class rule no longer applies
    assert trig.verifier.class_confirm is None and "class_confirm" not in trig.verifier.config()
    cfg = {**trig.config(), "verifier": {**trig.verifier.config(), "class_confirm": [2], "class_floor": [0.0]}}
    cfg.pop("d_summary")
    with pytest.raises(ValueError, match="1 verifier class rules for 3 classes"):
        type(trig)(trig.d_summary, **cfg)
    with pytest.raises(ValueError, match="together"):
        trig.verifier.set_class_confirm([1, 2], None)
    with pytest.raises(ValueError, match=">= 1"):
        trig.verifier.set_class_confirm([0, 2], [0.0, 0.0])


def test_sound_seconds_is_how_long_a_clip_stays_near_its_loudest():
    from soundflow.trigger_fit import sound_seconds

    rng = np.random.default_rng(0)
    wave = 0.001 * rng.standard_normal(3 * 16000).astype(np.float32)
    wave[16000:24000] += 0.5 * np.sin(2 * np.pi * 800 * np.arange(8000) / 16000).astype(np.float32)
    assert sound_seconds(wave) == pytest.approx(0.5, abs=0.11)
    assert sound_seconds(0.5 * np.ones(16000 * 2, np.float32)) == pytest.approx(2.0)


def test_confirm_into_checkpoint_asks_short_classes_fewer_at_their_fitted_floors(tmp_path):
    import soundfile as sf

    from soundflow.trigger_fit import confirm_into_checkpoint

    m, trig = _tiny_with_verifier(-2.0, 0.5)
    trig.verifier.confirm = 3
    _named(m, trig, 0)
    save_checkpoint(m, {"special"}, tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "model.json").read_text())
    meta["calibration"] = {"threshold": 0.3}
    (tmp_path / "ck" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no fitted second look"):
        confirm_into_checkpoint(tmp_path / "ck", tmp_path / "out", "unused.jsonl", 2)
    meta["trigger"]["verify_fit"] = {"floors_by_confirm": {"1": 1.5, "2": 1.0, "3": 0.5}}
    (tmp_path / "ck" / "model.json").write_text(json.dumps(meta))
    t = np.arange(16000 * 5) / 16000
    rows = []
    for i, (cls, s) in enumerate([("knock", 0.6), ("knock", 1.0), ("siren", 4.0), ("siren", 4.5)]):
        w = np.zeros(len(t), np.float32)
        w[: int(s * 16000)] = 0.5 * np.sin(2 * np.pi * 700 * t[: int(s * 16000)])
        sf.write(tmp_path / f"c{i}.wav", w, 16000)
        rows.append({"id": f"{cls}-{i}", "path": f"c{i}.wav", "decision": "RESPOND", "class": cls})
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = confirm_into_checkpoint(tmp_path / "ck", tmp_path / "out", str(tmp_path / "labels.jsonl"), 2)
    assert stats["short_classes"] == ["knock"] and stats["sound_seconds_median"]["siren"] == pytest.approx(4.25, abs=0.1)
    back = load_checkpoint(tmp_path / "out")
    assert back.trigger.verifier.rule_of(0) == (2, 1.0) and back.trigger.verifier.rule_of(1) == (3, 0.5)
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["calibration"] == {"threshold": 0.3} and meta["trigger"]["confirm_fit"]["short_confirm"] == 2
    assert torch.equal(back.trigger.verifier.weight, load_checkpoint(tmp_path / "ck").trigger.verifier.weight)
    with pytest.raises(ValueError, match="1 to 3 decisions"):  # more looks than its own: not a short-sound rule
        confirm_into_checkpoint(tmp_path / "ck", tmp_path / "out2", str(tmp_path / "labels.jsonl"), 4)
    meta["trigger"]["verify_fit"] = {"floors_by_confirm": {"2": 1.0, "3": 0.5}}
    (tmp_path / "ck" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no floor for 1"):
        confirm_into_checkpoint(tmp_path / "ck", tmp_path / "out2", str(tmp_path / "labels.jsonl"), 1)
    # a fit with a floor per class: each class its own, for its number of decisions
    meta["trigger"]["verify_fit"]["class_floors_by_confirm"] = {"2": [0.7, 0.9], "3": [0.2, 0.4]}
    (tmp_path / "ck" / "model.json").write_text(json.dumps(meta))
    stats = confirm_into_checkpoint(tmp_path / "ck", tmp_path / "out3", str(tmp_path / "labels.jsonl"), 2)
    back = load_checkpoint(tmp_path / "out3").trigger.verifier
    assert stats["floors"] == "per class" and back.rule_of(0) == (2, 0.7) and back.rule_of(1) == (3, 0.4)
    meta["trigger"]["verify_fit"]["class_floors_by_confirm"] = {"2": [0.7], "3": [0.2]}
    (tmp_path / "ck" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not for these 2 classes"):
        confirm_into_checkpoint(tmp_path / "ck", tmp_path / "out4", str(tmp_path / "labels.jsonl"), 2)


def _classed_manifest(tmp_path, n=16):
    """`_bench_manifest` with a class per clip: RESPOND tones "alarm" and "bell" in turn, IGNORE "hiss"."""
    path = _bench_manifest(tmp_path, n)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for i, r in enumerate(rows):
        r["class"] = "hiss" if r["decision"] == "IGNORE" else ("alarm", "bell")[(i // 2) % 2]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_window_names_follow_the_encoded_windows_clip_by_clip_and_stream_by_stream(tmp_path):
    """A class per window in `verifier_features`' order: a clip's windows its class; a stream's
    RESPOND-labelled windows their clip's class, windows in an IGNORE clip's counted range its
    class, the rest (lead-in, tail, gaps) background ""."""
    from soundflow.bench.common import load_manifest
    from soundflow.trigger_fit import window_names

    items = load_manifest(_classed_manifest(tmp_path))
    names = window_names(items, None, 6400, 3)
    assert len(names) == sum(len(verify_windows(np.zeros(int(1.6 * 16000), np.float32), 6400, 3)) for _ in items)
    streams = bench_style_streams(items)
    names = window_names(None, streams, 6400, 3)
    labels = np.concatenate([stream_windows(s, 6400, 3)[1] for s in streams])
    assert len(names) == len(labels)
    assert {n for n, y in zip(names, labels) if y} == {"alarm", "bell"}
    assert {n for n, y in zip(names, labels) if not y} == {"", "hiss"}


def test_a_verifier_over_classes_reads_any_respond_class_against_any_other_and_round_trips(tmp_path):
    """`--heads classes`: one regression head per class of each side (ambience as background "");
    its logit is logsumexp(RESPOND heads) - logsumexp(other heads), the same fitted, cross-fitted
    and served; the heads survive a checkpoint."""
    from scipy.special import logsumexp
    from test_trigger import _noise_library

    from soundflow.model import build_model

    m = build_model("tiny")
    m.add_trigger(windows=(1, 3))
    save_checkpoint(m, {"special"}, tmp_path / "ck")
    _noise_library(tmp_path)
    manifest = str(_classed_manifest(tmp_path))
    stats = verify_into_checkpoint(tmp_path / "ck", tmp_path / "out", manifest,
                                   ambient_manifests=[str(tmp_path / "noise.jsonl")], ambient_minutes=0.4,
                                   chunks=3, depth=0, confirm=1, windows_from="streams", ambient_folds=2,
                                   heads="classes", progress=False)
    assert stats["heads"] == {"negative": ["", "hiss"], "respond": ["alarm", "bell"]}
    assert stats["floor_from"] == "held-out folds"
    back = load_checkpoint(tmp_path / "out")
    v = back.trigger.verifier
    assert v.negative_heads == ("", "hiss") and v.respond_heads == ("alarm", "bell") and v.weight.shape[0] == 4
    x = torch.randn(5, v.d_summary)
    h = (((x - v.mean) / v.scale) @ v.weight.T + v.bias).numpy()
    assert np.allclose(v.logit(x).numpy(), logsumexp(h[:, 2:], 1) - logsumexp(h[:, :2], 1), atol=1e-5)
    with pytest.raises(ValueError, match="both negative_heads and respond_heads"):
        Verifier(8, 4, respond_heads=["alarm"])
    with pytest.raises(ValueError, match="heads is 'one' or 'classes'"):
        verify_into_checkpoint(tmp_path / "ck", tmp_path / "o2", manifest, heads="all",
                               progress=False)
