"""TFJP (paper Alg. 1): each operator on synthetic, seeded signals, then the whole pipeline."""

import json
from pathlib import Path

import numpy as np
import pytest

from soundflow import tfjp as T
from soundflow.audio import SAMPLE_RATE as SR
from soundflow.data import shared_data_dir

EVENTS = (shared_data_dir() or Path("/nonexistent")) / "events"


def burst(seconds: float, f0: float = 180.0, amp: float = 0.3) -> np.ndarray:
    """Speech-like voiced burst: 5 harmonics under a 4 Hz syllable envelope that never drops to zero."""
    t = np.arange(int(seconds * SR)) / SR
    tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2
    return (amp * env * tone / 2).astype(np.float32)


def gap(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def with_floor(x: np.ndarray, rng: np.random.Generator, level: float = 1e-4) -> np.ndarray:
    return (x + level * rng.standard_normal(len(x))).astype(np.float32)


def gaps(x: np.ndarray, thresh: float) -> list[float]:
    """Lengths (s) of inner runs of 10 ms frames whose RMS is under `thresh`."""
    f = x[: len(x) // 160 * 160].reshape(-1, 160)
    quiet = np.sqrt((f**2).mean(1)) < thresh
    edges = np.diff(np.r_[0, quiet.astype(int), 0])
    s, e = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(b - a) * 0.01 for a, b in zip(s, e) if a > 0 and b < len(quiet)]


def test_stft_round_trip_is_exact():
    x = np.random.default_rng(0).standard_normal(12345).astype(np.float32)
    assert np.allclose(T.istft(T.stft(x)), x, atol=1e-5)


def test_silence_cut_shortens_long_pauses_and_keeps_short_ones():
    rng = np.random.default_rng(1)
    x = with_floor(np.concatenate([burst(0.6), gap(1.0), burst(0.6), gap(0.15), burst(0.6)]), rng)
    y = T.silence_cut(x, tau=0.3)
    # the 1.0 s pause loses ~0.7 s, nothing else changes
    assert abs((len(x) - len(y)) / SR - 0.7) < 0.03
    g = gaps(y, 0.01)
    assert len(g) == 2
    assert abs(g[0] - 0.3) < 0.03 and abs(g[1] - 0.15) < 0.03
    # the kept speech is untouched (the cut is inside the pause)
    assert np.allclose(y[: int(0.6 * SR)], x[: int(0.6 * SR)], atol=1e-4)
    assert np.allclose(y[-int(1.2 * SR) :], x[-int(1.2 * SR) :], atol=1e-4)


def test_silence_cut_leaves_short_pauses_and_loud_clips_alone():
    rng = np.random.default_rng(2)
    x = with_floor(np.concatenate([burst(0.5), gap(0.2), burst(0.5)]), rng)
    assert T.silence_cut(x) is x
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(3 * SR) / SR)).astype(np.float32)
    assert T.silence_cut(tone) is tone  # all-loud: the p95 cap keeps the gate below the content


def test_denoise_reduces_white_noise():
    rng = np.random.default_rng(3)
    clean = np.concatenate([gap(0.3), burst(0.8), gap(0.25), burst(0.8), gap(0.3)])
    noise = rng.standard_normal(len(clean)).astype(np.float32)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (10 / 10))  # SNR 10 dB
    noisy = clean + noise
    prof = T.noise_profile(noisy)
    assert prof.shape == (T.N_BINS,) and prof.any()
    y = T.denoise(noisy, prof, gamma=1.0)
    assert len(y) == len(noisy)

    def snr(z):
        return 10 * np.log10(np.mean(clean**2) / np.mean((z - clean) ** 2))

    assert snr(noisy) == pytest.approx(10, abs=0.1)
    assert snr(y) > snr(noisy) + 3.0  # measured: +8.5 dB
    # zero noise is a no-op; a steady tone is content, not noise
    assert T.denoise(noisy, np.zeros(T.N_BINS)) is noisy
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * SR) / SR)).astype(np.float32)
    assert not T.noise_profile(tone).any()


def test_core_locate_finds_the_informative_span():
    rng = np.random.default_rng(4)
    x = np.concatenate([gap(0.7), burst(1.0), gap(0.9)])
    x = (x + 3e-3 * rng.standard_normal(len(x))).astype(np.float32)  # broadband floor ~40 dB down
    a, b = T.core_locate(x)
    assert abs(a / SR - 0.7) < 0.05 and abs(b / SR - 1.7) < 0.05


