"""Streaming ASR benchmark: WER of the streaming model next to offline Whisper-base, same audio, one run.

Streaming side: each utterance (or, with `group=k`, k utterances concatenated with `gap_s` of
silence) is one stream heard chunk by chunk under the instruction "Transcribe what you hear.";
the hypothesis is all reply texts of the stream in chunk order, joined with spaces.

Offline side (the baseline): faster-whisper on the offline Whisper-base weights
(`soundflow.weights.whisper_base_ct2_dir()`, the same file the streaming encoder comes from),
CPU, int8, `language="en"`, greedy (`beam_size=1`, `temperature=0`, no fallback), no VAD,
`condition_on_previous_text=False`, without timestamps, one utterance at a time. Both sides hear
the same audio: each utterance with `pad_s` (default 1 s) of silence before and after it.

WER: both sides and the references go through `soundflow.wer.normalize_for_wer`, the TTS ASR
gate's normaliser (whisper-normalizer's `EnglishTextNormalizer`: "8 o'clock" and "eight o'clock"
normalise alike, "zero" → "0"; plus its time fixes), then `jiwer` corpus WER
(S + D + I over reference words, summed over the corpus). Rows whose normalised reference is
empty are skipped. Headline: `wer_ratio` = streaming WER / offline WER (the paper: 3.17 / 2.87
= 1.10 for Audio-Interaction vs its offline initialisation on LibriSpeech clean). An untrained
model that never responds has WER 1.0 (all deletions) — reported as is.

    soundflow bench asr MANIFEST [--model mini|DIR|none] [--limit N] [--group K] [--pad-s S] [--out DIR] [--json]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE
from ..wer import NORMALIZER, normalize_for_wer
from .report import num, print_json, progress_bar, write_task_report
from .tasks import TaskRun, load_task_manifest

TRANSCRIBE = "Transcribe what you hear."


def wer_counts(references: list[str], hypotheses: list[str]) -> dict:
    """Corpus WER after `normalize_for_wer` on both sides, with its error counts.

    Pairs whose normalised reference is empty are dropped (counted in `n_empty_ref`)."""
    import jiwer

    pairs = [(normalize_for_wer(r), normalize_for_wer(h or "")) for r, h in zip(references, hypotheses)]
    kept = [(r, h) for r, h in pairs if r.strip()]
    if not kept:
        return {"wer": None, "n": 0, "n_empty_ref": len(pairs)}
    o = jiwer.process_words([r for r, _ in kept], [h for _, h in kept])
    n_ref = o.hits + o.substitutions + o.deletions
    return {"wer": (o.substitutions + o.deletions + o.insertions) / n_ref, "substitutions": o.substitutions,
            "deletions": o.deletions, "insertions": o.insertions, "hits": o.hits, "ref_words": n_ref,
            "n": len(kept), "n_empty_ref": len(pairs) - len(kept), "n_empty_hyp": sum(not h.strip() for _, h in kept)}


def utterance_wer(reference: str, hypothesis: str) -> float | None:
    c = wer_counts([reference], [hypothesis])
    return c["wer"]


class OfflineWhisper:
    """faster-whisper on the offline Whisper-base CTranslate2 folder (int8, en, greedy)."""

    def __init__(self, model_dir: str | Path | None = None, compute_type: str = "int8", beam_size: int = 1,
                 threads: int = 0):
        from faster_whisper import WhisperModel

        if model_dir is None:
            from ..weights import whisper_base_ct2_dir

            model_dir = whisper_base_ct2_dir()
        self.model_dir = str(model_dir)
        self.beam_size = beam_size
        self.compute_type = compute_type
        self.model = WhisperModel(self.model_dir, device="cpu", compute_type=compute_type, cpu_threads=threads)

    def __call__(self, wave: np.ndarray) -> str:
        segments, _ = self.model.transcribe(
            np.asarray(wave, dtype=np.float32), language="en", task="transcribe", beam_size=self.beam_size,
            best_of=1, temperature=0.0, condition_on_previous_text=False, vad_filter=False,
            without_timestamps=True)
        return " ".join(s.text.strip() for s in segments).strip()

    def settings(self) -> dict:
        return {"engine": "faster-whisper", "model_dir": self.model_dir, "device": "cpu",
                "compute_type": self.compute_type, "language": "en", "beam_size": self.beam_size,
                "temperature": 0.0, "vad_filter": False, "condition_on_previous_text": False}


def _groups(items: list, k: int) -> list[list]:
    k = max(1, int(k))
    return [items[i : i + k] for i in range(0, len(items), k)]


def bench_asr(
    manifest: str | Path,
    model="mini",
    json: bool = False,
    out: str | Path | None = None,
    baseline: bool = True,
    *,
    instruction: str = TRANSCRIBE,
    threshold: float = 0.5,
    chunk_ms: int = 400,
    limit: int | None = None,
    group: int = 1,
    gap_s: float = 0.4,
    pad_s: float = 1.0,
    whisper_dir: str | Path | None = None,
    beam_size: int = 1,
    progress: bool = True,
) -> dict:
    """Streaming WER of `model` (a backend name, checkpoint folder, AudioLM or runner; None skips
    it) and, with `baseline`, offline Whisper-base WER on the same utterances.

    Manifest rows `{"id", "audio", "text"}`; `limit` keeps N rows evenly spaced over the file;
    `group` utterances per stream (joined by `gap_s` of silence). Every utterance gets `pad_s`
    of digital silence on both sides, for both systems (Whisper-base on the bare 0.3–0.6 s FSDD
    clips: WER 0.875 on 40 clips, with 1 s pads 0.325; the streaming model also needs chunks
    after a word to say it). Returns {"streaming": {...},
    "offline": {...}, "wer_ratio", "items": [...]}; `json` prints it (without items) as the last
    stdout line; `out` writes report.md, metrics.json, items.jsonl and a latency histogram."""
    items = [it for it in load_task_manifest(manifest, limit) if str(it.row.get("text", "")).strip()]
    run = TaskRun(model, threshold, chunk_ms)  # model None: loads audio only
    waves: dict[str, np.ndarray] = {}
    for it in items:
        w = run.load(it)
        if w is not None:
            pad = np.zeros(int(round(pad_s * SAMPLE_RATE)), dtype=np.float32)
            waves[it.id] = np.concatenate([pad, w, pad]) if len(pad) else w
    items = [it for it in items if it.id in waves]
    rows = {it.id: {"id": it.id, "reference": str(it.row["text"])} for it in items}
    result: dict = {"benchmark": "asr", "manifest": str(manifest), "n": len(items),
                    "audio_s": round(sum(len(w) for w in waves.values()) / SAMPLE_RATE, 2),
                    "pad_s": pad_s, "normalizer": NORMALIZER, "wer": "jiwer corpus WER"}

    if run.runner is not None:
        refs, hyps = [], []
        gap = np.zeros(int(round(gap_s * SAMPLE_RATE)), dtype=np.float32)
        for grp in progress_bar(_groups(items, group), "asr/streaming", progress):
            parts = []
            for i, it in enumerate(grp):
                parts += [gap] * bool(i) + [waves[it.id]]
            hyp, _ = run(np.concatenate(parts), instruction)
            refs.append(" ".join(str(it.row["text"]) for it in grp))
            hyps.append(hyp)
            if len(grp) == 1:
                rows[grp[0].id]["streaming"] = hyp
            else:
                for it in grp:
                    rows[it.id]["stream_group"] = grp[0].id
                rows[grp[0].id]["streaming_group_hypothesis"] = hyp
        result["streaming"] = {**wer_counts(refs, hyps), "instruction": instruction, "threshold": threshold,
                               "chunk_ms": chunk_ms, "group": group, "streams": len(refs), **run.info()}
    if baseline:
        whisper = OfflineWhisper(whisper_dir, beam_size=beam_size)
        refs, hyps = [], []
        t0 = time.perf_counter()
        for it in progress_bar(items, "asr/offline-whisper", progress):
            hyp = whisper(waves[it.id])
            rows[it.id]["offline"] = hyp
            refs.append(str(it.row["text"]))
            hyps.append(hyp)
        wall = time.perf_counter() - t0
        result["offline"] = {**wer_counts(refs, hyps), **whisper.settings(), "wall_s": round(wall, 2),
                             "rtf": round(wall / result["audio_s"], 4) if result["audio_s"] else None}
    for r in rows.values():
        for side in ("streaming", "offline"):
            if side in r:
                r[f"wer_{side}"] = utterance_wer(r["reference"], r[side])
    s, o = result.get("streaming", {}).get("wer"), result.get("offline", {}).get("wer")
    if s is not None and o is not None:
        result["wer_ratio"] = s / o if o > 0 else (1.0 if s == 0 else None)
    result["skipped"] = run.skipped
    result["items"] = list(rows.values())
    if out:
        md = ["# Streaming ASR vs offline Whisper-base", "", f"Manifest: `{manifest}` ({result['n']} utterances, "
              f"{result['audio_s']} s)  ", "Text normalised with soundflow.wer.normalize_for_wer (whisper-normalizer's EnglishTextNormalizer, "
              "time fixes); jiwer corpus WER.", "",
              "| system | WER | S | D | I | ref words | empty hyps | RTF |", "|---|---|---|---|---|---|---|---|"]
        for side, label in (("streaming", f"streaming ({result.get('streaming', {}).get('runner', '')})"),
                            ("offline", "offline Whisper-base (faster-whisper int8, greedy)")):
            m = result.get(side)
            if m and m.get("wer") is not None:
                md.append(f"| {label} | {num(m['wer'], 3)} | {m['substitutions']} | {m['deletions']} | {m['insertions']} "
                          f"| {m['ref_words']} | {m['n_empty_hyp']} | {m.get('rtf', '–')} |")
        if "wer_ratio" in result:
            md += ["", f"**Streaming / offline WER: {num(result['wer_ratio'], 2)}**"]
        write_task_report(result, out, "\n".join(md) + "\n", latencies=run.latencies)
    if json:
        print_json(result)
    return result
