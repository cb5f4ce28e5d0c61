"""Audio front end: formats, resampling, bad input, chunk-local features."""

import io
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from soundflow.audio import SAMPLE_RATE, AudioError, Chunker, iter_chunks, iter_pcm_stream, load_audio, log_mel


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


def test_check_pcm_clips_mild_overshoot_and_refuses_garbage():
    from soundflow.audio import MAX_PEAK, check_pcm

    x = np.array([0.5, -1.5, 1.9, -0.2], np.float32)
    assert check_pcm(x).tolist() == pytest.approx([0.5, -1.0, 1.0, -0.2])
    inside = tone()
    assert check_pcm(inside) is not None and np.array_equal(check_pcm(inside), inside)
    for bad, what in ((np.full(4, 1e20, np.float32), "peak amplitude"), (np.array([0, np.nan], np.float32), "NaN"),
                      (np.array([MAX_PEAK * 1.01], np.float32), "peak amplitude"), (np.array([-np.inf], np.float32), "NaN")):
        with pytest.raises(AudioError, match=what):
            check_pcm(bad)


def test_truncated_and_huge_amplitude_wav_are_clear_errors(tmp_path):
    from soundflow.audio import iter_audio_file

    p = tmp_path / "cut.wav"
    sf.write(p, tone(sec=3.0), SAMPLE_RATE, subtype="PCM_16")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])  # an interrupted copy
    for read in (load_audio, lambda q: list(iter_audio_file(q))):
        with pytest.raises(AudioError, match="truncated WAV"):
            read(p)
    h = tmp_path / "huge.wav"
    sf.write(h, np.full(SAMPLE_RATE, 1e20, np.float32), SAMPLE_RATE, subtype="FLOAT")
    for read in (load_audio, lambda q: list(iter_audio_file(q))):
        with pytest.raises(AudioError, match="peak amplitude 1e\\+20"):
            read(h)
    full = tmp_path / "ok.wav"
    sf.write(full, tone(sec=3.0), SAMPLE_RATE, subtype="PCM_16")
    assert len(load_audio(full)) == 3 * SAMPLE_RATE  # a complete file passes the check


@pytest.mark.parametrize("sr,channels", [(SAMPLE_RATE, 1), (44_100, 2)])
def test_iter_audio_file_streams_what_load_audio_reads(tmp_path, sr, channels):
    from soundflow.audio import iter_audio_file

    rng = np.random.default_rng(1)
    w = (0.2 * rng.standard_normal((int(sr * 3.3), channels))).astype(np.float32)
    p = tmp_path / "x.wav"
    sf.write(p, w, sr, subtype="FLOAT")
    streamed = list(iter_audio_file(p, block_s=0.7))  # several blocks, not aligned with chunks
    whole = list(iter_chunks(load_audio(p)))
    assert len(streamed) == len(whole)
    assert np.allclose(np.concatenate(streamed), np.concatenate(whole), atol=1e-6)


def test_listen_stops_cleanly_when_a_file_turns_bad_part_way(tmp_path, capsys):
    from soundflow.listen import listen
    from soundflow.model import build_model

    w = tone(sec=60.0)
    w[50 * SAMPLE_RATE] = 1e20  # bad sample 50 s in: found in a later block, after decisions were made
    p = tmp_path / "late.wav"
    sf.write(p, w, SAMPLE_RATE, subtype="FLOAT")
    rc = listen(str(p), model=build_model("tiny"), jsonl=True, quant=None)
    out, err = capsys.readouterr()
    assert rc == 2 and "peak amplitude" in err and "Traceback" not in err
    assert 0 < sum(1 for line in out.splitlines() if '"decision"' in line) < 150


def test_cli_overlong_instruction_is_one_line(tmp_path):
    p = tmp_path / "t.wav"
    sf.write(p, tone(), SAMPLE_RATE)
    r = subprocess.run([sys.executable, "-m", "soundflow.cli", "listen", str(p), "--model", "tiny", "--quant", "none",
                        "--instruction", "x" * 100_000], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "longer than" in r.stderr and "tokens" in r.stderr
