"""Tone synthesiser: the offline audio-generation fallback of curation (paper §3.2: "when no
retrieved clip is sufficiently appropriate", an audio generator synthesises the event).

The paper invokes a text-to-audio model; offline we synthesise only what simple tones can render
faithfully (alarm patterns, beeps, rings, chimes, sirens, horns, whistles) and refuse the rest, so
a caption never gets a sound that is not it. `ToneGenerator` implements `curate.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from soundflow.audio import SAMPLE_RATE
from soundflow.catalog import mentions
from soundflow.tfjp import spec_smooth


def _burst(f: Sequence[float], seconds: float, sr: int, amp: float = 0.3, sweep: tuple[float, float] | None = None,
           decay: float | None = None) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    if sweep is not None:  # frequency glide (siren): phase = integral of f(t)
        f0, f1 = sweep
        inst = f0 + (f1 - f0) * 0.5 * (1 - np.cos(2 * np.pi * t / max(seconds, 1e-3)))
        x = np.sin(2 * np.pi * np.cumsum(inst) / sr)
    else:
        x = sum(np.sin(2 * np.pi * fi * t) for fi in f) / max(len(f), 1)
    if decay is not None:
        x = x * np.exp(-t / decay)
    ramp = min(len(t) // 2, int(0.005 * sr))  # 5 ms ramps: no clicks
    if ramp:
        env = np.ones(len(t))
        env[:ramp] = np.linspace(0, 1, ramp)
        env[-ramp:] = np.linspace(1, 0, ramp)
        x = x * env
    return (amp * x).astype(np.float32)


def _gap(seconds: float, sr: int) -> np.ndarray:
    return np.zeros(int(round(seconds * sr)), np.float32)


@dataclass
class ToneGenerator:
    """Offline generation fallback: simple tonal events only (alarm patterns, beeps, rings,
    chimes, sirens, horns, whistles). Any other caption is refused (returns None)."""

    sr: int = SAMPLE_RATE
    name: str = "tone-v1"

    # (kind, caption keywords) in priority order
    KINDS = (
        ("smoke_alarm", ("smoke alarm", "fire alarm", "smoke detector", "carbon monoxide")),
        ("alarm_clock", ("alarm clock", "alarm")),
        ("doorbell", ("doorbell", "door bell", "ding dong", "chime")),
        ("phone_ring", ("phone", "telephone", "ringtone", "ringing")),
        ("siren", ("siren",)),
        ("car_horn", ("horn", "honk")),
        ("whistle", ("whistle", "kettle")),
        ("beep", ("beep", "beeping", "timer", "microwave", "monitor")),
    )

    def kind(self, caption: str) -> str | None:
        for kind, kws in self.KINDS:
            if mentions(caption, kws):
                return kind
        return None

    def generate(self, caption: str, duration: float, rng: np.random.Generator) -> np.ndarray | None:
        kind = self.kind(caption)
        if kind is None:
            return None
        sr, d = self.sr, float(np.clip(duration or 3.0, 1.0, 8.0))
        jit = float(rng.uniform(0.97, 1.03))  # a little variety between renderings
        if kind == "smoke_alarm":  # ISO 8201 temporal-three: 3 x 0.5 s at ~3.1 kHz, 1.5 s pause
            unit = np.concatenate([np.concatenate([_burst([3100 * jit], 0.5, sr), _gap(0.5, sr)]) for _ in range(3)]
                                  + [_gap(1.0, sr)])
        elif kind == "alarm_clock":  # four quick 2 kHz beeps, pause
            unit = np.concatenate([np.concatenate([_burst([2000 * jit], 0.08, sr), _gap(0.06, sr)]) for _ in range(4)]
                                  + [_gap(0.45, sr)])
        elif kind == "doorbell":  # ding-dong: E5 then C5, decaying, with an octave partial
            unit = np.concatenate([_burst([659 * jit, 1318 * jit], 0.7, sr, decay=0.35),
                                   _burst([523 * jit, 1046 * jit], 1.2, sr, decay=0.5), _gap(0.4, sr)])
        elif kind == "phone_ring":  # UK double ring: 400+450 Hz, 0.4 on 0.2 off 0.4 on 2 s off (shortened)
            unit = np.concatenate([_burst([400, 450], 0.4, sr), _gap(0.2, sr), _burst([400, 450], 0.4, sr), _gap(1.0, sr)])
        elif kind == "siren":  # wail: 600 -> 1200 -> 600 Hz per cycle
            unit = _burst([], 2.0 * jit, sr, sweep=(600.0, 1200.0))
        elif kind == "car_horn":  # two-note horn with harmonics
            f0 = 420 * jit
            unit = np.concatenate([_burst([f0, 1.25 * f0, 2 * f0, 2.5 * f0], 0.6, sr), _gap(0.25, sr)])
        elif kind == "whistle":  # steady ~2.5 kHz with vibrato
            t = np.arange(int(1.5 * sr)) / sr
            unit = (0.3 * np.sin(2 * np.pi * (2500 * jit * t + 3 * np.sin(2 * np.pi * 6 * t)))).astype(np.float32)
            unit = spec_smooth(unit, 0.01)
        else:  # beep: 1 kHz, 0.15 s on / 0.15 s off, a few times
            unit = np.concatenate([_burst([1000 * jit], 0.15, sr), _gap(0.15, sr)])
        n = int(round(d * sr))
        reps = -(-n // len(unit))
        x = np.tile(unit, reps)
        if len(x) > n:  # end on whole cycles when one fits, else cut (with a short fade)
            x = x[: max(len(unit), (n // len(unit)) * len(unit))] if n >= len(unit) else spec_smooth(x[:n], 0.01)
        return x.astype(np.float32)
