"""The ASR gate and its protocol: paper Appendix "Dataset Curation Pipeline", step (3).

A rendering whose transcript drifts beyond tau_wer = 0.10 from its rewritten reference is
re-rendered up to R = 2 times, then the *whole instance* is discarded (`Dropped`), not just the
failing turn. The gate is faster-whisper on the offline Whisper-base CTranslate2 weights (int8),
both sides normalised by `soundflow.wer.normalize_for_wer` (whisper-normalizer's
EnglishTextNormalizer plus time fixes; the benchmarks use the same one) before jiwer.

The gate packs several renderings (with 0.6 s gaps) into one 30 s Whisper window (first-fit
decreasing, `pack_windows`; the data builder fills windows with the units of all instances of a
shard), decodes it once without timestamps and splits the transcript between the renderings by
aligning it to their references (`split_by_alignment`). Whisper always encodes a full 30 s
window, so a packed unit costs ~1/6 of a solo check (measured: 61 Piper sentences, 6 windows,
7.7 CPU-s vs 47 CPU-s solo); word timestamps were ~1.7x dearer per window (faster-whisper
re-decodes the window's tail in a second 30 s pass). A rendering that fails in a packed window
is re-checked alone and only the solo verdict counts, so packing never makes the gate stricter;
it can be a little more lenient (Whisper hears each rendering with its neighbours as context).
On those 61 sentences packed and solo verdicts agreed on every unit (with timestamp assignment
they had disagreed on 6: 5 packed-only failures, 1 packed-only pass).

The protocol: a renderer (`tts.Speaker.say_steps`, the task recipes' steps) is a generator that
yields `GateRequest`s and receives one WER per unit; `run_steps` answers each at once, the data
builder batches many instances' requests into full windows. Models load once per process.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .audio import SAMPLE_RATE
from .wer import normalize_for_wer, wer

WER_THRESHOLD = 0.10  # tau_wer
RETRIES = 2  # R
PACK_GAP_S = 0.6
PACK_MAX_S = 28.0


def worker_threads() -> int:
    """CPU threads each data-building model (Whisper, Piper, Kokoro) may use: $SOUNDFLOW_TTS_THREADS
    or 1, because data building runs one worker per core."""
    return int(os.environ.get("SOUNDFLOW_TTS_THREADS", "1"))


class Dropped(Exception):
    """The whole instance is discarded: a rendering kept failing the ASR gate after R retries.

    family / voice: the failing voice (the builder counts drops per family in its stats)."""

    def __init__(self, text: str, wer: float, attempts: int, family: str = "", voice: str = ""):
        super().__init__(f"ASR gate: WER {wer:.2f} > threshold after {attempts} renderings "
                         f"({family or '?'} {voice}): {text[:60]!r}")
        self.text, self.wer, self.attempts, self.family, self.voice = text, wer, attempts, family, voice


@dataclass
class GateRequest:
    """What a suspended `Speaker.say_steps` asks to have checked: unit waveforms and references.
    The driver answers with one WER per unit (`AsrGate.check`, possibly batched with other
    instances' units)."""

    waves: list
    refs: list


@functools.lru_cache(maxsize=None)
def asr_model(threads: int | None = None):
    """faster-whisper on the offline Whisper-base CTranslate2 weights (int8), loaded once per process."""
    from faster_whisper import WhisperModel

    from .weights import whisper_base_ct2_dir

    return WhisperModel(str(whisper_base_ct2_dir()), device="cpu", compute_type="int8",
                        cpu_threads=threads or worker_threads(), num_workers=1)


_DECODE = dict(language="en", task="transcribe", beam_size=1, temperature=0.0, vad_filter=False,
               condition_on_previous_text=False, compression_ratio_threshold=None, log_prob_threshold=None,
               no_speech_threshold=None)


def transcribe(wave: np.ndarray) -> str:
    segs, _ = asr_model().transcribe(np.asarray(wave, np.float32), without_timestamps=True, **_DECODE)
    return " ".join(s.text.strip() for s in segs).strip()


def pack_windows(durations: Sequence[float], gap_s: float = PACK_GAP_S, max_s: float = PACK_MAX_S) -> list[list[int]]:
    """Indices of renderings grouped into 30 s Whisper windows: first-fit decreasing (longest
    first, each into the first window it fits, gaps included), each window in input order.
    Deterministic; a rendering longer than a window gets one of its own."""
    order = sorted(range(len(durations)), key=lambda k: (-durations[k], k))
    bins: list[list[int]] = []
    used: list[float] = []
    for k in order:
        need = durations[k] + gap_s
        for b in range(len(bins)):
            if used[b] + need <= max_s:
                bins[b].append(k)
                used[b] += need
                break
        else:
            bins.append([k])
            used.append(gap_s + need)
    return [sorted(b) for b in bins]


@functools.lru_cache(maxsize=1 << 16)
def _align_key(word: str) -> str:
    return normalize_for_wer(word).replace(" ", "")


def split_by_alignment(hypothesis: str, refs: Sequence[str]) -> list[str]:
    """Split one window's transcript into per-unit hypotheses (raw words, for `wer`).

    Hypothesis words are aligned (Levenshtein) to the units' reference words in order, each word
    normalised alone ("Eight." and "eight" both → "8"; normalising the whole window would merge
    numbers across units); each hypothesis word goes to the unit of the reference word it is
    aligned to, an inserted word to the unit of the reference word before it. A unit's errors
    stay in that unit; an error right at a boundary may land in the neighbour, which can only
    fail a unit, and a failing unit is re-checked alone (`AsrGate.check`)."""
    ref_keys: list[str] = []
    owner: list[int] = []
    for u, r in enumerate(refs):
        ws = r.split()
        ref_keys += [_align_key(w) for w in ws]
        owner += [u] * len(ws)
    hyp = hypothesis.split()
    keys = [_align_key(w) for w in hyp]
    out: list[list[str]] = [[] for _ in refs]
    if not ref_keys:
        if refs:
            out[-1] = hyp
        return [" ".join(x) for x in out]
    n, m = len(hyp), len(ref_keys)
    d = np.zeros((n + 1, m + 1), np.int32)
    d[:, 0] = np.arange(n + 1)
    d[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        hk, row, prev = keys[i - 1], d[i], d[i - 1]
        for j in range(1, m + 1):
            row[j] = min(prev[j - 1] + (hk != ref_keys[j - 1]), prev[j] + 1, row[j - 1] + 1)
    i, j = n, m
    while i > 0:
        if j > 0 and d[i, j] == d[i - 1, j - 1] + (keys[i - 1] != ref_keys[j - 1]):
            out[owner[j - 1]].append(hyp[i - 1])
            i, j = i - 1, j - 1
        elif j == 0 or d[i, j] == d[i - 1, j] + 1:  # inserted word: the unit before it
            out[owner[max(j - 1, 0)]].append(hyp[i - 1])
            i -= 1
        else:  # deleted reference word
            j -= 1
    return [" ".join(reversed(x)) for x in out]


def transcribe_packed(waves: Sequence[np.ndarray], gap_s: float = PACK_GAP_S, max_s: float = PACK_MAX_S,
                      windows: list[list[int]] | None = None, refs: Sequence[str] | None = None) -> list[str]:
    """Transcripts of several renderings, packed into as few 30 s windows as fit (`pack_windows`).

    With `refs` (the gate): each window is decoded once without timestamps and its transcript is
    split between the renderings by alignment to their references (`split_by_alignment`).
    Without: words are assigned back by the midpoint of their timestamps; faster-whisper then
    often decodes the window's tail a second time (a second full 30 s encoder pass), so this is
    ~1.7x slower per window."""
    out = [""] * len(waves)
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    if windows is None:
        windows = pack_windows([len(w) / SAMPLE_RATE for w in waves], gap_s, max_s)
    for win in windows:
        if len(win) == 1:
            out[win[0]] = transcribe(waves[win[0]])
            continue
        parts, spans, t = [gap], [], gap_s
        for j in win:
            d = len(waves[j]) / SAMPLE_RATE
            spans.append((j, t, t + d))
            parts += [np.asarray(waves[j], np.float32), gap]
            t += d + gap_s
        audio = np.concatenate(parts)
        if refs is not None:
            for j, h in zip(win, split_by_alignment(transcribe(audio), [refs[j] for j in win])):
                out[j] = h
            continue
        segs, _ = asr_model().transcribe(audio, word_timestamps=True, **_DECODE)
        words: list[list[str]] = [[] for _ in spans]
        for s in segs:
            for w in s.words or []:
                mid = 0.5 * (w.start + w.end)
                k = min(range(len(spans)), key=lambda q: 0 if spans[q][1] <= mid <= spans[q][2]
                        else min(abs(mid - spans[q][1]), abs(mid - spans[q][2])))
                words[k].append(w.word.strip())
        for (idx, _, _), ws in zip(spans, words):
            out[idx] = " ".join(ws)
    return out


@dataclass
class GateStats:
    renderings: int = 0
    retries: int = 0
    dropped: int = 0
    checked_s: float = 0.0
    windows: int = 0  # Whisper windows run (packed + solo)
    solo_rechecks: int = 0  # units that failed in a packed window and were checked again alone
    dropped_by_family: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"renderings": self.renderings, "retries": self.retries, "dropped": self.dropped,
                "checked_s": round(self.checked_s, 2), "windows": self.windows, "solo_rechecks": self.solo_rechecks,
                "dropped_by_family": dict(sorted(self.dropped_by_family.items()))}


@dataclass
class AsrGate:
    """WER ≤ threshold or re-render (a new speed draw) up to `retries` times, else `Dropped`.

    `check` takes any list of units (one instance's, or many instances' at once: the builder
    batches a shard's pending units so that they fill whole 30 s windows). A unit that fails in
    a packed window is re-checked alone and only that solo verdict counts, so a failure never
    depends on the unit's neighbours; a pass in a packed window is accepted (Whisper hears the
    unit with its neighbours as context, which can make the gate a little more lenient than solo)."""

    threshold: float = WER_THRESHOLD
    retries: int = RETRIES
    pack: bool = True
    stats: GateStats = field(default_factory=GateStats)

    def check(self, waves: Sequence[np.ndarray], refs: Sequence[str]) -> list[float]:
        """WER of each rendering against its reference (packed screen, solo re-check on failure)."""
        if not len(waves):
            return []
        self.stats.checked_s += sum(len(w) for w in waves) / SAMPLE_RATE
        packed = self.pack and len(waves) > 1
        if packed:
            wins = pack_windows([len(w) / SAMPLE_RATE for w in waves])
            self.stats.windows += len(wins)
            hyps = transcribe_packed(waves, windows=wins, refs=refs)
            solo = {w[0] for w in wins if len(w) == 1}
        else:
            self.stats.windows += len(waves)
            hyps = [transcribe(w) for w in waves]
            solo = set(range(len(waves)))
        scores = [wer(r, h) for r, h in zip(refs, hyps)]
        for k, s in enumerate(scores):
            if s > self.threshold and k not in solo:
                self.stats.windows += 1
                self.stats.solo_rechecks += 1
                scores[k] = wer(refs[k], transcribe(waves[k]))
        return scores


def run_steps(steps, gate: "AsrGate | None"):
    """Drive a generator of `GateRequest`s (`Speaker.say_steps`, the task recipes' steps) to its
    return value, answering each request with `gate.check` right away (one instance alone)."""
    try:
        req = next(steps)
        while True:
            if gate is None:
                raise RuntimeError("a gate request without a gate")
            req = steps.send(gate.check(req.waves, req.refs))
    except StopIteration as e:
        return e.value
