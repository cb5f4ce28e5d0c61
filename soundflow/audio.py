"""Audio front end: load, validate, resample, chunk, and compute per-chunk log-mel features.

Every 400 ms chunk is featurised on its own (paper §Additional Analysis, Obs. 1): the STFT is
padded at the chunk's own edges and the log-mel is normalised with *fixed* constants, so a
chunk gives the same features alone or inside a file. (The authors' code normalises by the
whole file's maximum, which makes a chunk's features depend on audio it has not heard yet.)
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np
import torch

SAMPLE_RATE = 16_000
CHUNK_MS = 400
N_FFT = 400  # 25 ms window, as Whisper
HOP = 160  # 10 ms hop: 40 frames per 400 ms chunk
# Fixed log-mel normalisation. Whisper clamps to (file max - 8) and maps with (x + 4) / 4; we
# replace the file max by a constant ceiling so features never depend on the future.
LOG_MEL_CEIL = 1.5
LOG_MEL_RANGE = 8.0


class AudioError(ValueError):
    """Raised for audio the front end cannot use: empty, corrupt, non-finite, unreadable."""


# Float PCM is expected in [-1, 1]. Mild overshoot (resampler ringing, a gain stage) is clipped;
# anything beyond MAX_PEAK is not audio in this scale (int16 values sent as float, garbage) and
# is refused: clipping it would feed the model a full-scale square wave, and unbounded values
# overflow the features (inf → NaN) and break the int8 quantiser's range.
MAX_PEAK = 2.0


def check_pcm(pcm: np.ndarray, name: str = "PCM") -> np.ndarray:
    """Validate float PCM: finite and |x| ≤ MAX_PEAK, else AudioError; clip to [-1, 1].

    One vectorised pass (max |x|; NaN propagates into it) and a clip only when needed."""
    pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
    if not pcm.size:
        return pcm
    peak = float(np.max(np.abs(pcm)))
    if not peak <= MAX_PEAK:  # also true for NaN
        if not np.isfinite(pcm).all():
            raise AudioError(f"{name} contains NaN or infinite samples")
        raise AudioError(f"{name} peak amplitude {peak:.3g} is outside [-{MAX_PEAK:g}, {MAX_PEAK:g}]: float "
                         "samples must lie in [-1, 1] (int16 PCM must be scaled by 1/32768)")
    if peak > 1.0:
        pcm = np.clip(pcm, -1.0, 1.0)
    return pcm


def chunk_samples(chunk_ms: int = CHUNK_MS, sample_rate: int = SAMPLE_RATE) -> int:
    n = sample_rate * chunk_ms // 1000
    if n <= 0 or n % HOP:
        raise AudioError(f"chunk of {chunk_ms} ms is not a positive multiple of {HOP * 1000 // SAMPLE_RATE} ms")
    return n


def to_mono_16k(wave: np.ndarray, sample_rate: int, *, name: str = "audio") -> np.ndarray:
    """Downmix (frames, channels) to mono float32, resample to 16 kHz with soxr, validate."""
    wave = np.asarray(wave)
    if wave.dtype.kind in "iu":  # integer PCM → [-1, 1)
        wave = wave.astype(np.float32) / float(np.iinfo(wave.dtype).max + 1)
    wave = wave.astype(np.float32, copy=False)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    elif wave.ndim != 1:
        raise AudioError(f"{name}: expected 1-D or (frames, channels) audio, got shape {wave.shape}")
    if wave.size == 0:
        raise AudioError(f"{name}: audio is empty")
    wave = check_pcm(wave, f"{name}: audio")
    if sample_rate <= 0:
        raise AudioError(f"{name}: invalid sample rate {sample_rate}")
    if sample_rate != SAMPLE_RATE:
        import soxr

        wave = np.clip(soxr.resample(wave, sample_rate, SAMPLE_RATE, quality="HQ"), -1.0, 1.0).astype(np.float32)
    return wave


def _check_wav_complete(path: str | Path, name: str) -> None:
    """A WAV whose data chunk is shorter than its header declares was cut off (an interrupted
    copy or download); libsndfile reads what is there without a word, so say it here."""
    import struct

    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    off = 12
    while off + 8 <= len(head):
        cid, n = head[off : off + 4], struct.unpack("<I", head[off + 4 : off + 8])[0]
        if cid == b"data":
            have = size - (off + 8)
            if n not in (0, 0xFFFFFFFF) and have < n:  # 0 / 0xFFFFFFFF: written by a stream, size unknown
                raise AudioError(f"{name}: truncated WAV (the header declares {n} bytes of audio, the file "
                                 f"holds {have}); re-copy the file")
            return
        off += 8 + n + (n & 1)


def load_audio(path: str | Path | BinaryIO) -> np.ndarray:
    """Read wav/flac/ogg/mp3 (anything libsndfile reads) → mono float32 at 16 kHz."""
    import soundfile as sf

    name = str(getattr(path, "name", path))
    if isinstance(path, (str, Path)):
        if not Path(path).exists():
            raise AudioError(f"{name}: no such file")
        _check_wav_complete(path, name)
    try:
        wave, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioError(f"{name}: cannot decode audio ({e})") from None
    return to_mono_16k(wave, sr, name=name)


def iter_audio_file(path: str | Path, chunk_ms: int = CHUNK_MS, block_s: float = 20.0) -> Iterator[np.ndarray]:
    """Chunks of an audio file read block by block from disk (memory stays flat for a file of
    hours): downmixed, resampled to 16 kHz by a streaming resampler, validated like
    `load_audio`; the last partial chunk is zero-padded. Errors (AudioError) come from the
    first block, or later if the file turns bad part-way."""
    import soundfile as sf

    name = str(path)
    if not Path(path).exists():
        raise AudioError(f"{name}: no such file")
    _check_wav_complete(path, name)
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:  # noqa: BLE001 — LibsndfileError, RuntimeError, ...
        raise AudioError(f"{name}: cannot decode audio ({e})") from None
    sr = f.samplerate
    if sr <= 0:
        f.close()
        raise AudioError(f"{name}: invalid sample rate {sr}")

    def gen():
        chunker = Chunker(chunk_ms)
        rs = None
        if sr != SAMPLE_RATE:
            import soxr

            rs = soxr.ResampleStream(sr, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        total = 0
        with f:
            block = max(1, int(block_s * sr))
            while True:
                try:
                    data = f.read(block, dtype="float32", always_2d=True)
                except Exception as e:  # noqa: BLE001
                    raise AudioError(f"{name}: cannot decode audio ({e})") from None
                last = len(data) < block
                wave = check_pcm(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0], f"{name}: audio")
                total += len(wave)
                if rs is not None:
                    wave = np.clip(rs.resample_chunk(wave, last=last), -1.0, 1.0)
                yield from chunker.push(wave)
                if last:
                    break
        if not total:
            raise AudioError(f"{name}: audio is empty")
        yield from chunker.flush()

    return gen()


def read_pcm_s16le(data: bytes) -> np.ndarray:
    """Raw little-endian int16 mono PCM → float32."""
    if len(data) % 2:
        data = data[:-1]
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def iter_chunks(wave: np.ndarray, chunk_ms: int = CHUNK_MS, *, pad_last: bool = True) -> Iterator[np.ndarray]:
    """Split a 16 kHz waveform into chunks; the last partial chunk is zero-padded."""
    n = chunk_samples(chunk_ms)
    for start in range(0, len(wave), n):
        c = wave[start : start + n]
        if len(c) < n:
            if not pad_last:
                return
            c = np.pad(c, (0, n - len(c)))
        yield c


def iter_pcm_stream(stream: BinaryIO, chunk_ms: int = CHUNK_MS) -> Iterator[np.ndarray]:
    """Chunks from a raw 16 kHz s16le byte stream (stdin, a socket): yields as bytes arrive."""
    need = chunk_samples(chunk_ms) * 2
    buf = b""
    while True:
        data = stream.read(need - len(buf))
        if not data:
            break
        buf += data
        if len(buf) == need:
            yield read_pcm_s16le(buf)
            buf = b""
    if buf:
        yield from iter_chunks(read_pcm_s16le(buf), chunk_ms)


def iter_microphone(chunk_ms: int = CHUNK_MS) -> Iterator[np.ndarray]:
    """Chunks from the default microphone, 16 kHz mono: the `sounddevice` package when it is
    installed, else ALSA's `arecord` or PulseAudio's `parec`. AudioError when there is none."""
    import shutil
    import subprocess

    try:
        import sounddevice as sd  # optional

        n = chunk_samples(chunk_ms)

        def gen():
            with sd.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32", blocksize=n) as stream:
                while True:
                    data, _ = stream.read(n)
                    yield data[:, 0].copy()

        return gen()
    except Exception:  # not installed, or no device: try the command-line recorders
        pass
    for cmd in (["arecord", "-q", "-f", "S16_LE", "-r", str(SAMPLE_RATE), "-c", "1", "-t", "raw"],
                ["parec", "--format=s16le", f"--rate={SAMPLE_RATE}", "--channels=1", "--raw"]):
        if shutil.which(cmd[0]):
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            first = proc.stdout.read(2 * HOP)
            if not first:
                err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise AudioError(f"microphone: {cmd[0]} gave no audio ({err[-1] if err else 'no device'})")

            class _Joined(io.RawIOBase):
                def __init__(self):
                    self.head = first

                def readinto(self, b):
                    data = self.head or proc.stdout.read(len(b))
                    self.head = b""
                    n = min(len(b), len(data))
                    b[:n] = data[:n]
                    return n

            return iter_pcm_stream(io.BufferedReader(_Joined()), chunk_ms)
    raise AudioError("microphone: no sound device API found (install `sounddevice`, or alsa-utils for "
                     "arecord); or pipe raw PCM: arecord -f S16_LE -r 16000 -c 1 -t raw | soundflow listen -")


def open_source(source: str, chunk_ms: int = CHUNK_MS) -> Iterator[np.ndarray]:
    """`-` reads raw 16 kHz s16le PCM from stdin; anything else is an audio file."""
    if source == "-":
        return iter_pcm_stream(sys.stdin.buffer, chunk_ms)
    return iter_chunks(load_audio(source), chunk_ms)


def frame_levels_db(x: np.ndarray, frame: int) -> np.ndarray:
    """(frames,) the mean-square level (dB) of consecutive `frame`-sample frames of `x`: the last
    partial frame dropped, a wave shorter than one frame zero-padded to one."""
    x = np.asarray(x).reshape(-1)
    m = max(1, len(x) // frame)
    fr = np.pad(x, (0, max(0, m * frame - len(x))))[: m * frame].reshape(m, frame)
    return 10 * np.log10(np.mean(np.square(fr, dtype=np.float64), axis=1) + 1e-12)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> torch.Tensor:
    """Slaney mel filterbank as Whisper uses (201 FFT bins → n_mels)."""
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(np.ascontiguousarray(fb.T)).float()  # (n_mels, 201)


@lru_cache(maxsize=1)
def _window() -> torch.Tensor:
    return torch.hann_window(N_FFT)


def log_mel(wave: np.ndarray | torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Log-mel of one chunk (or a batch of chunks): (..., samples) → (..., n_mels, samples // HOP)."""
    x = torch.as_tensor(wave, dtype=torch.float32)
    spec = torch.stft(x.reshape(-1, x.shape[-1]), N_FFT, HOP, window=_window(), return_complex=True)
    power = spec[..., :-1].abs() ** 2  # drop the last frame, as Whisper does: 6400 samples → 40 frames
    mel = mel_filters(n_mels) @ power
    logm = torch.clamp(mel, min=1e-10).log10()
    logm = torch.clamp(logm, min=LOG_MEL_CEIL - LOG_MEL_RANGE, max=LOG_MEL_CEIL)
    logm = (logm + 4.0) / 4.0
    return logm.reshape(*x.shape[:-1], n_mels, -1)


