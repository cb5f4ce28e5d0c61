"""Public benchmark layouts read in place (bench/layouts.py): tiny generated LibriSpeech, CoVoST 2
and MMAU trees, scored end to end by the existing benches with a runner that "hears" each clip."""

import json

import numpy as np
import pytest
import soundfile as sf

from soundflow.bench.asr import bench_asr
from soundflow.bench.common import ChunkResult
from soundflow.bench.layouts import parse_spec, target_language, with_layout
from soundflow.bench.tasks import bench_mcq, bench_s2tt, load_task_manifest
from soundflow.cli import main

SR = 16_000
FREQS = [300.0, 450.0, 600.0, 750.0, 900.0]


def _tone(freq: float, seconds: float = 0.8) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant(wave: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / SR)[int(spec.argmax())])


class HearingRunner:
    """Answers what a clip's tone says (a lookup by its dominant frequency): the benches must
    pair every clip with its own reference for the score to be perfect."""

    def __init__(self, answers: dict[float, str]):
        self.answers = answers

    def __call__(self, wave, chunk_ms, instruction=None):
        f = _dominant(np.asarray(wave))
        key = min(self.answers, key=lambda k: abs(k - f))
        self.instruction = instruction
        return [ChunkResult(0, "response", 1.0, self.answers[key])]


@pytest.fixture
def librispeech(tmp_path):
    texts = {}
    root = tmp_path / "LibriSpeech" / "test-clean"
    k = 0
    for spk, chap in (("1089", "134686"), ("121", "121726")):
        d = root / spk / chap
        d.mkdir(parents=True)
        lines = []
        for u in range(2):
            uid = f"{spk}-{chap}-{u:04d}"
            text = f"WORD NUMBER {['ONE', 'TWO', 'THREE', 'FOUR'][k]}"
            sf.write(d / f"{uid}.flac", _tone(FREQS[k]), SR)
            lines.append(f"{uid} {text}")
            texts[FREQS[k]] = text
            k += 1
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "LibriSpeech", texts


def test_librispeech_folder_is_read_in_place(librispeech):
    root, texts = librispeech
    items = load_task_manifest(root)
    assert [it.id for it in items] == ["1089-134686-0000", "1089-134686-0001", "121-121726-0000", "121-121726-0001"]
    assert all(it.path.exists() and it.path.suffix == ".flac" for it in items)
    assert items[2].row["text"] == "WORD NUMBER THREE"
    assert [it.id for it in load_task_manifest(f"librispeech:{root / 'test-clean' / '121'}")] == \
        ["121-121726-0000", "121-121726-0001"]
    assert len(load_task_manifest(root, limit=2)) == 2
    r = bench_asr(root, model=HearingRunner(texts), baseline=False, progress=False)
    assert r["n"] == 4 and r["streaming"]["wer"] == 0.0 and r["streaming"]["ref_words"] == 12


@pytest.fixture
def covost(tmp_path):
    d = tmp_path / "covost" / "en"
    (d / "clips").mkdir(parents=True)
    rows = [("common_voice_en_1.mp3", 'He said "hi".', "Er sagte „hallo“.", "test"),
            ("common_voice_en_2.mp3", "Good morning.", "Guten Morgen.", "test"),
            ("common_voice_en_3.mp3", "Not this one.", "Nicht dieser.", "train")]
    for (name, *_), f in zip(rows, FREQS):
        sf.write(d / "clips" / name, _tone(f, 1.0), SR, format="MP3")
    header = "path\tsentence\ttranslation\tsplit\n"
    (d / "covost_v2.en_de.tsv").write_text(header + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return d / "covost_v2.en_de.tsv", {f: r[2] for r, f in zip(rows, FREQS)}


def test_covost2_tsv_with_clips_is_read_in_place(covost):
    tsv, translations = covost
    items = load_task_manifest(tsv)
    assert [it.id for it in items] == ["common_voice_en_1", "common_voice_en_2"]  # the test split
    assert items[0].row["reference"] == "Er sagte „hallo“." and items[0].row["text"] == 'He said "hi".'
    assert all(it.path.exists() for it in items)
    assert [it.id for it in load_task_manifest(f"{tsv}?split=train")] == ["common_voice_en_3"]
    assert len(load_task_manifest(f"covost2:{tsv}?split=all")) == 3
    assert target_language(tsv) == "de" and target_language("x/covost_v2.zh-CN_en.test.tsv") == "en"
    runner = HearingRunner(translations)
    r = bench_s2tt(tsv, model=runner, target="de", progress=False)
    assert r["n"] == 2 and r["bleu"] == pytest.approx(100.0)
    assert runner.instruction == "Translate what you hear into German."


@pytest.fixture
def mmau(tmp_path):
    d = tmp_path / "mmau"
    (d / "test-mini-audios").mkdir(parents=True)
    rows = []
    for i, (task, f) in enumerate(zip(["sound", "music", "speech"], FREQS)):
        name = f"./test-mini-audios/clip-{i}.wav"
        sf.write(d / name, _tone(f), SR)
        rows.append({"id": f"q{i}", "audio_id": name, "question": f"What is {i}?", "choices": ["alpha", "beta", "gamma"],
                     "answer": ["alpha", "beta", "gamma"][i], "dataset": "gen", "task": task, "split": "test-mini",
                     "category": "Reasoning", "sub-category": "Counting", "difficulty": "easy"})
    (d / "mmau-test-mini.json").write_text(json.dumps(rows, indent=2))
    return d / "mmau-test-mini.json", {f: f"({'ABC'[i]})" for i, f in enumerate(FREQS[:3])}


def test_mmau_json_is_read_in_place(mmau):
    path, answers = mmau
    items = load_task_manifest(path)
    assert [it.id for it in items] == ["q0", "q1", "q2"] and all(it.path.exists() for it in items)
    assert items[1].row["category"] == "music" and items[1].row["mmau_category"] == "Reasoning"
    r = bench_mcq(path, model=HearingRunner(answers), progress=False)
    assert r["accuracy"] == 1.0 and set(r["per_category"]) == {"sound", "music", "speech"}


def test_spec_parsing_and_cli_flags(tmp_path, covost, monkeypatch):
    tsv, _ = covost
    assert parse_spec(tsv)[0] == "covost2" and parse_spec(f"mmau:{tmp_path}/x.json")[0] == "mmau"
    assert parse_spec(tmp_path / "m.jsonl")[0] == "jsonl"
    assert with_layout("a.txt", "mmau") == "mmau:a.txt" and with_layout("a.json", "auto") == "a.json"
    with pytest.raises(ValueError, match="no LibriSpeech"):
        load_task_manifest(tmp_path / "covost")
    seen = {}
    from soundflow.bench import tasks

    monkeypatch.setattr(tasks, "bench_s2tt", lambda manifest, **kw: seen.update(manifest=manifest, **kw))
    assert main(["bench", "s2tt", str(tsv), "--model", "tiny"]) == 0
    assert seen["manifest"] == str(tsv) and seen["target"] == "de"
    assert main(["bench", "s2tt", str(tsv), "--layout", "covost2", "--target", "ja", "--model", "tiny"]) == 0
    assert seen["manifest"] == f"covost2:{tsv}" and seen["target"] == "ja"
