"""Proactive-Sound-Bench harness: manifests, streams, scoring rule, metrics, offline mode, baselines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundflow.bench.baselines import respond_runner, silent_runner
from soundflow.bench.common import (
    ChunkResult,
    categories_from_path,
    colored_noise,
    load_manifest,
    load_predictions,
    parse_prediction,
)
from soundflow.bench.proactive import (
    BenchItem,
    Event,
    EventResult,
    Stream,
    StreamConfig,
    bench_proactive,
    build_multi_streams,
    build_single_streams,
    catalog_to_bench_manifest,
    compute_metrics,
    counted_chunk_range,
    group_multi,
    score_predictions,
    score_stream,
    split_by_group,
)
from soundflow.bench.report import print_json_last

FIXTURE = Path(__file__).parent / "fixtures" / "psb"
SR = 16_000
C = 6400  # samples per 400 ms chunk


def _tone(seconds: float, freq: float, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    """The fixture manifest copied into tmp_path with tiny synthetic clips at the public paths.

    One clip is stored as FLAC at 8 kHz although the manifest says .wav (format fallback + resampling),
    and c3000001 is a corrupt file that must be reported and skipped.
    """
    for name in ("labels.jsonl", "reference_replies.jsonl"):
        shutil.copy(FIXTURE / name, tmp_path / name)
    for i, line in enumerate((tmp_path / "labels.jsonl").read_text().splitlines()):
        row = json.loads(line)
        p = tmp_path / row["path"]
        p.parent.mkdir(parents=True, exist_ok=True)
        if row["id"] == "c3000001":
            p.write_bytes(b"RIFF not really a wav")
        elif row["id"] == "a1000002":
            sf.write(p.with_suffix(".flac"), _tone(0.9, 300, 8000), 8000)
        else:
            sf.write(p, _tone(0.5 + 0.25 * i, 200 + 100 * i), SR)
    return tmp_path / "labels.jsonl"


# ---------------------------------------------------------------- manifest


def test_categories_from_public_path():
    assert categories_from_path("./proactive-sound-effect/Traffic/Large Traffic/IGNORE/x.wav") == ("Traffic", "Large Traffic")
    assert categories_from_path("x.wav") == ("Unknown", "Unknown")


def test_load_manifest_public_layout(bench: Path):
    items = load_manifest(bench)
    assert [it.id for it in items][:2] == ["a1000001", "a1000002"]
    a = items[0]
    assert (a.macro, a.meso, a.decision) == ("Human Sound Signals", "Physiological states", "RESPOND")
    assert a.path == (bench.parent / "proactive-sound-effect/Human Sound Signals/Physiological states/RESPOND/a1000001.wav").resolve()
    assert a.standard_answers and "coughing" in a.standard_answers[0]
    assert items[1].path.suffix == ".flac"  # converted audio found under the same stem
    assert not items[1].standard_answers


def test_public_labels_load():
    from soundflow.data import shared_data_dir

    labels = (shared_data_dir() or Path("/nonexistent")).parent / "proactive-sound-bench" / "labels.jsonl"
    if not labels.exists():
        pytest.skip("public labels not present")
    items = load_manifest(labels)
    assert len(items) == 644
    assert len({it.macro for it in items}) == 6 and len({it.category for it in items}) == 17
    assert sum(it.decision == "RESPOND" for it in items) == 267
    assert sum(bool(it.standard_answers) for it in items) == 267


# ---------------------------------------------------------------- scoring rule


def test_counted_chunk_range_hand_values():
    # event [1.2, 2.0) s: chunk 3 = [1.2, 1.6) is the first to hear it, chunk 4 the last; +2 window
    assert counted_chunk_range(int(1.2 * SR), int(2.0 * SR), C, 2) == (3, 6)
    # event [1.3, 2.1) s: chunk 3 still first; chunk 5 = [2.0, 2.4) last overlapping
    assert counted_chunk_range(int(1.3 * SR), int(2.1 * SR), C, 2) == (3, 7)
    assert counted_chunk_range(int(1.3 * SR), int(2.1 * SR), C, 0) == (3, 5)


def _stream_with_event(start_s: float, end_s: float, decision: str = "RESPOND", total_s: float = 6.0) -> Stream:
    it = BenchItem("e1", Path("x.wav"), "", decision, "Human Sound Signals", "Physiological states")
    return Stream("s", "single", np.zeros(int(total_s * SR), np.float32), [Event(it, int(start_s * SR), int(end_s * SR))])


def _responses(*chunks: int, n: int = 15) -> list[ChunkResult]:
    return [ChunkResult(k, "response" if k in chunks else "silent", 1.0 if k in chunks else 0.0, "help" if k in chunks else "") for k in range(n)]


@pytest.mark.parametrize(
    "chunk,counted",
    [(2, False), (3, True), (4, True), (6, True), (7, False)],  # 7 = one chunk after the window
)
def test_response_window(chunk: int, counted: bool):
    cfg = StreamConfig(window_chunks=2)
    (r,) = score_stream(_stream_with_event(1.2, 2.0), _responses(chunk), cfg)
    assert (r.decision == "RESPOND") is counted
    if counted:
        assert r.chunk == chunk
        assert r.time_to_trigger == pytest.approx((chunk + 1) * 0.4 - 1.2)
        assert r.reply == "help"


def test_first_counted_response_wins():
    (r,) = score_stream(_stream_with_event(1.2, 2.0), _responses(1, 5, 6), StreamConfig())
    assert r.chunk == 5 and r.time_to_trigger == pytest.approx(1.2)


def test_response_token_spellings_and_missing_chunks():
    res = [ChunkResult(4, "<response>", 0.9, "x")]  # a runner may skip silent chunks entirely
    (r,) = score_stream(_stream_with_event(1.2, 2.0), res, StreamConfig())
    assert r.decision == "RESPOND"


# ---------------------------------------------------------------- metrics


def _rec(i, gold, dec, macro="A", meso="a", ttt=None):
    return EventResult(str(i), "single", macro, meso, gold, dec, time_to_trigger=ttt)


def test_compute_metrics_hand_values():
    recs = [
        _rec(1, "RESPOND", "RESPOND", "A", "a1", 0.4),
        _rec(2, "RESPOND", "RESPOND", "A", "a2", 1.2),
        _rec(3, "RESPOND", "IGNORE", "B", "b1"),
        _rec(4, "IGNORE", "IGNORE", "A", "a1"),
        _rec(5, "IGNORE", "RESPOND", "B", "b1", 0.8),  # false positive: its TTT is not counted
        _rec(6, "IGNORE", "IGNORE", "B", "b1"),
        _rec(7, "IGNORE", "IGNORE", "B", "b2"),
    ]
    m = compute_metrics(recs)
    assert m["n"] == 7 and m["correct"] == 5
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["respond_recall"] == pytest.approx(2 / 3)
    assert m["false_positive_rate"] == pytest.approx(1 / 4)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert m["confusion"] == {"tp": 2, "fn": 1, "fp": 1, "tn": 3}
    assert m["per_macro"]["A"] == {"n": 3, "correct": 3, "accuracy": 1.0}
    assert m["per_macro"]["B"]["accuracy"] == pytest.approx(2 / 4)
    assert m["per_meso"]["B/b1"]["accuracy"] == pytest.approx(1 / 3)  # 3 and 5 wrong, 6 right
    assert m["time_to_trigger_s"] == {"n": 2, "mean": pytest.approx(0.8), "median": pytest.approx(0.8)}


def test_semantic_accuracy_rule():
    recs = [_rec(1, "RESPOND", "RESPOND"), _rec(2, "RESPOND", "RESPOND"), _rec(3, "IGNORE", "IGNORE"), _rec(4, "RESPOND", "IGNORE")]
    recs[0].semantic, recs[1].semantic = 0.7, 0.5  # the public rule is strictly greater than the threshold
    s = compute_metrics(recs, semantic_threshold=0.5)["semantic"]
    assert s["n_scored"] == 2 and s["reply_match_rate"] == 0.5
    assert s["semantic_accuracy"] == pytest.approx(2 / 4)


# ---------------------------------------------------------------- streams


def test_single_streams_event_times(bench: Path):
    items = load_manifest(bench)
    cfg = StreamConfig()
    streams = build_single_streams(items, cfg, seed=3)
    assert len(streams) == 7  # the corrupt clip is skipped
    for s in streams:
        (ev,) = s.events
        assert ev.start == pytest.approx(1.2)
        clip = sf.read(ev.item.path)[0] if ev.item.path.suffix == ".wav" else None
        if clip is not None:
            assert ev.end - ev.start == pytest.approx(len(clip) / SR)
            bed = s.wave[ev.start_sample : ev.end_sample] - clip
            assert 20 * np.log10(np.sqrt(np.mean(bed**2))) == pytest.approx(-40, abs=1.5)
        assert len(s.wave) == ev.end_sample + cfg.min_gap_samples
        lead = s.wave[: ev.start_sample]
        assert 20 * np.log10(np.sqrt(np.mean(lead**2))) == pytest.approx(-40, abs=1.5)
    # seeded: same seed, same waveform
    again = build_single_streams(items, cfg, seed=3)
    assert np.array_equal(streams[0].wave, again[0].wave)


def test_multi_streams_group_same_macro(bench: Path):
    items = load_manifest(bench)
    cfg = StreamConfig()
    groups = group_multi(items, cfg, seed=0)
    assert sorted(len(g) for g in groups) == [1, 3, 4]
    for g in groups:
        assert len({it.macro for it in g}) == 1
        if len(g) > 1:
            assert {it.decision for it in g} == {"RESPOND", "IGNORE"}  # distractors in every stream
    streams = build_multi_streams(items, cfg, seed=0)
    assert len(streams) == 2  # the Daily Living group holds only the corrupt clip
    seen = [ev.item.id for s in streams for ev in s.events]
    assert sorted(seen) == sorted(it.id for it in items if it.id != "c3000001")
    for s in streams:
        assert s.events[0].start == pytest.approx(1.2)
        for a, b in zip(s.events, s.events[1:]):
            gap = b.start_sample - a.end_sample
            assert cfg.min_gap_samples <= gap <= int(cfg.gap_s[1] * SR)
            # no event's scoring window reaches the next event
            assert counted_chunk_range(a.start_sample, a.end_sample, C, 2)[1] < counted_chunk_range(b.start_sample, b.end_sample, C, 2)[0]
        assert len(s.wave) == s.events[-1].end_sample + cfg.min_gap_samples


def test_noise_manifest_ambient(tmp_path: Path, bench: Path):
    sf.write(tmp_path / "amb.wav", (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32), SR)
    (tmp_path / "noise.jsonl").write_text(json.dumps({"id": "n", "audio": "amb.wav", "kind": "ambient"}) + "\n")
    cfg = StreamConfig(noise_manifest=str(tmp_path / "noise.jsonl"), ambient_dbfs=-30)
    s = build_single_streams(load_manifest(bench)[:1], cfg)[0]
    lead = s.wave[: s.events[0].start_sample]
    assert 20 * np.log10(np.sqrt(np.mean(lead**2))) == pytest.approx(-30, abs=0.5)


def test_colored_noise_level_and_seed():
    a = colored_noise(SR, np.random.default_rng(1), "brown", -40)
    b = colored_noise(SR, np.random.default_rng(1), "brown", -40)
    assert np.array_equal(a, b) and 20 * np.log10(np.sqrt(np.mean(a**2))) == pytest.approx(-40, abs=0.01)


# ---------------------------------------------------------------- baselines through the harness


def test_silent_baseline_full_harness(bench: Path, tmp_path: Path):
    r = bench_proactive(bench, silent_runner, tier="both", progress=False)
    for t in ("single", "multi"):
        m = r["tiers"][t]
        assert m["n"] == 7 and m["respond_recall"] == 0 and m["false_positive_rate"] == 0
        assert m["accuracy"] == pytest.approx(4 / 7) and m["balanced_accuracy"] == 0.5
    assert [s["id"] for s in r["skipped"]] == ["c3000001"]
    assert r["average_accuracy"] == pytest.approx(4 / 7)


def test_respond_baseline_full_harness(bench: Path, tmp_path: Path, capsys):
    out = tmp_path / "report"
    r = bench_proactive(bench, respond_runner, tier="both", out=out, json=True, progress=False)
    for t in ("single", "multi"):
        m = r["tiers"][t]
        assert m["respond_recall"] == 1 and m["false_positive_rate"] == 1 and m["accuracy"] == pytest.approx(3 / 7)
    # single tier: every event starts at 1.2 s = the start of chunk 3, which ends at 1.6 s
    assert r["tiers"]["single"]["time_to_trigger_s"]["mean"] == pytest.approx(0.4)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    parsed = json.loads(last)
    assert parsed["tiers"]["single"]["respond_recall"] == 1 and "events" not in parsed
    for f in ("report.md", "metrics.json", "events.jsonl", "per_macro.png", "per_meso.png", "confusion_single.png", "confusion_multi.png"):
        assert (out / f).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "| single | 7 |" in md and "Human Sound Signals" in md and "c3000001" in md


def test_print_json_last(capsys):
    print("progress noise")
    print_json_last({"a": 1, "b": [0.5, None]})
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"a": 1, "b": [0.5, None]}


# ---------------------------------------------------------------- offline mode


def test_parse_prediction_variants():
    assert parse_prediction("<Decision>RESPOND</Decision><Reply>Call 911.</Reply>").decision == "RESPOND"
    p = parse_prediction("  < decision >  respond \n</ DECISION >\n<reply> Sit down. </reply>")
    assert (p.decision, p.reply) == ("RESPOND", "Sit down.")
    assert parse_prediction("<Decision>Ignore</Decision>").decision == "IGNORE"
    assert parse_prediction("RESPOND: call for help").decision == ""  # no tags: unparsable
    assert parse_prediction("<Decision>RESPOND").decision == ""  # unclosed
    assert parse_prediction("<Decision>maybe</Decision>").decision == ""


def test_offline_scoring_reproduces_public_accuracy(bench: Path, tmp_path: Path):
    preds = [
        {"id": "a1000001", "prediction": "<Decision>RESPOND</Decision><Reply>Sip water.</Reply>"},  # right
        {"id": "a1000002", "prediction": "<decision> ignore </decision><reply>No Reply</reply>"},  # right
        {"id": "a1000003", "prediction": "<Decision>IGNORE</Decision><Reply>No Reply</Reply>"},  # wrong
        {"id": "a1000004", "prediction": "IGNORE"},  # unparsable
        {"id": "b2000001", "_raw_reply": "<Decision>RESPOND</Decision><Reply>Leave now.</Reply>"},  # right (public key)
        {"id": "b2000002", "prediction": "<Decision>RESPOND</Decision><Reply>Hmm.</Reply>"},  # wrong (FP)
        {"id": "b2000003", "prediction": "<Decision>IGNORE</Decision>"},  # right
        # c3000001 missing
    ]
    path = tmp_path / "pred.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in preds))
    m = score_predictions(bench, path)["tiers"]["offline"]
    assert m["n"] == 8 and m["correct"] == 4
    assert m["accuracy"] == pytest.approx(4 / 8)
    # public scorer: rows without a parsable decision are dropped → 4 right of 6 valid
    assert m["accuracy_public"] == pytest.approx(4 / 6) and m["n_valid"] == 6
    assert m["unparsable_ids"] == ["a1000004"] and m["missing_ids"] == ["c3000001"]
    assert m["respond_recall"] == pytest.approx(2 / 3)
    assert m["false_positive_rate"] == pytest.approx(1 / 5)
    assert m["per_macro"]["Equipment"]["accuracy"] == pytest.approx(2 / 3)

    # the same predictions as a folder of <id>.txt and as an id<TAB>text file
    d = tmp_path / "txt"
    d.mkdir()
    for p in preds:
        (d / f"{p['id']}.txt").write_text(p.get("prediction") or p["_raw_reply"])
    assert score_predictions(bench, d)["tiers"]["offline"]["correct"] == 4
    tsv = tmp_path / "pred.tsv"
    tsv.write_text("".join(f"{p['id']}\t{p.get('prediction') or p['_raw_reply']}\n" for p in preds))
    assert load_predictions(tsv)["b2000003"] == "<Decision>IGNORE</Decision>"
    assert score_predictions(bench, tsv)["tiers"]["offline"]["accuracy_public"] == pytest.approx(4 / 6)


# ---------------------------------------------------------------- catalog → public layout


def test_catalog_to_bench_manifest(tmp_path: Path):
    src = tmp_path / "cat"
    (src / "cough").mkdir(parents=True)
    rows = []
    for i in range(10):
        sf.write(src / "cough" / f"{i}.ogg", _tone(0.5, 300 + 10 * i), SR)
        rows.append({"id": f"cough-{i}", "audio": f"cough/{i}.ogg", "duration": 0.5, "caption": "cough",
                     "class": "cough", "category": "Human Sound Signals/Physiological states",
                     "decision": "RESPOND" if i % 2 else "IGNORE", "group": f"rec{i // 2}"})
    (src / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sp = split_by_group(rows, 0.2)
    assert set(sp.values()) == {"train", "dev"}
    dev = load_manifest(catalog_to_bench_manifest(src / "catalog.jsonl", tmp_path / "dev", split="dev"))
    train = load_manifest(catalog_to_bench_manifest(src / "catalog.jsonl", tmp_path / "train", split="train"))
    assert len(dev) + len(train) == 10 and dev
    grp = {r["id"]: r["group"] for r in rows}
    assert not {grp[it.id] for it in dev} & {grp[it.id] for it in train}
    it = dev[0]
    assert it.macro == "Human Sound Signals" and it.meso == "Physiological states"
    assert it.rel_path.startswith("./proactive-sound-effect/Human Sound Signals/Physiological states/")
    assert it.path.exists()
    r = bench_proactive(dev, silent_runner, progress=False)
    assert r["tiers"]["single"]["n"] == len(dev) and not r["skipped"]


# ---------------------------------------------------------------- real weights (slow)


@pytest.mark.slow
def test_semantic_matching_real_model(bench: Path):
    from soundflow.bench.proactive import SemanticMatcher

    m = SemanticMatcher()
    answers = ["The smoke alarm is sounding. Check for fire or smoke and leave the building."]
    assert m.score("The fire alarm is going off, check for smoke and get out of the building.", answers) > 0.5
    assert m.score("Nice weather for a picnic today.", answers) < 0.5

    def runner(wave, chunk_ms):
        n = -(-len(wave) // (16 * chunk_ms))
        return [ChunkResult(k, "response", 1.0, "Smoke alarm! Check for fire and leave the building.") for k in range(n)]

    r = bench_proactive(bench, runner, semantic=True, progress=False)
    s = r["tiers"]["single"]["semantic"]
    sims = {e["id"]: e["semantic"] for e in r["events"] if e["semantic"] is not None}
    assert set(sims) == {"a1000001", "a1000003", "b2000001"} and s["n_scored"] == 3
    assert sims["b2000001"] > 0.5 and sims["a1000001"] < 0.5  # smoke-alarm reply vs the cough answers
    n_match = sum(v > 0.5 for v in sims.values())
    assert s["reply_match_rate"] == pytest.approx(n_match / 3)
    assert s["semantic_accuracy"] == pytest.approx(n_match / 7)  # every IGNORE was responded to: wrong


@pytest.mark.slow
def test_classifier_baseline_tiny(bench: Path):
    from soundflow.bench.baselines import WhisperEmbedder, train_classifier

    emb = WhisperEmbedder()
    feats = emb([_tone(2.0, 440), _tone(0.8, 440)])
    assert feats.shape == (2, 512) and np.isfinite(feats).all()
    items = [it for it in load_manifest(bench) if it.id != "c3000001"]
    runner = train_classifier(items, embedder=emb, progress=False)
    r = bench_proactive(items, runner, tier="both", progress=False)
    assert r["tiers"]["single"]["n"] == 7 and r["tiers"]["multi"]["n"] == 7
