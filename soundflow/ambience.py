"""Speech-free ambience beyond the noise library: the sound trigger's negatives (issue 10).

An always-on model hears hours of nothing in particular, and a false reply per hour is already
one too many; a trigger fitted on a few minutes of distinct ambience speaks up at ambience it has
never heard (83 false replies per hour of the held-out half of the noise library, 66 of them over
one recording of 50 Hz mains hum, BENCHMARKS.md). Two sources make more of it, offline:

- `augmented_ambience`: the library's own recordings through `augment.Effects` drawn per block
  (speed 0.7-1.4 — hum at 35-70 Hz, a fan at another speed —, one EQ band, a level): the same
  rooms, other machines and microphones;
- `synthetic_ambience`: what mains-powered homes and offices hum with — mains hum with random
  harmonics, fans and air handling (filtered noise with a blade-rate flutter), motors (a pulse
  train at a wandering rate), coloured noise with a slow swell — and mixes of two.

Both are seed-pure. Neither is ever played by `bench ambient`, which holds out recordings, not
these: a measure of ambience the fit never heard.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import butter, sosfilt

from .audio import SAMPLE_RATE
from .augment import EQ_FREQ_RANGE, EQ_GAIN_DB_RANGE, EQ_Q_RANGE, Effects
from .compose import colored_noise, dbfs_to_rms

AMBIENT_SPEED_RANGE = (0.7, 1.4)  # wider than for speech (augment.SPEED_RANGE): ambience has no voice to keep
AMBIENT_LEVEL_DB_RANGE = (-12.0, 8.0)  # per block, clipped at full scale
AMBIENT_BLOCK_S = 20.0  # one draw of effects per block: a machine runs for a while
SYNTH_SEGMENT_S = (5.0, 30.0)  # as `bench.ambient.SEGMENT_S`
SYNTH_LEVEL_DBFS = (-50.0, -12.0)
SYNTH_MIX_P = 0.4  # share of segments with a second source under the first
SYNTH_MIX_DB = (-20.0, 0.0)  # the second source's level relative to the first
MAINS_HZ = (50.0, 60.0)


def _rms_to(x: np.ndarray, dbfs: float) -> np.ndarray:
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12) * dbfs_to_rms(dbfs)).astype(np.float32)


def _hum(n: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum (or a transformer's, a fridge's): a fundamental with decaying random harmonics."""
    t = np.arange(n) / SAMPLE_RATE
    f0 = (float(rng.choice(MAINS_HZ)) if rng.random() < 0.6 else rng.uniform(40.0, 130.0)) * (1 + rng.uniform(-0.01, 0.01))
    alpha, x = rng.uniform(0.2, 1.5), np.zeros(n)
    for k in range(1, int(rng.integers(3, 40))):
        if k * f0 > 7000:
            break
        x += rng.uniform(0.2, 1.0) * k**-alpha * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
    return x + colored_noise(n, rng, "pink", 0.0) * np.std(x) * 10 ** (rng.uniform(-40, -5) / 20)


def _fan(n: int, rng: np.random.Generator) -> np.ndarray:
    """A fan or air handling: low-passed noise with a blade-rate flutter, sometimes a motor whine."""
    t = np.arange(n) / SAMPLE_RATE
    x = sosfilt(butter(2, rng.uniform(150.0, 4000.0), "low", fs=SAMPLE_RATE, output="sos"),
                colored_noise(n, rng, str(rng.choice(["white", "pink", "brown"])), 0.0))
    x *= 1 + rng.uniform(0.0, 0.4) * np.sin(2 * np.pi * rng.uniform(3.0, 40.0) * t)
    if rng.random() < 0.5:
        x += np.std(x) * rng.uniform(0.1, 1.0) * np.sin(2 * np.pi * rng.uniform(80.0, 400.0) * t)
    return x


def _motor(n: int, rng: np.random.Generator) -> np.ndarray:
    """A motor or engine at idle: a low-passed pulse train whose rate wanders slowly."""
    t = np.arange(n) / SAMPLE_RATE
    rate = rng.uniform(20.0, 150.0) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t))
    x = (np.mod(np.cumsum(rate) / SAMPLE_RATE, 1.0) < rng.uniform(0.05, 0.5)).astype(np.float64)
    x = sosfilt(butter(2, rng.uniform(300.0, 3000.0), "low", fs=SAMPLE_RATE, output="sos"), x - x.mean())
    return x + np.std(x) * 10 ** (rng.uniform(-30, 0) / 20) * colored_noise(n, rng, "pink", 0.0)


def _swell(n: int, rng: np.random.Generator) -> np.ndarray:
    """Coloured noise whose level swells slowly (wind, distant traffic, a room's air)."""
    t = np.arange(n) / SAMPLE_RATE
    return colored_noise(n, rng, str(rng.choice(["white", "pink", "brown"])), 0.0) * (
        1 + rng.uniform(0.0, 0.5) * np.sin(2 * np.pi * rng.uniform(0.02, 0.3) * t))


SOURCES = {"hum": _hum, "fan": _fan, "motor": _motor, "swell": _swell}


def synthetic_ambience(minutes: float, seed: int = 0) -> np.ndarray:
    """`minutes` of synthesised ambience at 16 kHz: segments of 5-30 s, each one source of
    `SOURCES` (or two, mixed), at -50 to -12 dBFS."""
    rng = np.random.default_rng(seed)
    total, pieces, got, names = int(minutes * 60 * SAMPLE_RATE), [], 0, sorted(SOURCES)
    while got < total:
        n = int(rng.uniform(*SYNTH_SEGMENT_S) * SAMPLE_RATE)
        x = _rms_to(SOURCES[names[rng.integers(len(names))]](n, rng), 0.0)
        if rng.random() < SYNTH_MIX_P:
            x = x + _rms_to(SOURCES[names[rng.integers(len(names))]](n, rng), rng.uniform(*SYNTH_MIX_DB))
        pieces.append(_rms_to(x, rng.uniform(*SYNTH_LEVEL_DBFS)))
        got += n
    return np.clip(np.concatenate(pieces)[:total] if pieces else np.zeros(0), -1.0, 1.0).astype(np.float32)


def augmented_ambience(wave: np.ndarray, seed: int = 0, block_s: float = AMBIENT_BLOCK_S) -> np.ndarray:
    """`wave` with `augment.Effects` (speed, one EQ band, level) drawn per `block_s` block. Speed
    changes each block's length, so the result is about as long as `wave`, not exactly."""
    rng = np.random.default_rng(seed)
    blk, out = int(block_s * SAMPLE_RATE), []
    lo, hi = np.log(EQ_FREQ_RANGE[0]), np.log(EQ_FREQ_RANGE[1])
    for i in range(0, len(wave), blk):
        fx = Effects(speed=float(rng.uniform(*AMBIENT_SPEED_RANGE)),
                     eq=(float(np.exp(rng.uniform(lo, hi))), float(rng.uniform(*EQ_GAIN_DB_RANGE)), float(rng.uniform(*EQ_Q_RANGE))),
                     gain_db=float(rng.uniform(*AMBIENT_LEVEL_DB_RANGE)))
        out.append(fx.apply(np.asarray(wave[i: i + blk], np.float32)))
    return np.clip(np.concatenate(out) if out else np.zeros(0), -1.0, 1.0).astype(np.float32)
