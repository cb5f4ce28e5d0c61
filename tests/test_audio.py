"""Audio front end: formats, resampling, bad input, chunk-local features."""

import io
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from soundflow.audio import (SAMPLE_RATE, AudioError, Chunker, iter_chunks, iter_pcm_stream, load_audio,
                             log_mel)


def tone(sr=SAMPLE_RATE, sec=1.0, f=440.0):
    t = np.arange(int(sr * sec)) / sr
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


@pytest.mark.parametrize("fmt,sub", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_formats_roundtrip(tmp_path, fmt, sub):
    p = tmp_path / f"x.{fmt.lower()}"
    sf.write(p, tone(), SAMPLE_RATE, format=fmt, subtype=sub)
    w = load_audio(p)
    assert w.dtype == np.float32 and abs(len(w) - SAMPLE_RATE) < 400
    assert 0.15 < np.sqrt(np.mean(w**2)) < 0.25


def test_resample_and_downmix(tmp_path):
    sr = 44_100
    left = tone(sr, 2.0)
    st = np.stack([left, -left * 0 + left], axis=1)  # identical channels → same signal after downmix
    p = tmp_path / "stereo.wav"
    sf.write(p, st, sr)
    w = load_audio(p)
    assert abs(len(w) - 2 * SAMPLE_RATE) <= 2
    spec = np.abs(np.fft.rfft(w))
    assert abs(np.argmax(spec) * SAMPLE_RATE / len(w) - 440) < 2  # pitch preserved


def test_odd_sample_rate(tmp_path):
    p = tmp_path / "odd.wav"
    sf.write(p, tone(11_025, 1.0), 11_025)
    assert abs(len(load_audio(p)) - SAMPLE_RATE) <= 2


def test_mp3_if_supported(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("libsndfile without MP3")
    p = tmp_path / "x.mp3"
    sf.write(p, tone(), SAMPLE_RATE, format="MP3")
    assert len(load_audio(p)) > 0.9 * SAMPLE_RATE


@pytest.mark.parametrize("case", ["empty", "corrupt", "missing", "nan", "inf", "text"])
def test_bad_input_raises_audio_error(tmp_path, case):
    p = tmp_path / "bad.wav"
    if case == "empty":
        sf.write(p, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    elif case == "corrupt":
        sf.write(p, tone(), SAMPLE_RATE)
        p.write_bytes(p.read_bytes()[:20] + b"\x00garbage" * 10)
    elif case == "missing":
        p = tmp_path / "nope.wav"
    elif case in ("nan", "inf"):
        w = tone()
        w[100] = np.nan if case == "nan" else np.inf
        sf.write(p, w, SAMPLE_RATE, subtype="FLOAT")
    elif case == "text":
        p.write_text("not audio at all")
    with pytest.raises(AudioError):
        load_audio(p)


def test_cli_bad_input_one_line_no_traceback(tmp_path):
    p = tmp_path / "bad.wav"
    p.write_text("not audio")
    r = subprocess.run([sys.executable, "-m", "soundflow.cli", "listen", str(p), "--model", "tiny"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    err = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and "bad.wav" in err[0]


def test_chunk_features_are_local():
    """A chunk gives the same features alone or inside a file (fixed normalisation)."""
    rng = np.random.default_rng(0)
    wave = np.concatenate([0.001 * rng.standard_normal(6400), tone(sec=0.4), 0.9 * rng.standard_normal(6400)])
    chunks = list(iter_chunks(wave.astype(np.float32)))
    together = log_mel(np.stack(chunks))
    alone = log_mel(chunks[0])
    assert together.shape == (3, 80, 40)
    assert np.allclose(together[0], alone, atol=1e-6)
    # louder audio later in the file must not change an earlier chunk's features
    louder = log_mel(np.stack([chunks[0], chunks[1], 10 * chunks[2]]))
    assert np.allclose(louder[0], together[0], atol=1e-6)


def test_pcm_stream_and_chunker():
    w = tone(sec=1.0)
    pcm = (w * 32767).astype("<i2").tobytes()
    chunks = list(iter_pcm_stream(io.BytesIO(pcm)))
    assert [len(c) for c in chunks] == [6400, 6400, 6400]  # 1.0 s → 2 full + 1 padded
    assert np.allclose(chunks[0], w[:6400], atol=1e-4)
    ch = Chunker()
    got = []
    for piece in np.array_split(w, 7):
        got += ch.push(piece)
    got += ch.flush()
    assert len(got) == 3 and np.allclose(got[1], w[6400:12800])
    with pytest.raises(AudioError):
        Chunker().push(np.array([np.nan], dtype=np.float32))


def test_microphone_without_device_is_a_clear_error(monkeypatch):
    import builtins
    import shutil

    from soundflow.audio import iter_microphone

    real_import = builtins.__import__

    def no_sounddevice(name, *a, **k):
        if name == "sounddevice":
            raise ImportError("not installed")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_sounddevice)
    monkeypatch.setattr(shutil, "which", lambda cmd: None)
    with pytest.raises(AudioError, match="microphone"):
        iter_microphone()