def whisper_log_mel(wave: np.ndarray, n_mels: int = 80) -> torch.Tensor:
    """Whisper's own whole-window normalisation (max - 8): for offline comparisons only."""
    x = torch.as_tensor(wave, dtype=torch.float32)
    spec = torch.stft(x, N_FFT, HOP, window=_window(), return_complex=True)
    mel = mel_filters(n_mels) @ (spec[..., :-1].abs() ** 2)
    logm = torch.clamp(mel, min=1e-10).log10()
    logm = torch.maximum(logm, logm.max() - 8.0)
    return (logm + 4.0) / 4.0


@dataclass
class Chunker:
    """Stateful chunker for PCM pushed in arbitrary pieces (a socket, a microphone callback)."""

    chunk_ms: int = CHUNK_MS

    def __post_init__(self) -> None:
        self._n = chunk_samples(self.chunk_ms)
        self._buf = np.zeros(0, dtype=np.float32)

    def push(self, pcm: np.ndarray) -> list[np.ndarray]:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if not np.isfinite(pcm).all():
            raise AudioError("PCM contains NaN or infinite samples")
        self._buf = np.concatenate([self._buf, pcm])
        k = len(self._buf) // self._n
        out = [self._buf[i * self._n : (i + 1) * self._n] for i in range(k)]
        self._buf = self._buf[k * self._n :]
        return out

    def flush(self) -> list[np.ndarray]:
        if not len(self._buf):
            return []
        out = [np.pad(self._buf, (0, self._n - len(self._buf)))]
        self._buf = np.zeros(0, dtype=np.float32)
        return out


def write_audio(path: str | Path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    import soundfile as sf

    sf.write(str(path), np.asarray(wave, dtype=np.float32), sample_rate)


def chunks_from_bytes(data: bytes, chunk_ms: int = CHUNK_MS) -> Iterable[np.ndarray]:
    """Decode an uploaded audio file held in memory."""
    return iter_chunks(load_audio(io.BytesIO(data)), chunk_ms)
