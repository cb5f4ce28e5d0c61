"""ambience.py: synthesised and augmented ambience for the trigger's negatives — seed-pure,
finite, at the stated levels, and what each source claims to be."""

import numpy as np
import pytest

from soundflow.ambience import AMBIENT_SPEED_RANGE, SOURCES, SYNTH_LEVEL_DBFS, _hum, augmented_ambience, synthetic_ambience
from soundflow.audio import SAMPLE_RATE


def test_synthetic_ambience_is_seed_pure_finite_and_in_level():
    a, b, c = synthetic_ambience(0.5, seed=3), synthetic_ambience(0.5, seed=3), synthetic_ambience(0.5, seed=4)
    assert a.dtype == np.float32 and len(a) == 30 * SAMPLE_RATE
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.isfinite(a).all() and np.abs(a).max() <= 1.0
    # every 5 s piece sits inside the drawn level range (segments are 5-30 s)
    for i in range(0, len(a) - 5 * SAMPLE_RATE, 5 * SAMPLE_RATE):
        db = 20 * np.log10(np.sqrt(np.mean(a[i: i + SAMPLE_RATE] ** 2)) + 1e-12)
        assert SYNTH_LEVEL_DBFS[0] - 12 < db < SYNTH_LEVEL_DBFS[1] + 6


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_each_source_is_finite_and_not_silent(name):
    x = SOURCES[name](2 * SAMPLE_RATE, np.random.default_rng(0))
    assert x.shape == (2 * SAMPLE_RATE,) and np.isfinite(x).all() and np.std(x) > 0


def test_hum_peaks_at_its_fundamental_or_a_harmonic():
    rng = np.random.default_rng(1)
    x = _hum(4 * SAMPLE_RATE, rng)
    spec = np.abs(np.fft.rfft(x))
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    top = freqs[np.argsort(spec)[-5:]]
    f0 = top[np.argmin(top)]
    assert 39 <= f0 <= 131  # mains (50/60 Hz) or another low hum
    ratios = top / f0
    assert np.allclose(ratios, np.round(ratios), atol=0.05)  # the peaks are its harmonics


def test_augmented_ambience_changes_speed_level_and_colour_seed_purely():
    rng = np.random.default_rng(0)
    t = np.arange(40 * SAMPLE_RATE) / SAMPLE_RATE
    wave = (0.1 * np.sin(2 * np.pi * 100 * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    a, b = augmented_ambience(wave, seed=5), augmented_ambience(wave, seed=5)
    assert np.array_equal(a, b) and np.isfinite(a).all() and np.abs(a).max() <= 1.0
    lo, hi = AMBIENT_SPEED_RANGE
    assert len(wave) / hi - SAMPLE_RATE < len(a) < len(wave) / lo + SAMPLE_RATE
    # the 100 Hz tone moves with the speed drawn for the first 20 s block
    first = a[: 10 * SAMPLE_RATE]
    spec = np.abs(np.fft.rfft(first))
    peak = np.fft.rfftfreq(len(first), 1 / SAMPLE_RATE)[np.argmax(spec)]
    assert 100 * lo - 2 <= peak <= 100 * hi + 2 and abs(peak - 100) > 0.5
    assert len(augmented_ambience(np.zeros(0, np.float32))) == 0