def test_boundary_norm_snaps_to_the_200ms_grid():
    x = np.arange(int(2.5 * SR), dtype=np.float32)
    y = T.boundary_norm(x, (int(0.29 * SR), int(1.49 * SR)), delta=0.2)
    assert len(y) == int(1.2 * SR) and y[0] == int(0.2 * SR)  # 0.29 -> 0.2, 1.49 -> 1.4 (nearest)
    whole = x[: int(2.4 * SR)]
    assert T.boundary_norm(whole, (0, len(whole))) is whole
    assert len(T.boundary_norm(x[:1000], (0, 1000))) == int(0.2 * SR)  # shorter than delta: padded


def test_spec_smooth_is_a_20ms_hann_taper():
    y = T.spec_smooth(np.ones(SR, dtype=np.float32), omega=0.02)
    m = int(0.02 * SR)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(m) / m)
    assert np.allclose(y[:m], ramp, atol=1e-6)
    assert np.allclose(y[-m:], ramp[::-1], atol=1e-6)
    assert np.all(y[m:-m] == 1.0)
    assert y[0] == 0.0 and y[-1] == 0.0


def _noisy_speech(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.concatenate([gap(0.45), burst(0.7), gap(0.9), burst(0.5, f0=220), gap(0.12), burst(0.6), gap(0.6)])
    return (x + 4e-3 * rng.standard_normal(len(x))).astype(np.float32)


def test_tfjp_output_is_on_grid_with_hann_fades():
    x = _noisy_speech(5)
    y = T.tfjp(x)
    g = int(0.2 * SR)
    assert len(y) % g == 0 and 0 < len(y) < len(x)
    assert len(y) == pytest.approx(2.6 * SR, abs=g)  # 0.9 s pause -> 0.3 s, edges trimmed to the core
    m = int(0.02 * SR)
    ramp = T.hann_ramp(m)
    assert y[0] == 0.0 and y[-1] == 0.0
    peak = np.abs(y).max()
    assert np.all(np.abs(y[:m]) <= ramp * peak + 1e-6)
    assert np.all(np.abs(y[-m:]) <= ramp[::-1] * peak + 1e-6)


def test_tfjp_is_idempotent():
    for seed in (6, 7):
        y = T.tfjp(_noisy_speech(seed))
        z = T.tfjp(y)
        assert len(z) == len(y)
        assert np.allclose(z, y, atol=1e-6)


def test_tfjp_config_defaults_follow_the_paper():
    cfg = T.TFJPConfig()
    assert (cfg.tau, cfg.K, cfg.omega, cfg.delta, cfg.gamma) == (0.3, 3, 0.02, 0.2, 1.0)
    x = _noisy_speech(8)
    assert np.array_equal(cfg(x), T.tfjp(x))


def test_tfjp_rejects_empty_input():
    with pytest.raises(ValueError):
        T.tfjp(np.zeros(0, dtype=np.float32))


def test_tfjp_file_processes_a_folder(tmp_path):
    from soundflow.audio import load_audio, write_audio

    src, dst = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    write_audio(src / "a.wav", _noisy_speech(9))
    write_audio(src / "sub" / "b.wav", _noisy_speech(10))
    rows = T.tfjp_file(src, dst)
    assert len(rows) == 2
    for rel in ("a.wav", "sub/b.wav"):
        y = load_audio(dst / rel)
        assert len(y) % int(0.2 * SR) == 0


@pytest.mark.skipif(not (EVENTS / "catalog.jsonl").exists(), reason="shared event clips not present")
def test_tfjp_on_a_real_clip():
    from soundflow.audio import load_audio

    row = json.loads((EVENTS / "catalog.jsonl").read_text().splitlines()[0])
    x = load_audio(EVENTS / row["audio"])
    y = T.tfjp(x)
    assert len(y) % int(0.2 * SR) == 0 and 0 < len(y) <= len(x) + int(0.2 * SR)
    assert np.isfinite(y).all() and y[0] == 0.0 and y[-1] == 0.0
    z = T.tfjp(y)
    assert len(z) == len(y) and np.allclose(z, y, atol=1e-6)
