"""`soundflow bench ambient`: false replies per hour on a long speech-free stream."""

import json

import numpy as np
import pytest
import soundfile as sf

from soundflow.bench.ambient import ambient_stream, bench_ambient
from soundflow.bench.common import ChunkResult


def _noise_manifest(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for name, level, kind in [("quiet", 0.01, "ambient"), ("loud", 0.5, "event"), ("talk", 0.5, "speech")]:
        sf.write(tmp_path / f"{name}.wav", (level * rng.standard_normal(16000 * 40)).astype(np.float32), 16000)
        rows.append({"id": name, "audio": f"{name}.wav", "duration": 40.0, "kind": kind})
    (tmp_path / "noise.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "noise.jsonl"


def loudness_runner(wave, chunk_ms):
    """Answers whenever a chunk is loud: a stand-in model whose false replies are predictable."""
    n = int(16000 * chunk_ms / 1000)
    out = []
    for k in range(len(wave) // n):
        rms = float(np.sqrt(np.mean(wave[k * n:(k + 1) * n] ** 2)))
        out.append(ChunkResult(k, "response" if rms > 0.2 else "silent", p_response=min(rms, 1.0), latency_ms=1.0))
    return out


def test_stream_is_seeded_long_and_never_uses_speech_rows(tmp_path):
    m = _noise_manifest(tmp_path)
    y1, segs1 = ambient_stream(m, minutes=2, seed=3, split="all")
    y2, _ = ambient_stream(m, minutes=2, seed=3, split="all")
    assert len(y1) == 2 * 60 * 16000 and np.array_equal(y1, y2)
    assert {s.source for s in segs1} <= {"quiet", "loud"} and np.isfinite(y1).all()


def test_false_replies_are_counted_per_hour_and_located(tmp_path):
    m = _noise_manifest(tmp_path)
    r = bench_ambient(m, loudness_runner, minutes=3, seed=1, split="all", out=tmp_path / "rep")
    _, segs = ambient_stream(m, minutes=3, seed=1, split="all")
    loud_s = sum(s.end_s - s.start_s for s in segs if s.source == "loud")
    assert r["false_replies"] > 0 and loud_s > 0
    assert abs(r["false_replies_per_hour"] - r["false_replies"] / (3 / 60)) < 1e-6
    # every false reply lies over the loud recording, and roughly every loud chunk replied
    assert all("loud" in x["under"] for x in r["replies"])
    assert r["false_replies"] <= loud_s / 0.4 + 2
    assert (tmp_path / "rep" / "report.md").exists()


def _library(tmp_path, n=12):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        kind = "ambient" if i % 3 else "event"
        sf.write(tmp_path / f"n{i}.wav", (0.05 * rng.standard_normal(16000 * 3)).astype(np.float32), 16000)
        rows.append({"id": f"n{i}", "audio": f"n{i}.wav", "duration": 3.0, "kind": kind})
    (tmp_path / "lib.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "lib.jsonl", rows


def test_noise_library_split_is_disjoint_per_kind_and_the_bench_plays_the_held_out_side(tmp_path):
    from soundflow.catalog import noise_rows_of

    m, rows = _library(tmp_path)
    sides = {sp: {r["id"] for r in noise_rows_of(rows, sp)} for sp in ("dev", "train", "train-a", "train-b")}
    assert sides["dev"].isdisjoint(sides["train"]) and sides["dev"] | sides["train"] == {r["id"] for r in rows}
    assert sides["train-a"] | sides["train-b"] == sides["train"] and sides["train-a"].isdisjoint(sides["train-b"])
    kinds = {r["id"]: r["kind"] for r in rows}
    assert {kinds[i] for i in sides["dev"]} == {kinds[i] for i in sides["train"]} == {"ambient", "event"}
    assert noise_rows_of(rows, "dev") == noise_rows_of(list(rows), "dev")  # stable
    _, segs = ambient_stream(m, minutes=1, seed=0)  # the bench's default: the held-out side only
    assert {s.source for s in segs} <= sides["dev"]
    _, segs = ambient_stream(m, minutes=1, seed=0, split="train")
    assert {s.source for s in segs} <= sides["train"]


def _verified_trigger():
    """A tiny model whose trigger has a second look that passes about half of the chunks near its
    level, a wave of loud and quiet spells, and a threshold the first look reaches at 30 % of chunks."""
    import torch

    from soundflow.bench.common import trigger_replies
    from soundflow.model import build_model
    from soundflow.trigger import Verifier
    from soundflow.trigger_fit import verify_windows, window_summaries

    torch.manual_seed(0)
    m = build_model("tiny").eval()
    trig = m.add_trigger(windows=(1, 3))
    trig.verifier = Verifier(trig.d_summary, m.n_mels, chunks=3, gate=3.0)
    with torch.no_grad():
        for p in [trig.hidden.weight, trig.out.weight]:  # a first look that swings with the sound
            p.normal_(0.0, 1.0)
        trig.verifier.weight.normal_(0.0, 0.2)  # on summaries standardised over this wave: about half pass
    rng = np.random.default_rng(1)
    wave = np.concatenate([(a * rng.standard_normal(16000 * 2)).astype(np.float32) for a in (0.01, 0.4, 0.02, 0.3, 0.01) * 3])
    v, trig.verifier = trig.verifier, None
    su = window_summaries(m, verify_windows(wave, 6400, 3, hop_chunks=1))
    with torch.no_grad():
        v.mean.copy_(su.mean(0))
        v.scale.copy_(su.std(0) + 1e-3)
    probe = trigger_replies(m, wave, threshold=1.01)  # never replies: the first look's P at every chunk
    thr = float(np.quantile([d.p_response for d in probe], 0.7))
    trig.fire_logit, trig.verifier = float(np.log(thr / (1 - thr))), v
    return m, v, wave, thr


def test_the_trigger_alone_replies_where_the_served_model_does_when_the_lm_is_silent(tmp_path, monkeypatch):
    """`bench ambient --trigger-only` replays the sound trigger (second look included) as the FIFO
    engine serves it: with the LM's P(response) held at 0, the engine replies at the same chunks,
    and the bench reports those replies (no latency: nothing is decoded)."""
    import torch

    from soundflow.bench.common import EngineRunner, make_runner, trigger_replies

    m, v, wave, thr = _verified_trigger()
    monkeypatch.setattr(m, "control_probs", lambda h: torch.zeros(h.shape[:-1]))
    seen = {}
    for floor in (-np.inf, 0.0, np.inf):  # the second look passes everything near the level, some, nothing
        v.floor = floor
        alone = [d.chunk for d in trigger_replies(m, wave, threshold=thr) if d.decision == "<response>"]
        served = [r.chunk for r in EngineRunner(m, threshold=thr, max_reply_tokens=2)(wave, 400) if r.decision == "response"]
        assert served == alone, floor
        seen[floor] = alone
    assert len(seen[-np.inf]) >= 2 and seen[np.inf] == []  # the second look decides them
    v.floor = -np.inf
    path = tmp_path / "amb.wav"
    sf.write(path, wave, 16000)
    (tmp_path / "noise.jsonl").write_text(json.dumps({"id": "amb", "audio": "amb.wav", "kind": "ambient"}) + "\n")
    monkeypatch.setattr("soundflow.bench.ambient.make_runner",
                        lambda model, threshold=None, chunk_ms=400, trigger_only=False, **kw:
                        make_runner(m, threshold=thr, trigger_only=trigger_only, **kw))
    r = bench_ambient(tmp_path / "noise.jsonl", "tiny", minutes=0.5, split=None, trigger_only=True)
    assert r["runner"].endswith("(its sound trigger alone)") and r["latency_ms"] is None
    assert r["false_replies"] > 0 and all(x["p_response"] >= round(thr, 3) - 1e-3 for x in r["replies"])


def test_a_cached_replay_decides_exactly_as_an_uncached_one_without_the_encoder(tmp_path, monkeypatch):
    """`--trigger-cache`: the second replay of a stream reads the encoder's work back (no encoder
    call at all) and gives the same P and decisions to the last bit; a refitted second look on the
    same encoder decides as it would uncached; another wave, or another encoder, gets its own entry."""
    import torch

    from soundflow.bench.common import EncodingCache, make_runner, trigger_replies

    m, v, wave, thr = _verified_trigger()
    v.floor = 0.0
    plain = trigger_replies(m, wave, threshold=thr)
    cache = EncodingCache(tmp_path / "cache", m)
    cold = trigger_replies(m, wave, threshold=thr, cache=cache)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    entry = EncodingCache.load(next((tmp_path / "cache").glob("*.pt")))
    assert entry["heard"].shape[0] == len(plain) and len(entry["windows"]) > 0  # the second look was asked

    def no_encoder(*a, **k):
        raise AssertionError("the encoder ran on a cached stream")

    monkeypatch.setattr(m, "encode_heard", no_encoder)
    monkeypatch.setattr(m, "summarize", no_encoder)
    warm = trigger_replies(m, wave, threshold=thr, cache=cache)
    for a, b, c in zip(plain, cold, warm):
        assert (a.chunk, a.decision, a.p_response) == (b.chunk, b.decision, b.p_response) == (c.chunk, c.decision, c.p_response)
    assert sum(d.decision == "<response>" for d in plain) >= 1
    monkeypatch.undo()
    entry_path = next((tmp_path / "cache").glob("*.pt"))
    entry_path.write_bytes(entry_path.read_bytes()[:100])  # cut short: read as a miss, encoded and written again
    assert [d.p_response for d in trigger_replies(m, wave, threshold=thr, cache=cache)] == [d.p_response for d in warm]
    assert EncodingCache.load(entry_path)["heard"] is not None
    with torch.no_grad():  # a refitted second look: windows met before are read back, new ones encoded
        v.weight.mul_(-1.0)
    assert [d.p_response for d in trigger_replies(m, wave, threshold=thr, cache=cache)] == \
        [d.p_response for d in trigger_replies(m, wave, threshold=thr)] != [d.p_response for d in warm]
    with pytest.raises(ValueError, match="--trigger-only"):
        make_runner(m, threshold=thr, trigger_cache=tmp_path / "cache")
    assert cache.path(wave[:-1], 400, True) != cache.path(wave, 400, True) != cache.path(wave, 200, True)
    with torch.no_grad():
        next(m.encoder.parameters()).add_(1.0)
    assert EncodingCache(tmp_path / "cache", m).path(wave, 400, True) != cache.path(wave, 400, True)


def test_the_proactive_bench_with_the_trigger_alone_decides_as_the_served_model_with_a_silent_lm(tmp_path, monkeypatch):
    """`bench proactive --trigger-only` (and `bench stability`): the same per-clip decisions as the
    whole model when the LM never calls for a reply; a baseline or a model without a trigger is refused."""
    import torch
    from test_trigger import _bench_manifest

    from soundflow.bench.common import EngineRunner, make_runner
    from soundflow.bench.proactive import bench_proactive
    from soundflow.model import build_model

    torch.manual_seed(0)
    m = build_model("tiny").eval()
    with pytest.raises(ValueError, match="sound trigger"):
        make_runner(m, trigger_only=True)
    with pytest.raises(ValueError, match="not a baseline"):
        make_runner(lambda wave, chunk_ms: [], trigger_only=True)
    trig = m.add_trigger(windows=(1, 3))
    with torch.no_grad():
        trig.hidden.weight.normal_(0.0, 1.0)
        trig.out.weight.normal_(0.0, 1.0)
    monkeypatch.setattr(m, "control_probs", lambda h: torch.zeros(h.shape[:-1]))
    manifest = _bench_manifest(tmp_path, 8)
    alone = make_runner(m, threshold=0.5, trigger_only=True)
    p = [d.p_response for d in alone(np.random.default_rng(0).standard_normal(16000 * 4).astype(np.float32) * 0.3)]
    thr = float(np.quantile(p, 0.5))
    runs = [bench_proactive(str(manifest), r, tier="single", progress=False)
            for r in (make_runner(m, threshold=thr, trigger_only=True), EngineRunner(m, threshold=thr, max_reply_tokens=2))]
    decisions = [[(e["id"], e["decision"], e["chunk"]) for e in r["events"]] for r in runs]
    assert decisions[0] == decisions[1]
    assert {d for _, d, _ in decisions[0]} == {"RESPOND", "IGNORE"}  # it replied to some clips, not to all
