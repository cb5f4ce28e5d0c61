import json
from pathlib import Path

import numpy as np
import pytest

from soundflow import tasks
from soundflow.data import StreamSample, shared_data_dir

DATA = shared_data_dir() or Path("/nonexistent")
pytestmark = pytest.mark.skipif(not (DATA / "events" / "catalog.jsonl").exists(), reason="shared data not present")


@pytest.fixture(scope="module")
def res():
    return tasks.Resources.from_config(
        {"events": str(DATA / "events/catalog.jsonl"), "noise": str(DATA / "noise/manifest.jsonl"),
         "music": str(DATA / "music/manifest.jsonl"), "speech": str(DATA / "speech/manifest.jsonl")},
        tts_families=("tone",), gate=None)


def _check(s: StreamSample, res):
    n = len(s.wave)
    chunk = s.chunk_ms * 16
    n_chunks = -(-n // chunk)
    assert 0 < n_chunks <= res.max_chunks
    ks = [t["chunk"] for t in s.timeline]
    assert ks == sorted(set(ks)) and all(0 <= k < n_chunks for k in ks)
    # an ambient tail follows the last event: no reply sits on the stream's last chunk, so "the
    # audio stopped" never predicts <response> (tasks.STREAM_TAIL_S)
    tail_chunks = int(tasks.STREAM_TAIL_S[0] * 1000) // s.chunk_ms
    assert all(k < n_chunks - tail_chunks + 1 for k in ks), (ks, n_chunks)
    assert all(isinstance(t["text"], str) and t["text"] for t in s.timeline)
    assert np.isfinite(s.wave).all() and np.abs(s.wave).max() <= 1.0
    StreamSample.from_json(json.loads(json.dumps(s.to_json())))  # JSON-safe


@pytest.mark.parametrize("name", tasks.FAMILIES)
def test_family_valid(name, res):
    for seed in range(4):
        s = tasks.TASKS[name](np.random.default_rng(seed), res)
        assert s.task == name
        _check(s, res)


@pytest.mark.parametrize("name", tasks.FAMILIES)
def test_family_fits_short_streams(name, res):
    """The shortest streams a shipped recipe asks for (default-format/-core: 25 chunks = 10 s,
    with their mix-in rates) still leave room for every family once the ambient tail is reserved: most
    draws succeed, and a draw that cannot fit says so with a ValueError (the build draws again)."""
    short = tasks.Resources(**{**res.__dict__, "max_chunks": 25,
                               "mixins": {"history": 0.0, "silence": 0.3, "proactive": 0.2}})
    ok = 0
    for seed in range(8):
        try:
            s = tasks.TASKS[name](np.random.default_rng(seed), short)
        except ValueError:
            continue
        _check(s, short)
        ok += 1
    assert ok >= 4, f"{name}: only {ok}/8 draws fit a 10 s stream"


def test_deterministic(res):
    a = tasks.task_chat(np.random.default_rng(7), res)
    b = tasks.task_chat(np.random.default_rng(7), res)
    assert a.timeline == b.timeline and np.array_equal(a.wave, b.wave)


def test_proactive_replies_only_at_respond_events(res):
    res0 = tasks.Resources(**{**res.__dict__, "mixins": {"history": 0, "silence": 0, "proactive": 0}})
    for seed in range(6):
        s = tasks.task_proactive(np.random.default_rng(seed), res0)
        clips = [e for e in s.events if e.get("provenance", {}).get("type") == "clip"]
        assert clips
        want = sorted(e["reply_chunk"] for e in clips if e["provenance"]["decision"] == "RESPOND")
        assert [t["chunk"] for t in s.timeline] == sorted(set(want))
        assert all("reply_chunk" not in e for e in clips if e["provenance"]["decision"] == "IGNORE")


def test_asr_replies_at_word_group_ends(res):
    res0 = tasks.Resources(**{**res.__dict__, "mixins": {"history": 0, "silence": 0, "proactive": 0}})
    s = tasks.task_asr(np.random.default_rng(1), res0)
    spoken = [e for e in s.events if e.get("provenance", {}).get("type") in ("tts", "speech")]
    assert [t["chunk"] for t in s.timeline] == [e["reply_chunk"] for e in spoken]
    for e in spoken:  # the reply chunk contains the end of that word group's audio
        end = e["offset_s"] + e["length_s"]
        assert e["reply_chunk"] * 0.4 < end <= (e["reply_chunk"] + 1) * 0.4 + 1e-6


def test_asr_recordings_include_lone_words_and_varied_instructions(res):
    """Recorded-speech ASR streams hold single words after long pauses as well as quick runs, and
    the instruction comes in several wordings (one fixed string was learnt as a password)."""
    res0 = tasks.Resources(**{**res.__dict__, "mixins": {"history": 0, "silence": 0, "proactive": 0}})
    counts, instructions, pauses = [], set(), []
    for seed in range(40):
        s = tasks.task_asr(np.random.default_rng(seed), res0)
        instructions.add(s.instruction)
        words = [e for e in s.events if e.get("provenance", {}).get("type") == "speech"]
        if words:
            counts.append(len(words))
            pauses += [e["seconds"] for e in (p.get("provenance", {}) for p in s.events) if e.get("type") == "pause"]
    assert counts and min(counts) <= 2 and max(counts) >= 4
    assert max(pauses) > 1.0
    assert len(instructions) >= 3 and instructions <= set(tasks.ASR_INSTRUCTIONS)


def test_mixins_all_on(res):
    res1 = tasks.Resources(**{**res.__dict__, "mixins": {"history": 1.0, "silence": 1.0, "proactive": 1.0}})
    seen = set()
    for seed in range(6):
        s = tasks.task_chat(np.random.default_rng(seed), res1)
        _check(s, res1)
        meta = next(e for e in s.events if e.get("type") == "meta")
        seen |= set(meta["mixins"])
        hist = [e for e in s.events if e.get("provenance", {}).get("mixin") == "history"]
        for h in hist:
            assert h["provenance"]["turns_back"] >= 3
    assert seen == {"history", "silence", "proactive"}


def test_agent_tool_calls_are_json(res):
    for seed in range(5):
        s = tasks.task_agent(np.random.default_rng(seed), res)
        for t in s.timeline:
            if t["text"].startswith("{"):
                assert "tool" in json.loads(t["text"])


def test_env_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("SF_X", str(tmp_path))
    assert tasks.expand_path("${SF_X:-nope}/a.jsonl", Path("/base")) == tmp_path / "a.jsonl"
    monkeypatch.delenv("SF_X")
    assert tasks.expand_path("${SF_X:-../d}/a.jsonl", Path("/base")) == Path("/base/../d/a.jsonl")


def test_proactive_curated_hierarchical(res):
    """curate: true → proactive streams through curate.curate_stream (OfflineCurator, hash embedder)."""
    res0 = tasks.Resources(**{**res.__dict__, "mixins": {"history": 0, "silence": 0, "proactive": 0},
                              "use_curate": True, "curate_embedder": "hash"})
    replies = 0
    for seed in range(5):
        s = tasks.task_proactive(np.random.default_rng(seed), res0)
        _check(s, res0)
        meta = next(e for e in s.events if e.get("type") == "meta")
        assert meta["curation"] == "curate_stream" and meta["scenario"]["title"]
        fg = [e for e in s.events if e.get("role") == "foreground" and e["provenance"].get("type") in ("clip", "synthetic")]
        assert fg
        want = sorted({e["reply_chunk"] for e in fg if e["provenance"]["decision"] == "RESPOND"})
        assert [t["chunk"] for t in s.timeline] == want  # replies only at RESPOND events
        assert all("reply_chunk" not in e for e in fg if e["provenance"]["decision"] != "RESPOND")
        replies += len(want)
    assert replies > 0
    a = tasks.task_proactive(np.random.default_rng(3), res0)
    b = tasks.task_proactive(np.random.default_rng(3), res0)
    assert a.timeline == b.timeline and np.array_equal(a.wave, b.wave)


def test_training_resources_never_hold_a_dev_recording_group(tmp_path):
    """A build for "train" draws no clip of a group the bench holds out as "dev" (and vice versa)."""
    import json

    from soundflow.catalog import labelled_catalog_rows
    from soundflow.tasks import Resources

    rows = [{"id": f"{c}-{g}-{k}", "audio": f"{c}/{g}-{k}.ogg", "caption": c, "class": c, "category": "A/B",
             "decision": d, "group": f"{c}:{g}"}
            for c, d in (("siren", "RESPOND"), ("rain", "IGNORE")) for g in range(6) for k in range(2)]
    cat = tmp_path / "catalog.jsonl"
    cat.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dev_groups = {r["group"] for r in labelled_catalog_rows(cat, "dev")}
    assert dev_groups
    train = Resources.from_config({"events": str(cat)}, tmp_path, tts_families=())
    assert train.events and not {r["group"] for r in train.events} & dev_groups
    dev = Resources.from_config({"events": str(cat)}, tmp_path, tts_families=(), split="dev")
    assert {r["group"] for r in dev.events} == dev_groups
    assert len(Resources.from_config({"events": str(cat)}, tmp_path, tts_families=(), split="all").events) == len(rows)


def test_some_streams_have_no_noise_bed(res):
    """About CLEAN_P of streams are composed without noise, so digital silence is seen in training."""
    beds = []
    for seed in range(40):
        s = tasks.task_asr(np.random.default_rng(seed), res)
        beds.append(any(e.get("type") == "noise" for e in s.events))
    assert 0 < beds.count(False) < 20


def test_reply_after_answers_a_long_sound_while_it_lasts(res):
    """`reply_after_s`: a RESPOND clip's reply lands d_i = U(a, b) s into it (or at its end when
    shorter), not after the whole clip; IGNORE clips stay unanswered."""
    res0 = tasks.Resources(**{**res.__dict__, "mixins": {"history": 0, "silence": 0, "proactive": 0},
                              "reply_after_s": (1.2, 1.6)})
    early = 0
    for seed in range(8):
        s = tasks.task_proactive(np.random.default_rng(seed), res0)
        _check(s, res0)
        for e in s.events:
            if e.get("provenance", {}).get("type") != "clip" or e["provenance"]["decision"] != "RESPOND":
                continue
            k, t0, n = e["reply_chunk"], e["offset_s"], e["length_s"]
            assert k * 0.4 <= t0 + min(n, 1.6) + 1e-6, e  # the chunk holding offset + d_i ...
            assert (k + 1) * 0.4 >= t0 + min(n, 1.2) - 1e-6, e  # ... with d_i >= 1.2 s (or the whole clip)
            early += e["length_s"] > 2.4 and (e["reply_chunk"] + 1) * 0.4 < e["offset_s"] + e["length_s"]
    assert early >= 3  # long sounds are answered before they end


def test_event_augment_changes_clips_and_records_effects(res):
    from soundflow.augment import Augment

    res0 = tasks.Resources(**{**res.__dict__, "mixins": {"history": 0, "silence": 0, "proactive": 0}})
    res1 = tasks.Resources(**{**res0.__dict__, "event_augment": Augment(speed=1.0, eq=1.0)})
    row = res0.by_decision("RESPOND")[0]
    dry, fx0 = tasks._event_clip(row, res0, np.random.default_rng(3))
    wet, fx1 = tasks._event_clip(row, res1, np.random.default_rng(3))
    assert fx0 == {} and fx1["augment"]["speed"] != 1.0 and fx1["augment"]["eq"][0] > 0
    assert abs(len(wet) - len(dry) / fx1["augment"]["speed"]) <= 1e-3 * len(dry) + 2  # resampled (speed rounded in JSON)
    s = tasks.task_proactive(np.random.default_rng(5), res1)
    _check(s, res1)
    clips = [e for e in s.events if e.get("provenance", {}).get("type") == "clip"]
    assert clips and all("augment" in e["provenance"] for e in clips)


def test_respond_sounds_carry_a_reply_window_from_their_first_chunk(res):
    res0 = tasks.Resources(**{**res.__dict__, "mixins": {"history": 0, "silence": 0, "proactive": 0}})
    n = 0
    for seed in range(6):
        s = tasks.task_proactive(np.random.default_rng(seed), res0)
        starts = {e["reply_chunk"]: int(round(e["offset_s"] * 16000)) // 6400 for e in s.events
                  if e.get("provenance", {}).get("type") == "clip" and "reply_chunk" in e}
        for t in s.timeline:
            assert t["from"] == starts[t["chunk"]] <= t["chunk"]
            n += 1
    assert n >= 3
