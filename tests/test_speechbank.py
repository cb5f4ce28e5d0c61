"""Speech bank (speechbank.py): speech rendered and gated ahead, then drawn by builds.

Fast: the `tone` stand-in voice and a gate whose verdict is a hash of the audio (about 1 in 2
renderings fail, so re-renders and failed entries are exercised); no Whisper, no TTS assets."""

import json
import zlib

import numpy as np
import pytest
import test_build
import yaml
from test_build import DATA, _digest

from soundflow import asr_gate, build, speechbank, tts
from soundflow.data import read_shards

pytestmark = pytest.mark.skipif(not (DATA / "events" / "catalog.jsonl").exists(), reason="shared data not present")


@pytest.fixture
def hash_gate(monkeypatch):
    """Whisper replaced: a unit passes when the crc32 of its audio is odd."""
    def check(self, waves, refs):
        self.stats.checked_s += sum(len(w) for w in waves) / 16000
        return [0.0 if zlib.crc32(np.asarray(w, np.float32).tobytes()) % 2 else 1.0 for w in waves]

    monkeypatch.setattr(asr_gate.AsrGate, "check", check)


def _recipe(tmp_path):
    """test_build's tiny recipe, speaking more: dictation, chat, spoken questions, the history mix-in."""
    p = test_build._recipe(tmp_path, n=8)
    cfg = yaml.safe_load(p.read_text())
    cfg.update(samples_per_shard=4, tasks={"asr": 2, "chat": 1, "understanding": 1}, curate=False,
               mixins={"history": 0.5, "silence": 0.0, "proactive": 0.0},
               tts={"families": ["tone"], "gate": True, "retries": 2})
    p.write_text(yaml.safe_dump(cfg))
    build._RES_CACHE.clear()
    return p


def test_bank_holds_every_prompt_and_its_dictation_gated(tmp_path, hash_gate):
    info = build.make_bank(_recipe(tmp_path), tmp_path / "bank", per_voice=6, workers=1, quiet=True)
    bank = speechbank.SpeechBank.open(tmp_path / "bank")
    assert bank.voices() == ("tone:tone",) and info["voices"] == 1
    rows = [json.loads(ln) for ln in (tmp_path / "bank" / "voices" / "tone--tone.jsonl").read_text().splitlines()]
    prompts = [r for r in rows if r["kind"] == "prompt"]
    from soundflow.tasks import HISTORY_QUESTION, WHAT_WAS_THAT

    said = {r["texts"][0] for r in prompts}
    assert set(WHAT_WAS_THAT) <= said and HISTORY_QUESTION.format("third") in said  # understanding + history mix-in
    assert not any("Transcribe" in t for t in said)  # instructions stay text in this recipe: not banked
    assert sum(r["kind"] == "dictation" for r in rows) == 6 == info["entries"] - len(prompts)
    assert 0 < info["passed"] < info["entries"] and info["passed"] + info["failed"] == info["entries"]
    for r in rows:
        if not r["passed"]:
            assert r["audio"] is None and r["wer"] > 0.10
            continue
        e = speechbank.BankEntry.from_dict(r)
        waves = bank.waves(e)
        assert len(waves) == len(e.texts) and all(len(w) > 0 for w in waves)
        # the stored rendering is the tone voice's at the entry's speed (recorded to 3 decimals)
        first = tts.Voice("tone", "tone", e.tts["speed"]).render(e.spoken[0])
        n = min(len(first), len(waves[0]))
        assert abs(len(first) - len(waves[0])) <= 0.002 * n
        assert np.corrcoef(first[:800], waves[0][:800])[0, 1] > 0.95  # the first word's burst
        assert r["wer"] <= 0.10
    # resumable: a finished voice is not rendered again
    calls = []
    orig = tts.Voice.render
    tts.Voice.render = lambda self, *a, **k: calls.append(1) or orig(self, *a, **k)
    try:
        again = build.make_bank(tmp_path / "tiny.yaml", tmp_path / "bank", per_voice=6, workers=1, quiet=True)
    finally:
        tts.Voice.render = orig
    assert not calls and again["entries"] == info["entries"]


def test_build_from_bank_renders_nothing_and_is_reproducible(tmp_path, hash_gate, monkeypatch):
    recipe = _recipe(tmp_path)
    build.make_bank(recipe, tmp_path / "bank", per_voice=8, workers=1, quiet=True)
    banked = {json.loads(ln)["id"] for ln in (tmp_path / "bank" / "voices" / "tone--tone.jsonl").read_text().splitlines()}

    def no_render(self, *a, **k):
        raise AssertionError("a build from a complete bank renders nothing")

    monkeypatch.setattr(tts.Voice, "render", no_render)
    s = build.build(recipe, tmp_path / "a", workers=1, quiet=True, bank=tmp_path / "bank")
    assert s["samples"] == 8 and s["bank"]["hits"] > 0 and s["bank"]["misses"] == 0
    assert s["bank"]["dropped"] > 0  # instances that needed a text the bank saw fail were drawn again
    assert s["xrt_per_cpu_s_with_bank"] < s["xrt_per_cpu_s"]
    used = 0
    for sample in read_shards(tmp_path / "a"):
        for e in sample.events:
            p = e.get("provenance") or e
            if p.get("type") == "tts":
                assert p["bank"] in banked and p["tts"]["family"] == "tone"
                used += 1
    assert used > 0
    build._RES_CACHE.clear()
    build.build(recipe, tmp_path / "b", workers=1, quiet=True, bank=tmp_path / "bank")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_bank_speaker_uses_only_banked_voices_on_its_side_of_the_hold_out(tmp_path):
    from soundflow.speechbank import BankEntry, SpeechBank
    from soundflow.tasks import Resources

    def entry(voice):
        return BankEntry("x" + voice, voice, "prompt", ("Hi.",), ("hi",), {"family": "tone", "name": "tone"},
                         0.0, 1, True, None, ())

    bank = SpeechBank(tmp_path, [entry("tone:tone")])
    res = Resources(tts_families=("tone",), bank=bank, tts_holdout=("tone:tone",), split="dev")
    assert res.speaker(np.random.default_rng(0)).voice.id == "tone:tone"
    res = Resources(tts_families=("tone",), bank=bank, tts_holdout=("tone:tone",), split="train")
    with pytest.raises(RuntimeError, match="allowed voice"):  # the bank's only voice is held out for dev
        res.speaker(np.random.default_rng(0))


def test_missing_bank_is_one_clear_error(tmp_path):
    with pytest.raises(build.RecipeError, match="soundflow data bank"):
        build.build(_recipe(tmp_path), tmp_path / "a", workers=1, quiet=True, bank=tmp_path / "nope")


def test_dictation_is_shared_by_how_often_a_build_draws_each_voice(monkeypatch):
    voices = ["piper:joe", "kokoro:a", "kokoro:b", "kokoro:c", "kokoro:d"]
    monkeypatch.setattr(speechbank, "recipe_voices", lambda cfg: voices)
    cfg = {"tts": {"families": ["piper", "kokoro"], "weights": [0.7, 0.3]}}
    n = speechbank.dictation_counts(cfg, per_voice=40)
    assert n == {"piper:joe": 140, "kokoro:a": 15, "kokoro:b": 15, "kokoro:c": 15, "kokoro:d": 15}
    n = speechbank.dictation_counts({"tts": {"families": ["piper", "kokoro"], "weights": [0.98, 0.02]}}, per_voice=40)
    assert n["kokoro:a"] == speechbank.MIN_DICTATION  # the floor for voices a build rarely draws
