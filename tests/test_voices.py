"""Speakers in recipes: voice hold-out by split, the shipped sentences, Asterisk prompts (issue: many real voices)."""

import gzip

import numpy as np
import pytest
import soundfile as sf

from soundflow import tasks, tts
from soundflow.augment import Augment


def test_recipe_holds_out_voices_for_dev_split(monkeypatch):
    """Train instances never get a held-out voice, dev instances only held-out ones."""
    held = ("espeak:en-gb", "piper:en_US-joe-medium")
    base = dict(tts_families=("tone", "espeak", "piper"), tts_holdout=held)
    # voice ids are known whether or not a family is installed: pretend both are
    monkeypatch.setattr(tts, "available_families", lambda: ("piper", "espeak"))
    train = tasks.Resources(split="train", **base)
    dev = tasks.Resources(split="dev", **base)
    seen_train = {train.speaker(np.random.default_rng(i)).voice.id for i in range(300)}
    seen_dev = {dev.speaker(np.random.default_rng(i)).voice.id for i in range(100)}
    assert not seen_train & set(held) and len(seen_train) >= 5  # tone + the other espeak voices
    assert seen_dev == set(held)


def test_recipe_speaker_draws_effects_per_speaker():
    res = tasks.Resources(tts_families=("tone",), augment=Augment(level=1.0))
    a, b = res.speaker(np.random.default_rng(5)), res.speaker(np.random.default_rng(5))
    assert a.effects == b.effects and a.effects.gain_db != 0.0
    assert tasks.Resources(tts_families=("tone",)).speaker(np.random.default_rng(5)).effects is None


def test_shipped_sentences_many_distinct_with_source_and_licence():
    path = tasks.RECIPES_DIR / "sentences_en.txt"
    sents = tasks.read_sentences(path)
    header = path.read_text(encoding="utf-8").split("\n\n")[0]
    assert len(sents) == len(set(sents)) >= 5000
    assert "WordNet 3.0" in header and "wordnet-base" in header and "Princeton" in header
    assert all(s[0].isupper() and s[-1] in ".?!" for s in sents)
    res = tasks.Resources.from_config({})
    assert res.sentences == sents and tasks.Resources.from_config({"sentences": ""}).sentences == []


def test_asterisk_prompts_loaded_with_transcripts(tmp_path):
    root = tmp_path / "en"
    (root / "digits").mkdir(parents=True)
    for key, sec in (("hello-world", 1.0), ("digits/7", 0.5), ("beep", 0.3), ("long-menu", 12.0)):
        sf.write(root / f"{key}.wav", np.zeros(int(8000 * sec), np.int16), 8000, subtype="PCM_16")
    txt = tmp_path / "core-sounds-en.txt.gz"
    with gzip.open(txt, "wt") as f:
        f.write("; Core Asterisk Sounds in English\n\nhello-world: Hello world.\ndigits/7: seven\n"
                "beep: [this is a simple beep tone]\nlong-menu: Press one for sales.\nmissing: Not recorded.\n")
    rows = tasks.asterisk_prompts(str(root), str(txt))
    assert [(r["id"], r["text"]) for r in rows] == [("asterisk-hello-world", "Hello world."), ("asterisk-digits/7", "seven")]
    assert all(r["speaker"] == "asterisk-allison" and r["kind"] == "prompt" for r in rows)
    assert tasks.asterisk_prompts(str(tmp_path / "none"), str(txt)) == ()


def test_build_without_asterisk_says_so(monkeypatch, capsys):
    monkeypatch.setattr(tasks, "asterisk_prompts", lambda: ())
    res = tasks.Resources.from_config({"speech": str(tasks.RECIPES_DIR / "chat_en.jsonl")})  # any manifest
    assert "Asterisk prompts not installed" in capsys.readouterr().err and res.speech


@pytest.mark.parametrize("split", ["train", "dev"])
def test_recipe_holdout_needs_an_allowed_voice(split):
    res = tasks.Resources(tts_families=("tone",), tts_holdout=("tone:tone",), split=split)
    if split == "train":
        with pytest.raises(RuntimeError, match="allowed voice"):
            res.speaker(np.random.default_rng(0))
    else:
        assert res.speaker(np.random.default_rng(0)).voice.id == "tone:tone"


def test_build_summary_counts_speakers_families_sentences():
    from soundflow.build import _count_speech, summarize

    a, b = {"shard": 0}, {"shard": 1}
    def tts_ev(fam, name, text):
        return {"type": "tts", "text": text, "tts": {"family": fam, "name": name}}
    _count_speech([tts_ev("kokoro", "af_heart", "Hello there."), tts_ev("piper", "en_US-joe-medium", "Hi."),
                   {"type": "clip", "id": "x"}], a)
    _count_speech([{"role": "foreground", "provenance": {"type": "speech", "speaker": "george", "text": "zero"}},
                   {"role": "foreground", "provenance": tts_ev("kokoro", "af_heart", "Hi.")}], b)  # as composed
    base = {"seconds": 1.0, "chunks": 3, "reply_chunks": 1, "replies": 1, "per_task": {}, "dropped": 0, "failed": 0,
            "samples": 1}
    out = summarize([{**base, **a}, {**base, **b}])
    assert out["speakers"] == 3 and out["voice_families"] == ["kokoro", "piper", "speech"] and out["sentences"] == 3
