"""Task benchmarks: ASR WER through the normaliser, S2TT BLEU, MCQ parsing/accuracy, spoken QA,
long-stream stability curve, engine_runner. Metric checks use stub runners and hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundflow.bench.asr import bench_asr, wer_counts
from soundflow.bench.common import BenchItem, ChunkResult, EngineRunner, SystemFailed, events_to_results, make_runner, reply_text
from soundflow.bench.proactive import StreamConfig
from soundflow.bench.stability import bench_stability, stability_groups
from soundflow.bench.tasks import (
    bench_mcq,
    bench_s2tt,
    bench_spoken_qa,
    corpus_bleu,
    mcq_instruction,
    parse_choice,
    resolve_answer,
    token_f1,
)
from soundflow.data import shared_data_dir

SR = 16_000
C = 6400  # samples per 400 ms chunk
FSDD = (shared_data_dir() or Path("/nonexistent")) / "speech" / "manifest.jsonl"


def _tone(seconds: float, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _manifest(tmp_path: Path, rows: list[dict], name: str = "manifest.jsonl") -> Path:
    """Write rows and a short tone for each row's audio (relative to the manifest's folder)."""
    for i, r in enumerate(rows):
        p = tmp_path / r["audio"]
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, _tone(0.5 + 0.1 * i, 300 + 50 * i), SR)
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _replying(replies: dict[int, str] | list[str]):
    """A stub runner that answers from a queue: one reply per call, on chunk 0."""
    queue = list(replies)
    seen: list[str | None] = []

    def runner(wave, chunk_ms, instruction=None):
        seen.append(instruction)
        n = -(-len(wave) // (SR * chunk_ms // 1000))
        text = queue.pop(0)
        return [ChunkResult(k, "response" if k == 0 and text else "silent", 1.0, text if k == 0 else "", 5.0)
                for k in range(n)]

    runner.seen = seen
    return runner


# ---------------------------------------------------------------- ASR WER


def test_wer_through_normaliser():
    # "8 o'clock" vs "eight o'clock": the normaliser maps both alike → no error.
    assert wer_counts(["eight o'clock"], ["8 o'clock"])["wer"] == 0.0
    # case, punctuation, number words: "Zero." == "zero"
    assert wer_counts(["zero"], ["Zero."])["wer"] == 0.0
    # corpus WER = (S + D + I) / ref words: ref 3+2 words; 1 sub ("cat"→"hat"), 1 del, 1 ins
    c = wer_counts(["the cat sat", "hello world"], ["the hat sat", "hello there world friend"][:1] + ["hello"])
    assert (c["substitutions"], c["deletions"], c["insertions"], c["ref_words"]) == (1, 1, 0, 5)
    assert c["wer"] == pytest.approx(2 / 5)
    c = wer_counts(["a b"], ["a b c"])
    assert c["insertions"] == 1 and c["wer"] == pytest.approx(0.5)
    # empty hypothesis: all deletions, WER 1.0; empty normalised reference ("hmm") is skipped
    c = wer_counts(["one two", "hmm"], ["", "anything"])
    assert c["wer"] == 1.0 and c["n"] == 1 and c["n_empty_ref"] == 1 and c["n_empty_hyp"] == 1


def test_bench_asr_streaming_stub(tmp_path, capsys):
    rows = [{"id": f"u{i}", "audio": f"a/u{i}.wav", "text": t} for i, t in enumerate(["eight o'clock", "hello world", "zero"])]
    m = _manifest(tmp_path, rows)
    stub = _replying(["8 o'clock", "hello", ""])
    r = bench_asr(m, model=stub, baseline=False, json=True, out=tmp_path / "rep", progress=False, pad_s=0.0)
    s = r["streaming"]
    # refs: 2 + 2 + 1 = 5 words; errors: "world" deleted, "zero" deleted → 2 / 5
    assert (s["ref_words"], s["deletions"], s["substitutions"], s["insertions"]) == (5, 2, 0, 0)
    assert s["wer"] == pytest.approx(0.4)
    assert stub.seen == ["Transcribe what you hear."] * 3
    assert "offline" not in r and "wer_ratio" not in r
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["streaming"]["wer"] == pytest.approx(0.4)
    assert (tmp_path / "rep" / "report.md").exists() and (tmp_path / "rep" / "latency_hist.png").exists()
    # group=3: one stream with all three utterances, hypothesis vs joined references
    stub = _replying(["8 o'clock hello world zero"])
    r = bench_asr(m, model=stub, baseline=False, progress=False, group=3)
    assert r["streaming"]["wer"] == 0.0 and r["streaming"]["streams"] == 1


# ---------------------------------------------------------------- S2TT BLEU


def test_bleu_hand_example(tmp_path):
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat": clipped n-gram precisions
    # 5/6, 3/5, 2/4, 1/3, equal lengths (BP = 1) → BLEU = (5/6·3/5·1/2·1/3)^(1/4) = (1/12)^(1/4)
    expected = 100 * (1 / 12) ** 0.25
    assert corpus_bleu(["the cat sat on the mat"], [["the cat sat on a mat"]])["bleu"] == pytest.approx(expected, abs=1e-6)
    m = _manifest(tmp_path, [{"id": "s0", "audio": "s0.wav", "reference": "the cat sat on a mat"}])
    stub = _replying(["the cat sat on the mat"])
    r = bench_s2tt(m, model=stub, target="fr", progress=False, out=tmp_path / "rep")
    assert r["bleu"] == pytest.approx(expected, abs=1e-6)
    assert stub.seen == ["Translate what you hear into French."]
    # a second reference that matches exactly → 100; an empty reply → 0
    assert corpus_bleu(["a b c d"], [["x y z w", "a b c d"]])["bleu"] == pytest.approx(100.0)
    assert corpus_bleu([""], [["a b c d"]])["bleu"] == 0.0


# ---------------------------------------------------------------- MCQ

CHOICES = ["dog barking", "car horn", "glass breaking", "dog"]


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("B", 1),
        ("(C)", 2),
        ("C.", 2),
        ("b)", 1),
        ("The answer is (B).", 1),
        ("answer: C", 2),
        ("I think the correct option is D", 3),
        ("It sounds like (A) to me", 0),
        ("A dog barking in the distance.", 0),  # "A" is an article; the choice text decides
        ("glass breaking", 2),
        ("Definitely a car horn!", 1),
        ("a dog", 3),  # "dog" only: choice D
        ("E", None),  # not a valid letter for 4 choices
        ("", None),
        ("I have no idea", None),
        ("car horn or glass breaking", None),  # two choices named
    ],
)
def test_parse_choice(reply, expected):
    assert parse_choice(reply, CHOICES) == expected


def test_resolve_answer_and_instruction():
    assert resolve_answer("B", CHOICES) == 1
    assert resolve_answer("(c)", CHOICES) == 2
    assert resolve_answer(0, CHOICES) == 0
    assert resolve_answer("Glass breaking.", CHOICES) == 2
    assert resolve_answer("F", CHOICES) is None
    instr = mcq_instruction("What is heard?", CHOICES[:2])
    assert instr == "What is heard?\n(A) dog barking\n(B) car horn\nAnswer with the letter of the correct choice."


def test_bench_mcq_accuracy(tmp_path):
    rows = [
        {"id": "q0", "audio": "q0.wav", "question": "What?", "choices": CHOICES, "answer": "B", "category": "sound"},
        {"id": "q1", "audio": "q1.wav", "question": "What?", "choices": CHOICES, "answer": "glass breaking", "category": "sound"},
        {"id": "q2", "audio": "q2.wav", "question": "Who?", "choices": ["man", "woman"], "answer": "A", "category": "speech"},
        {"id": "q3", "audio": "q3.wav", "question": "Who?", "choices": ["man", "woman"], "answer": "B", "category": "speech"},
    ]
    m = _manifest(tmp_path, rows)
    stub = _replying(["(B)", "A", "", "woman"])
    r = bench_mcq(m, model=stub, progress=False, out=tmp_path / "rep")
    # q0 right, q1 wrong (A), q2 unparsed (wrong), q3 right → 2/4
    assert r["accuracy"] == pytest.approx(0.5) and r["parsed_rate"] == pytest.approx(0.75)
    assert r["per_category"]["sound"]["accuracy"] == pytest.approx(0.5)
    assert r["per_category"]["speech"]["accuracy"] == pytest.approx(0.5)
    assert r["chance"] == pytest.approx((0.25 + 0.25 + 0.5 + 0.5) / 4)
    conf = np.array(r["confusion"]["matrix"])
    expected = np.zeros((4, 5), dtype=int)  # rows gold A..D, columns parsed A..D + none
    expected[1, 1] = 2  # q0, q3: B → B
    expected[2, 0] = 1  # q1: C → A
    expected[0, 4] = 1  # q2: A → unparsed
    assert conf.tolist() == expected.tolist()
    assert stub.seen[0].startswith("What?\n(A) dog barking")
    assert (tmp_path / "rep" / "confusion.png").exists()


# ---------------------------------------------------------------- spoken QA


def test_token_f1_and_spoken_qa(tmp_path, monkeypatch):
    # reply "the capital is paris" vs ref "paris": P = 1/4, R = 1 → F1 = 2·(1/4)/(5/4) = 0.4
    assert token_f1("The capital is Paris.", "Paris") == pytest.approx(0.4)
    assert token_f1("", "Paris") == 0.0
    assert token_f1("eight", ["nine", "8"]) == 1.0  # normaliser + best reference
    monkeypatch.delenv("SOUNDFLOW_JUDGE_BASE_URL", raising=False)
    rows = [{"id": "v0", "audio": "v0.wav", "reference": "Paris"}, {"id": "v1", "audio": "v1.wav"}]
    m = _manifest(tmp_path, rows)
    r = bench_spoken_qa(m, model=_replying(["The capital is Paris.", "hi"]), progress=False)
    assert r["scorer"] == "token-f1" and r["n_scored"] == 1 and r["mean_f1"] == pytest.approx(0.4)
    judge = lambda q, ref, reply: 5.0 if "Paris" in reply else 1.0  # noqa: E731
    r = bench_spoken_qa(m, model=_replying(["Paris!", "hi"]), judge=judge, progress=False)
    assert r["mean_score"] == pytest.approx(3.0) and r["score_100"] == pytest.approx(60.0)


# ---------------------------------------------------------------- stability


def test_stability_groups_pad_cyclically():
    assert stability_groups(4, 3, [0, 1, 2, 3]) == [([0, 1, 2], 3), ([3, 0, 1], 1)]
    assert stability_groups(2, 5, [1, 0]) == [([1, 0, 1, 0, 1], 2)]


def _forgetful(horizon: int):
    """Responds to loud chunks (RMS > 0.05) only before chunk `horizon`: a model that goes deaf."""

    def runner(wave, chunk_ms):
        n = SR * chunk_ms // 1000
        out = []
        for k in range(-(-len(wave) // n)):
            c = wave[k * n : (k + 1) * n]
            loud = float(np.sqrt(np.mean(c**2))) > 0.05
            out.append(ChunkResult(k, "response" if loud and k < horizon else "silent", float(loud), "", 1.0))
        return out

    return runner


def test_stability_curve_known_runner(tmp_path):
    # 4 RESPOND clips of 0.8 s (2 chunks); lead-in 1.2 s (3 chunks); gaps exactly 1.2 s (3 chunks).
    # Segment i starts at chunk 3 + 5i. The runner hears nothing from chunk 8 on, so only the first
    # segment of a stream is responded to:
    #   L=1: 4 streams, 4/4;  L=2: [c,c]x2 → 2/4;  L=3: [c,c,c] + [c | 2 unscored pads] → 2/4;
    #   L=4: one stream → 1/4;  L=5: [c,c,c,c | 1 pad] → 1/4.
    items = []
    for i in range(4):
        p = tmp_path / f"clip{i}.wav"
        sf.write(p, _tone(0.8, 300 + 100 * i), SR)
        items.append(BenchItem(f"c{i}", p, "", "RESPOND", "M", "m"))
    cfg = StreamConfig(lead_in_s=1.2, gap_s=(1.2, 1.2))
    r = bench_stability(items, _forgetful(8), max_segments=5, config=cfg, progress=False, out=tmp_path / "rep")
    acc = [c["accuracy"] for c in r["curve"]]
    assert acc == pytest.approx([1.0, 0.5, 0.5, 0.25, 0.25])
    assert [c["ratio_to_1"] for c in r["curve"]] == pytest.approx([1.0, 0.5, 0.5, 0.25, 0.25])
    assert all(c["n"] == 4 for c in r["curve"])
    assert r["retention_at_max"] == pytest.approx(0.25) and r["meets_paper_retention"] is False
    assert [p["accuracy"] for p in r["by_position"][4]] == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert (tmp_path / "rep" / "stability.png").exists() and (tmp_path / "rep" / "latency_hist.png").exists()
    # a runner that never forgets keeps everything
    r = bench_stability(items, _forgetful(10**6), max_segments=3, config=cfg, progress=False)
    assert [c["accuracy"] for c in r["curve"]] == pytest.approx([1.0, 1.0, 1.0])
    assert r["meets_paper_retention"] is True


# ---------------------------------------------------------------- engine runner


def test_events_to_results_and_reply_text():
    evs = [
        {"type": "decision", "chunk": 0, "t": 0.4, "decision": "silent", "p_response": 0.1, "latency_ms": 3.0},
        {"type": "decision", "chunk": 1, "t": 0.8, "decision": "response", "p_response": 0.9, "latency_ms": 4.0},
        {"type": "token", "chunk": 1, "text": "hel"},
        {"type": "response", "chunk": 1, "t": 0.8, "text": "hello"},
        {"type": "decision", "chunk": 2, "t": 1.2, "decision": "response", "p_response": 0.8, "latency_ms": 5.0},
        {"type": "response", "chunk": 2, "t": 1.2, "text": "world"},
    ]
    res = events_to_results(evs, 4)
    assert [r.decision for r in res] == ["silent", "response", "response", "silent"]
    assert res[1].text == "hello" and res[1].latency_ms == 4.0
    assert reply_text(res) == "hello world"


def test_engine_runner_tiny():
    from soundflow.model import build_model

    model = build_model("tiny")
    runner = make_runner(model, threshold=0.0, instruction="Transcribe what you hear.")
    assert isinstance(runner, EngineRunner)
    wave = _tone(1.0)  # 2.5 chunks → 3 (last zero-padded)
    res = runner(wave, 400)
    assert [r.chunk for r in res] == [0, 1, 2]
    assert all(r.decision == "response" for r in res)  # threshold 0 → always respond
    assert all(r.latency_ms is not None for r in res)
    never = make_runner(model, threshold=1.01)
    res = never(wave, 400, instruction="x")
    assert all(r.decision == "silent" and r.text == "" for r in res)


def test_engine_runner_fails_loudly_naming_the_system(monkeypatch):
    """A benchmark never reports figures for another system: an engine error is raised, naming the model."""
    from soundflow.engine import Session
    from soundflow.model import build_model

    runner = make_runner(build_model("tiny"), threshold=0.5)

    def broken(self, chunks, realtime=True, **kw):
        yield {"type": "error", "message": "RuntimeError: boom"}

    monkeypatch.setattr(Session, "run", broken)
    with pytest.raises(SystemFailed, match=r"tiny.*\(engine\).*boom"):
        runner(_tone(1.0), 400)

    def crash(self, chunks, realtime=True, **kw):
        raise RuntimeError("kaput")
        yield

    monkeypatch.setattr(Session, "run", crash)
    with pytest.raises(SystemFailed, match=r"tiny.*\(engine\) failed: RuntimeError: kaput"):
        runner(_tone(1.0), 400)


# ---------------------------------------------------------------- real offline Whisper-base


@pytest.mark.slow
def test_offline_whisper_fsdd():
    if not FSDD.exists():
        pytest.skip("FSDD manifest not available")
    r = bench_asr(FSDD, model=None, baseline=True, limit=10, progress=False)
    assert r["n"] == 10 and r["offline"]["ref_words"] == 10
    assert r["offline"]["wer"] < 0.5, r["items"]
