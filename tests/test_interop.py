"""The authors' online-training JSONL and StreamAudio-2M lines in and out (interop.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundflow.audio import SAMPLE_RATE, load_audio
from soundflow.cli import main
from soundflow.data import read_jsonl, synthetic_beeps, write_jsonl
from soundflow.dataspec import load_streams
from soundflow.interop import FRAME_MS, GAP_FRAMES, NO_RESPONSE, export_authors, import_authors, load_conversations

CHUNK = SAMPLE_RATE * 400 // 1000
FRAME = SAMPLE_RATE * FRAME_MS // 1000


def _tone(seconds: float, freq: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def corpus(tmp_path):
    """Small turn clips (wav, flac, one at 22.05 kHz), a noise folder, and one file of each format."""
    (tmp_path / "clips").mkdir()
    sf.write(tmp_path / "clips/q1.wav", _tone(1.03, 300), SAMPLE_RATE)
    sf.write(tmp_path / "clips/q2.flac", _tone(0.55, 500), SAMPLE_RATE)
    sf.write(tmp_path / "clips/q3.wav", _tone(1.6, 700, 22050), 22050)
    (tmp_path / "noise").mkdir()
    sf.write(tmp_path / "noise/hum.wav", 0.05 * np.random.default_rng(1).standard_normal(8000).astype(np.float32),
             SAMPLE_RATE)
    online = [
        {"conversation": [
            {"audio_path": "clips/q1.wav", "assistant": "Hello there.", "emotion": "happy"},
            {"audio_path": "clips/q2.flac", "assistant": NO_RESPONSE, "emotion": "normal"},
            {"audio_path": str(tmp_path / "clips/q3.wav"), "assistant": "Careful, that is loud."},
        ]},
        {"merge_path": "clips/q2.flac", "assistant": "Two.", "emotion": "urgent"},
    ]
    streamaudio = [
        {"id": "voice_chatting_000123", "stream_scene_type": "Home Smart", "num_turns": 2, "turns": [
            {"user": "Lights down.", "assistant": "Dimming them.", "emotion": "normal", "scene_type": "Home Smart",
             "audio_path": "clips/q1.wav"},
            {"user": "Thanks.", "assistant": NO_RESPONSE, "emotion": "normal", "scene_type": "Home Smart",
             "audio_path": "clips/q3.wav", "source": "kept-unknown-field"},
        ]},
    ]
    write_jsonl(tmp_path / "online.jsonl", online)
    write_jsonl(tmp_path / "stream2m.jsonl", streamaudio)
    return tmp_path


def _spans(sample, kind):
    return [e for e in sample.events if e.get("type") == kind]


def test_layout_follows_the_authors_builder(corpus):
    samples = load_conversations(corpus / "online.jsonl")
    assert [len(_spans(s, "turn")) for s in samples] == [3, 1]
    s = samples[0]
    wave = s.load()
    assert len(wave) % CHUNK == 0  # the tail ends the stream on a chunk boundary
    gaps = _spans(s, "gap")
    assert len(gaps) == 4  # before each turn, and the tail
    for g in gaps[:-1]:
        assert g["samples"] % FRAME == 0 and GAP_FRAMES[0] * FRAME <= g["samples"] <= GAP_FRAMES[1] * FRAME
    replies = {e["chunk"]: e for e in s.timeline}
    for t in _spans(s, "turn"):
        src = load_audio(t["audio"] if Path(t["audio"]).is_absolute() else corpus / t["audio"])
        got = wave[t["start"] : t["start"] + t["samples"]]
        np.testing.assert_allclose(got[: len(src)], src[: len(got)], atol=1e-6)  # the turn's audio, in place
        end = t["start"] + t["samples"]
        if t["respond"]:
            k = t["chunk"]
            assert k * CHUNK < end <= (k + 1) * CHUNK  # the last chunk overlapping the end of the turn
            assert replies[k]["text"] == t["assistant"]
        else:
            assert "chunk" not in t and all(e["text"] != t["assistant"] for e in s.timeline)
    assert [(e["text"], e["emotion"]) for e in s.timeline] == [("Hello there.", "happy"),
                                                               ("Careful, that is loud.", "normal")]
    # 22.05 kHz turn: its length is the resampled one
    assert _spans(s, "turn")[2]["samples"] == pytest.approx(1.6 * SAMPLE_RATE, abs=2)
    # deterministic for a seed, different for another
    again = load_conversations(corpus / "online.jsonl")[0]
    assert again.events == s.events and np.array_equal(again.load(), wave)
    other = load_conversations(corpus / "online.jsonl", seed=1)[0]
    assert [g["samples"] for g in _spans(other, "gap")] != [g["samples"] for g in gaps]


def test_gaps_from_a_noise_library_and_the_authors_spec(corpus):
    pink = load_streams(str(corpus / "online.jsonl"))[1]  # detected by its first line
    lib = load_streams(f"authors:{corpus / 'online.jsonl'}?noise={corpus / 'noise'}&seed=0")[1]
    g_pink, g_lib = _spans(pink, "gap")[0], _spans(lib, "gap")[0]
    assert g_pink["noise"] == "pink" and g_lib["noise"].endswith("hum.wav")
    rms = lambda s, g: float(np.sqrt(np.mean(s.load()[g["start"] : g["start"] + g["samples"]] ** 2)))  # noqa: E731
    assert rms(lib, g_lib) == pytest.approx(0.05, rel=0.15)  # the library clip at its own level
    assert rms(pink, g_pink) < 0.01
    assert lib.timeline == [{"chunk": _spans(lib, "turn")[0]["chunk"], "text": "Two.", "emotion": "urgent"}]
    with pytest.raises(ValueError, match="unknown options"):
        load_streams(f"authors:{corpus / 'online.jsonl'}?nosie=x")


@pytest.mark.parametrize("name", ["online.jsonl", "stream2m.jsonl"])
def test_import_then_export_gives_the_lines_back(corpus, name):
    manifest = import_authors(corpus / name, corpus / "imported", progress=False)
    samples = load_streams(str(manifest))  # a plain stream-sample manifest now
    lazy = load_conversations(corpus / name)
    assert [s.timeline for s in samples] == [s.timeline for s in lazy]
    for s, z in zip(samples, lazy):
        np.testing.assert_allclose(s.load(), z.load(), atol=1e-4)  # the rendered FLAC (16-bit)
    back = export_authors(samples, corpus / f"back_{name}")
    assert read_jsonl(back) == read_jsonl(corpus / name)


def test_export_elsewhere_rewrites_relative_paths(corpus):
    out = export_authors(load_conversations(corpus / "stream2m.jsonl"), corpus / "elsewhere/deep/out.jsonl")
    line = read_jsonl(out)[0]
    for t in line["turns"]:
        assert (out.parent / t["audio_path"]).resolve() == (corpus / "clips" / Path(t["audio_path"]).name).resolve()
    assert line["turns"][1]["source"] == "kept-unknown-field"


def test_streamaudio_as_online_and_back_in(corpus):
    out = export_authors(load_conversations(corpus / "stream2m.jsonl"), corpus / "as_online.jsonl", "online")
    line = read_jsonl(out)[0]
    assert set(line) == {"conversation"}
    assert [t["assistant"] for t in line["conversation"]] == ["Dimming them.", NO_RESPONSE]
    assert line["conversation"][0]["user"] == "Lights down."
    again = load_conversations(out)[0]
    assert [e["text"] for e in again.timeline] == ["Dimming them."]


def test_native_streams_export_as_turns_cut_at_their_replies(corpus):
    native = synthetic_beeps(n=3, chunks=6, seed=4)
    out = export_authors(native, corpus / "native/beeps.jsonl")
    lines = read_jsonl(out)
    for s, line in zip(native, lines):
        turns = line["conversation"]
        k = s.timeline[0]["chunk"]
        first = load_audio(out.parent / turns[0]["audio_path"])
        assert len(first) == (k + 1) * CHUNK  # up to the end of the reply chunk
        np.testing.assert_allclose(first, s.wave[: len(first)], atol=1e-4)
        assert turns[0]["assistant"] == "beep"
        if k < 5:  # what follows the reply is a turn that wants no answer
            assert turns[1]["assistant"] == NO_RESPONSE and len(turns) == 2
    back = load_streams(str(out))
    for b in back:  # re-imported: the reply lands on the chunk where the first turn ends
        t0 = _spans(b, "turn")[0]
        assert b.timeline == [{"chunk": t0["chunk"], "text": "beep", "emotion": "normal"}]
        assert t0["chunk"] == (t0["start"] + t0["samples"] - 1) // CHUNK


def test_cli_import_export(corpus, capsys):
    assert main(["data", "import", str(corpus / "stream2m.jsonl"), "--out", str(corpus / "cli"), "--seed", "3",
                 "--instruction", "Help if needed."]) == 0
    rows = read_jsonl(corpus / "cli/streams.jsonl")
    assert rows[0]["instruction"] == "Help if needed." and rows[0]["task"] == "voice_chatting"
    assert (corpus / "cli" / rows[0]["audio"]).exists()
    assert main(["data", "export", str(corpus / "cli/streams.jsonl"), "--out", str(corpus / "x.jsonl")]) == 0
    assert read_jsonl(corpus / "x.jsonl") == read_jsonl(corpus / "stream2m.jsonl")
    assert main(["data", "import", str(corpus / "missing.jsonl"), "--out", str(corpus / "y")]) == 2


def test_train_reads_the_authors_jsonl_directly(corpus):
    from soundflow.model import ModelConfig
    from soundflow.train import Recipe, StageConfig, train

    data = str(corpus / "online.jsonl")
    recipe = Recipe(model=ModelConfig(backend="tiny"), out=str(corpus / "run"), save_every=100,
                    stages=[StageConfig(name="sft", trainable=["adapter", "lm"], data=data, steps=2, batch_size=2)])
    train(recipe, progress=False)
    rows = [json.loads(x) for x in (corpus / "run/metrics.jsonl").read_text().splitlines()]
    samples = load_streams(data)
    chunks = sum(len(s.load()) // CHUNK for s in samples)
    replies = sum(len(s.timeline) for s in samples)
    assert len(rows) == 2
    assert rows[0]["n_stream"] == chunks  # one decision label per chunk of both streams
    resp = rows[0]["resp_recall"]
    assert 0.0 <= resp <= 1.0 and rows[0]["n_lm"] > replies  # reply tokens are supervised


# ----------------------------------------------------------------------------- spoken instructions (A^ins)


def _spoken(n: int = 2) -> list:
    """Native beep streams, the first with a spoken instruction held in memory (as `data build`
    makes them), the others without."""
    samples = synthetic_beeps(n=n, chunks=6, seed=4)
    samples[0].instruction_wave = _tone(0.9, 440) * 0.5
    return samples


def test_export_then_import_keeps_the_spoken_instruction(corpus):
    from soundflow.interop import INSTRUCTION_AUDIO_KEY
    from soundflow.model import build_model
    from soundflow.train import FeatureCache, collate

    native = _spoken()
    out = export_authors(native, corpus / "spoken/out.jsonl")
    lines = read_jsonl(out)
    key = INSTRUCTION_AUDIO_KEY
    assert lines[0][key] == "out_audio/beep-4-0_instruction.wav"
    assert (out.parent / lines[0][key]).exists() and key not in lines[1]
    back = load_streams(str(out))  # `data import` reads the key back
    assert back[0].has_instruction_audio and not back[1].has_instruction_audio
    np.testing.assert_allclose(back[0].load_instruction(), native[0].instruction_wave, atol=1e-4)  # 16-bit WAV
    np.testing.assert_allclose(back[0].instruction_chunks(), native[0].instruction_chunks(), atol=1e-4)
    # training sees it: the re-imported stream's sequence has the instruction's audio slots first
    model = build_model("tiny")
    b = collate(model, back[:1], FeatureCache(model, 4), 60)
    assert b["enc"].shape[0] == native[0].instruction_chunks().shape[0] + back[0].chunks(60).shape[0]
    # export again: an imported sample names its clip as its line did (import → export is the identity)
    again = export_authors(back, corpus / "spoken/again.jsonl")
    assert read_jsonl(again) == lines
    # data import → streams.jsonl copies it beside the stream; export still gives the lines back
    manifest = import_authors(out, corpus / "spoken/imported", progress=False)
    (row0, row1) = read_jsonl(manifest)
    assert row0["instruction_audio"] == f"audio/{row0['id']}.instruction.flac" and "instruction_audio" not in row1
    imported = load_streams(str(manifest))
    np.testing.assert_allclose(imported[0].load_instruction(), native[0].instruction_wave, atol=1e-4)
    assert read_jsonl(export_authors(imported, corpus / "spoken/back.jsonl")) == lines


def test_lines_without_a_spoken_instruction_are_unchanged(corpus):
    """Byte for byte: no key, no instruction file, for samples and lines without one."""
    from soundflow.interop import INSTRUCTION_AUDIO_KEY

    for name in ("online.jsonl", "stream2m.jsonl"):
        out = export_authors(load_conversations(corpus / name), corpus / f"plain_{name}")
        assert out.read_bytes() == (corpus / name).read_bytes()
    native = _spoken(3)
    out = export_authors(native, corpus / "mixed/out.jsonl")
    plain = export_authors(native[1:], corpus / "plain/out.jsonl")
    assert out.read_text().splitlines()[1:] == plain.read_text().splitlines()
    assert INSTRUCTION_AUDIO_KEY not in plain.read_text()
    assert not list((corpus / "plain").rglob("*_instruction.wav"))
    assert len(list((corpus / "mixed").rglob("*_instruction.wav"))) == 1


def test_cli_export_import_with_a_spoken_instruction(corpus):
    (corpus / "ins").mkdir()
    s = _spoken(1)[0]
    from soundflow.audio import write_audio

    write_audio(corpus / "ins/a.wav", s.wave)
    write_audio(corpus / "ins/a.instruction.flac", s.instruction_wave)
    row = {**s.to_json(), "audio": "a.wav", "instruction_audio": "a.instruction.flac"}
    write_jsonl(corpus / "ins/streams.jsonl", [row])
    assert main(["data", "export", str(corpus / "ins/streams.jsonl"), "--out", str(corpus / "ins/out.jsonl")]) == 0
    assert main(["data", "import", str(corpus / "ins/out.jsonl"), "--out", str(corpus / "ins/back")]) == 0
    (back,) = load_streams(str(corpus / "ins/back/streams.jsonl"))
    np.testing.assert_allclose(back.load_instruction(), s.instruction_wave, atol=1e-4)
