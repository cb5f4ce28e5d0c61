"""Dual-track streaming sequence composition: paper Alg. 3 and Appendix "Dataset Curation Pipeline".

Foreground clips are concatenated in order with omega fades (TFJP re-applied at every clip when
given); each foreground reply lands on the chunk that contains the clip's end; background and
ambient clips are mixed in at random offsets at a role gain; two noise tracks (event-like and
ambient) are tiled over the whole stream with crossfades and mixed at SNR ~ U(5, 20) dB, the
ambient one 5 dB quieter.

Levels are defined on RMS over whole tracks, so they can be measured back exactly:
- a background/ambient clip is scaled so that RMS(clip) = RMS(foreground track) * 10^(g/20);
- a noise track is scaled so that 10 log10(P(foreground track) / P(noise track)) = SNR.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from soundflow.audio import SAMPLE_RATE
from soundflow.tfjp import spec_smooth

ROLES = ("foreground", "background", "ambient")
DEFAULT_ROLE_GAIN_DB = {"foreground": 0.0, "background": -6.0, "ambient": -12.0}  # Appendix
EMPTY_REF_RMS = 0.1  # -20 dBFS reference when a stream has no foreground to be relative to
PEAK_LIMIT = 0.99


@dataclass
class Event:
    """One planned event (Alg. 3's (w_i, rho_i, d_i, r_i)) plus where it came from.

    duration: seconds into the clip after which its response is due (d_i); None = the whole clip.
    response: text the model should say once the event has been heard, or None (stay silent).
    reply_from: seconds into the clip from which a reply is already right (its timeline entry gets
    `"from"`: the chunk holding that sample); None: only at d_i. A sound that needs attention is
    answered well as soon as it is recognised, not only at the chunk its clip ends on.
    """

    waveform: np.ndarray
    role: str = "foreground"
    duration: float | None = None
    response: str | None = None
    reply_from: float | None = None
    provenance: dict = field(default_factory=dict)
    preprocess: bool = True  # TFJP applies when compose is given it (False: pauses, speech)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Event role must be one of {ROLES}, got {self.role!r}")
        self.waveform = np.asarray(self.waveform, dtype=np.float32).reshape(-1)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def reply_chunk(end_sample: int, chunk: int) -> int:
    """0-based chunk after which a reply is emitted: the chunk containing the event's last sample.

    Alg. 3's ceil((offset + d_i) / c) is the 1-based index of that chunk (Alg. 2 counts t = 1..T);
    we store k = ceil(end / c) - 1, so an end at exactly 0.8 s replies at chunk 1 (0.4-0.8 s) and
    one at 0.81 s at chunk 2 (0.8-1.2 s).
    """
    return max(0, -(-int(end_sample) // int(chunk)) - 1)


def crop(x: np.ndarray, seconds: float, rng: np.random.Generator | None = None, fade_s: float = 0.0) -> np.ndarray:
    """At most `seconds` of x: a random excerpt (`rng`) or the head; with `fade_s` > 0, Hann
    fades of that length at both ends (`spec_smooth`, on a copy). Shorter clips come back as is."""
    n = int(round(seconds * SAMPLE_RATE))
    if len(x) <= n:
        return x
    s = int(rng.integers(0, len(x) - n + 1)) if rng is not None else 0
    return spec_smooth(x[s : s + n].copy(), fade_s) if fade_s > 0 else x[s : s + n]


def dbfs_to_rms(dbfs: float) -> float:
    return float(10.0 ** (dbfs / 20.0))


def colored_noise(n: int, rng: np.random.Generator, color: str = "pink", dbfs: float = -40.0) -> np.ndarray:
    """Seeded pink (1/f power), brown (1/f^2) or white noise scaled to an RMS of `dbfs` (the bench's
    ambient bed, imported streams' gap noise)."""
    if n <= 0:
        return np.zeros(0, dtype=np.float32)
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    f[0] = f[1] if n > 1 else 1.0
    exponent = {"pink": 0.5, "brown": 1.0, "white": 0.0}[color]
    x = np.fft.irfft(spec / f**exponent, n)
    x -= x.mean()
    rms = float(np.sqrt(np.mean(x**2))) or 1.0
    return (x / rms * dbfs_to_rms(dbfs)).astype(np.float32)


def tile_crossfade(
    noise: np.ndarray, length: int, xfade: int, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, int]:
    """Alg. 3 TileCrossfade: loop `noise` to `length` samples with equal-power crossfades.

    Noise copies are uncorrelated, so sin/cos fades keep the power constant across joins. The track
    starts at a random phase of the loop when `rng` is given. Returns (track, start offset).
    """
    noise = np.asarray(noise, dtype=np.float32).reshape(-1)
    if len(noise) == 0:
        raise ValueError("tile_crossfade: empty noise clip")
    if length <= 0:
        return np.zeros(0, dtype=np.float32), 0
    if len(noise) >= length:  # long enough: a random excerpt, no join
        start = int(rng.integers(0, len(noise) - length + 1)) if rng is not None else 0
        return noise[start : start + length].copy(), start
    xfade = int(min(max(xfade, 0), len(noise) // 2))
    period = len(noise) - xfade
    # One period of the loop = [tail faded out + head faded in, body]; tiling it is the overlap-add.
    # One period of the loop = [tail fading out + head fading in, body]: tiling it is the overlap-add.
    t = (np.arange(xfade, dtype=np.float32) + 0.5) / max(xfade, 1)
    join = noise[len(noise) - xfade :] * np.cos(0.5 * np.pi * t) + noise[:xfade] * np.sin(0.5 * np.pi * t)
    unit = np.concatenate([join, noise[xfade : len(noise) - xfade]])
    start = int(rng.integers(0, period)) if rng is not None else 0
    reps = -(-(start + length) // period)
    return np.tile(unit, reps)[start : start + length], start


def _pick(noise, rng: np.random.Generator) -> tuple[np.ndarray, int | None]:
    """Alg. 3 Sample(N): a waveform as is, or one drawn from a sequence of waveforms."""
    if isinstance(noise, np.ndarray) and noise.ndim == 1:
        return noise, None
    i = int(rng.integers(0, len(noise)))
    return np.asarray(noise[i], dtype=np.float32), i


def compose(
    events: Sequence[Event],
    noise_event,
    noise_ambient,
    rng: np.random.Generator,
    chunk_ms: int = 400,
    omega: float = 0.02,
    tfjp: Callable[[np.ndarray], np.ndarray] | None = None,
    snr_db: tuple[float, float] = (5.0, 20.0),
    ambient_offset_db: float = 5.0,
    role_gain_db: dict[str, float] | None = None,
    xfade: float = 0.5,
    debug: bool = False,
) -> tuple[np.ndarray, list[dict], dict]:
    """Alg. 3: compose one streaming waveform y and its response timeline T.

    events: ordered `Event`s; noise_event / noise_ambient: a waveform or a sequence to draw from
    (N_evt, N_amb); rng: all random draws come from it. Returns (y, timeline, info): timeline is
    [{"chunk": k, "text": ...}] with 0-based k (see `reply_chunk`); info holds the drawn SNRs,
    offsets, gains and provenance per event, and the peak factor (1.0 unless the mix would clip).
    With debug=True, info["stems"] holds the five scaled tracks: y == peak_scale * their sum.
    """
    sr = SAMPLE_RATE
    gains = {**DEFAULT_ROLE_GAIN_DB, **(role_gain_db or {})}
    chunk = int(round(chunk_ms * sr / 1000))
    # w_i <- Phi(w_i): TFJP re-applied at every clip boundary, before the role split (Alg. 3 line 3).
    clips = [tfjp(e.waveform) if tfjp is not None and e.preprocess and len(e.waveform) else e.waveform for e in events]

    # Foreground: Concat(y_main, Fade(w_i, omega)); reply at ceil((offset + d_i) / c).
    fg_parts, timeline, records, fg_len = [], [], [], []
    offset = 0
    for i, (ev, w) in enumerate(zip(events, clips)):
        fg_len.append(offset)  # foreground length before event i (where a bg/amb clip may land)
        rec = {"index": i, "role": ev.role, "length_s": len(w) / sr, "provenance": ev.provenance}
        if ev.role == "foreground":
            fg_parts.append(spec_smooth(w, omega))
            d = len(w) if ev.duration is None else min(int(round(ev.duration * sr)), len(w))
            rec.update(offset_s=offset / sr, gain_db=gains["foreground"])
            if ev.response is not None:
                k = reply_chunk(offset + d, chunk)
                timeline.append({"chunk": k, "text": ev.response})
                if ev.reply_from is not None:
                    timeline[-1]["from"] = min(k, (offset + min(int(ev.reply_from * sr), len(w) - 1)) // chunk)
                rec["reply_chunk"] = k
            offset += len(w)
        records.append(rec)
    fg = np.concatenate(fg_parts) if fg_parts else np.zeros(0, dtype=np.float32)
    fg *= np.float32(10 ** (gains["foreground"] / 20))
    # A stream without foreground is as long as its longest other clip, at a -20 dBFS reference.
    D = len(fg) if len(fg) else max((len(w) for w in clips), default=0)
    ref = _rms(fg) if len(fg) and _rms(fg) > 0 else EMPTY_REF_RMS
    if len(fg) < D:
        fg = np.pad(fg, (0, D - len(fg)))

    # Background / ambient: MixIn at a random offset within the foreground heard so far
    # (the whole stream if none yet), scaled to the role gain relative to the foreground RMS.
    stems = {"foreground": fg, "background": np.zeros(D, np.float32), "ambient": np.zeros(D, np.float32)}
    for i, (ev, w) in enumerate(zip(events, clips)):
        if ev.role == "foreground" or D == 0:
            continue
        if len(w) > D:  # longer than the stream: a random excerpt of it
            s = int(rng.integers(0, len(w) - D + 1))
            w = w[s : s + D]
        span = fg_len[i] if fg_len[i] > 0 else D
        off = int(rng.integers(0, max(0, min(span, D) - len(w)) + 1))
        r = _rms(w)
        g = ref * 10 ** (gains[ev.role] / 20) / r if r > 0 else 0.0
        stems[ev.role][off : off + len(w)] += w * np.float32(g)
        records[i].update(offset_s=off / sr, gain_db=gains[ev.role], length_s=len(w) / sr)

    # Two noise tracks tiled over the whole stream; sigma_1 ~ P_snr, sigma_2 ~ P_snr + 5 dB.
    info: dict = {"sample_rate": sr, "chunk_ms": chunk_ms, "duration_s": D / sr, "foreground_rms": ref}
    p_ref = ref * ref
    for name, pool, extra in (("noise_event", noise_event, 0.0), ("noise_ambient", noise_ambient, ambient_offset_db)):
        if pool is None or D == 0:
            stems[name] = np.zeros(D, np.float32)
            continue
        clip, pick = _pick(pool, rng)
        track, start = tile_crossfade(clip, D, int(round(xfade * sr)), rng)
        snr = float(rng.uniform(*snr_db)) + extra
        p = float(np.mean(np.square(track, dtype=np.float64)))
        stems[name] = track * np.float32(np.sqrt(p_ref / p / 10 ** (snr / 10))) if p > 0 else track
        info[name] = {"snr_db": snr, "pick": pick, "start_s": start / sr}

    y = stems["foreground"] + stems["background"] + stems["ambient"] + stems["noise_event"] + stems["noise_ambient"]
    peak = float(np.max(np.abs(y))) if D else 0.0
    scale = PEAK_LIMIT / peak if peak > 1.0 else 1.0  # only if it would clip
    if scale != 1.0:
        y *= np.float32(scale)
    info.update(peak_scale=scale, events=records)
    if debug:
        info["stems"] = stems
    return y.astype(np.float32, copy=False), timeline, info
