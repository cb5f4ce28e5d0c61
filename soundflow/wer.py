"""Word error rate text normalisation: the one normaliser shared by the TTS ASR gate (`asr_gate.py`)
and the benchmarks (`bench/asr.py` WER, `bench/tasks.py` token F1), so data construction and
evaluation score words alike.

`normalize_for_wer` is whisper-normalizer's `EnglishTextNormalizer` ("8 o'clock" and "eight
o'clock" normalise alike; "zero" → "0") plus two fixes for its quirks on times: "3 .30 pm" and
"three thirty p m" (→ "330 p m") both become "330 pm".
"""

from __future__ import annotations

import functools
import re

NORMALIZER = "whisper_normalizer.english.EnglishTextNormalizer + time fixes (soundflow.wer.normalize_for_wer)"


@functools.lru_cache(maxsize=1)
def _english_normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize_for_wer(text: str) -> str:
    """Whisper's EnglishTextNormalizer plus two fixes for its quirks on times: "3 .30 pm" and
    "three thirty p m" (→ "330 p m") both become "330 pm"."""
    t = _english_normalizer()(text)
    t = re.sub(r"(\d)\s*[.:]\s*(?=\d)", r"\1", t)
    t = re.sub(r"\b([ap])\s+m\b", r"\1m", t)
    return re.sub(r"\s+", " ", t).strip()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after `normalize_for_wer` on both sides ("8" vs "eight" is a match)."""
    import jiwer

    ref, hyp = normalize_for_wer(reference), normalize_for_wer(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp or "<empty>"))
