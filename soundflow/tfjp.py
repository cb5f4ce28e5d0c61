"""Time-Frequency Joint Preprocessing (TFJP): paper Alg. 1 and Appendix "Streaming Data Construction".

The six operators share ONE STFT representation (`Spec`, 25 ms sqrt-Hann frames, 12.5 ms hop).
A pass of the stabilising loop computes the STFT once; `silence_cut` drops frames from it,
`noise_profile` reads it, `denoise` gains its bins, and a single inverse STFT comes out at the
end. Because the sqrt-Hann window's square overlap-adds to one at 50 % overlap, the round trip
is exact, and dropping frames turns each junction into a 12.5 ms power-complementary crossfade.

Every operator accepts a waveform (16 kHz mono float32) or a `Spec`; given a `Spec` it returns
a `Spec`, so a pass never recomputes the transform. Operators return their input object
unchanged when they have nothing to do; `tfjp` relies on that to stop (and to be idempotent).

Choices the paper leaves open (all documented where they are made):
- silence gate: frame energy below min(p10 + 6 dB, p95 - 12 dB), never below -80 dBFS;
- noise is estimated only when the quietest 5 % of frames form a floor (p10 within 3 dB of
  them) 12..40 dB below the loud level (closer: content, e.g. an air conditioner; further:
  already clean; no plateau: a decay or a quiet passage, not stationary noise);
- denoise: magnitude spectral subtraction on a 3x3-smoothed magnitude, gain floor 0.1 (-20 dB);
- core_locate: maximum-sum span of (energy-to-entropy score - 0.6), see `frame_scores`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.fft

from soundflow.audio import SAMPLE_RATE

N_FFT = 400  # 25 ms analysis window
HOP = 200  # 12.5 ms: divides tau = 300 ms (24 hops) and delta = 200 ms (16 hops)
N_BINS = N_FFT // 2 + 1
N_BANDS = 50  # spectral-entropy bands for core_locate

# Silence gate (Appendix: "energy-percentile gate at the 10th percentile of frame energy").
GATE_MARGIN_DB = 6.0  # frames within 6 dB of the 10th percentile are silence...
GATE_BELOW_LOUD_DB = 12.0  # ...but only if also 12 dB under the loud level (p95): all-loud clips keep everything
GATE_FLOOR_DB = -80.0  # below -80 dBFS a frame is silence whatever the statistics say
# Noise estimation gate: see `noise_profile`.
NOISE_FRACTION = 0.05  # Appendix: "lowest-energy 5 % of frames"
FLOOR_SPREAD_DB = 3.0  # a stationary floor is a plateau: p10 within 3 dB of the quietest 5 %
CLEAN_DB = 40.0  # a floor 40 dB under the loud level is left alone (compose adds 5-20 dB SNR noise anyway)
# Spectral subtraction.
GAIN_FLOOR = 0.1  # -20 dB per pass: keeps a little floor so subtraction does not gurgle (musical noise)
# core_locate.
SCORE_RANGE_DB = 40.0  # energy term is 1 at the loudest frame, 0 at 40 dB below it
SCORE_THRESHOLD = 0.6  # frames scoring above this are "informative"
GAP_WEIGHT = 0.1  # uninformative frames cost 10x less than informative ones gain: short gaps (<= tau) do not split a span

_EPS = 1e-12
_WIN = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


@dataclass(frozen=True)
class TFJPConfig:
    """Paper defaults (Appendix): tau = 300 ms, K = 3, omega = 20 ms, delta = c/2 = 200 ms, gamma = 1."""

    tau: float = 0.3
    K: int = 3
    omega: float = 0.02
    delta: float = 0.2
    gamma: float = 1.0
    max_passes: int = 4  # cap on Alg. 1's "goto S1" so a pathological clip cannot loop forever

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return tfjp(x, **asdict(self))


# --------------------------------------------------------------------------- shared STFT


class Spec:
    """STFT of a waveform of `n` samples: `X` (frames, 201) complex64; frame j is centred on sample j*HOP.

    Derived quantities (power, frame energies, the percentile statistics the gates use) are cached,
    so the operators of one pass share them as well as the transform.
    """

    __slots__ = ("X", "n", "_power", "_energy", "_edb", "_stats")

    def __init__(self, X: np.ndarray, n: int, power: np.ndarray | None = None):
        self.X, self.n = X, int(n)
        self._power, self._energy, self._edb, self._stats = power, None, None, None

    @property
    def power(self) -> np.ndarray:
        if self._power is None:
            self._power = self.X.real**2 + self.X.imag**2
        return self._power

    @property
    def energy(self) -> np.ndarray:
        """Mean-square level of each frame (window-weighted), linear."""
        if self._energy is None:
            p = self.power  # Parseval over the one-sided spectrum, without BLAS
            self._energy = (2.0 * p.sum(axis=1) - p[:, 0] - p[:, -1]) * np.float32(1.0 / (N_FFT * N_FFT / 2))
        return self._energy

    @property
    def energy_db(self) -> np.ndarray:
        if self._edb is None:
            self._edb = 10.0 * np.log10(self.energy + _EPS)
        return self._edb

    @property
    def stats(self) -> tuple[float, float, np.ndarray, float]:
        """(p10 dB, p95 dB, indices of the quietest 5 % of frames, their mean level dB) over the
        interior frames (the first and last overlap the zero padding). One partition, nearest rank."""
        if self._stats is None:
            e = self.energy_db
            lo, hi = (1, len(e) - 1) if len(e) > 3 else (0, len(e))
            m = hi - lo
            k = max(1, int(np.ceil(NOISE_FRACTION * m)))
            i10, i95 = int(0.10 * (m - 1) + 0.5), int(0.95 * (m - 1) + 0.5)
            order = np.argpartition(e[lo:hi], sorted({k - 1, i10, i95}))
            idx = lo + order[:k]
            level = 10.0 * np.log10(self.energy[idx].mean() + _EPS)
            self._stats = (float(e[lo + order[i10]]), float(e[lo + order[i95]]), idx, float(level))
        return self._stats


def stft(x: np.ndarray) -> Spec:
    """One STFT per pass: frames cut from a (blocks, HOP) view, one batched rfft, no Python loop."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    n = len(x)
    nb = max(1, -(-n // HOP))
    buf = np.zeros((nb + 2) * HOP, dtype=np.float32)
    buf[HOP : HOP + n] = x  # one hop of zeros in front so sample 0 is covered by two frames
    # (nb + 1, N_FFT) frames at 50 % overlap as a strided view; the window multiply makes the copy.
    frames = np.lib.stride_tricks.as_strided(buf, (nb + 1, N_FFT), (HOP * buf.itemsize, buf.itemsize)) * _WIN
    return Spec(scipy.fft.rfft(frames, axis=1, overwrite_x=True), n)  # float32 stays complex64, 1 thread


def istft(spec: Spec) -> np.ndarray:
    """Weighted overlap-add with the same sqrt-Hann window: exact inverse of `stft`."""
    y = scipy.fft.irfft(spec.X, n=N_FFT, axis=1).astype(np.float32, copy=False)
    y *= _WIN
    out = np.zeros((len(y) + 1, HOP), dtype=np.float32)
    out[:-1] += y[:, :HOP]
    out[1:] += y[:, HOP:]
    return out.reshape(-1)[HOP : HOP + spec.n].copy()


def _as_spec(x) -> Spec:
    return x if isinstance(x, Spec) else stft(x)


def silence_gate_db(spec: Spec) -> float:
    """Energy gate (dB) of `silence_cut`: 10th-percentile energy + 6 dB, capped 12 dB under p95.

    The cap makes the gate robust to all-loud clips, where p10 + margin would call content silent.
    """
    p10, p95, _, _ = spec.stats
    return max(min(p10 + GATE_MARGIN_DB, p95 - GATE_BELOW_LOUD_DB), GATE_FLOOR_DB)


# --------------------------------------------------------------------------- S1-2: cut and norm


def _cut_frames(spec: Spec, tau: float) -> tuple[Spec, int]:
    silent = spec.energy_db < silence_gate_db(spec)
    keep_n = int(round(tau * SAMPLE_RATE / HOP))
    edges = np.diff(np.concatenate([[0], silent.view(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    long = (ends - starts) > keep_n
    if not long.any():
        return spec, 0
    keep = np.ones(len(silent), dtype=bool)
    for s, e in zip(starts[long], ends[long]):  # runs, not frames: a handful per clip
        # Keep tau of the pause, split around its middle, so the rhythm of both sides survives.
        keep[s + keep_n // 2 : e - (keep_n - keep_n // 2)] = False
    keep[0] = keep[-1] = True  # the padded edge frames anchor the inverse STFT
    dropped = int((~keep).sum())
    if dropped == 0:
        return spec, 0
    return Spec(spec.X[keep], spec.n - dropped * HOP, spec.power[keep]), dropped


def silence_cut(x, tau: float = 0.3):
    """Alg. 1 `silence_cut`: shorten every silent run longer than tau (300 ms) down to tau.

    Silence is an energy gate at the 10th percentile of frame energy (Appendix; see
    `silence_gate_db`). Frames are dropped from the middle of each long run, so the kept tau
    straddles the pause and the junction is a 12.5 ms crossfade. Returns `x` itself if nothing is cut.
    """
    spec = _as_spec(x)
    cut, dropped = _cut_frames(spec, tau)
    if isinstance(x, Spec) or dropped == 0:
        return cut if isinstance(x, Spec) else x
    return istft(cut)


def _noise_frames(spec: Spec) -> np.ndarray | None:
    """Indices of the lowest-energy 5 % of frames if they hold removable noise, else None."""
    p10, p95, idx, level = spec.stats
    if p10 - level > FLOOR_SPREAD_DB:  # no plateau: the quiet end is a decay or a quiet passage, not a floor
        return None
    if level >= p95 - GATE_BELOW_LOUD_DB:  # quietest frames are content (a steady sound): nothing to remove
        return None
    if level <= p95 - CLEAN_DB:  # already clean: more subtraction would only dig holes in the floor
        return None
    return idx


def noise_profile(x) -> np.ndarray:
    """Alg. 1 `noise_profile`: stationary noise magnitude spectrum (201 bins, RMS per bin).

    Estimated from the lowest-energy 5 % of frames (Appendix). Returns zeros when those frames are
    not separable noise: not a plateau (p10 more than 3 dB above them), within 12 dB of the loud
    level (the clip is a steady sound) or more than 40 dB under it (already clean). Zero noise makes `denoise` a no-op and Alg. 1's loop `stable`.
    """
    spec = _as_spec(x)
    idx = _noise_frames(spec)
    if idx is None:
        return np.zeros(N_BINS, dtype=np.float32)
    return np.sqrt(spec.power[idx].mean(axis=0)).astype(np.float32)


def _smooth3(a: np.ndarray) -> np.ndarray:
    """3x3 box mean over (frames, bins), edges replicated: steadies the gain against musical noise."""
    p = np.pad(a, 1, mode="edge")
    t = p[:-2] + p[1:-1] + p[2:]
    return (t[:, :-2] + t[:, 1:-1] + t[:, 2:]) * (1.0 / 9.0)


def denoise(x, noise: np.ndarray, gamma: float = 1.0):
    """Alg. 1 `denoise`: spectral subtraction with gating coefficient gamma (Appendix: gamma = 1).

    Gain per bin G = max(1 - gamma * N / |X|~, 0.1), |X|~ the 3x3-smoothed magnitude and N the
    noise RMS magnitude; the complex bin is scaled by G, so the phase is kept. Returns `x`
    itself when `noise` is all zeros.
    """
    noise = np.asarray(noise, dtype=np.float32)
    if not noise.any():
        return x
    spec = _as_spec(x)
    mag = np.sqrt(spec.power)
    gain = 1.0 - (np.float32(gamma) * noise) / (_smooth3(mag) + np.float32(1e-9))
    np.maximum(gain, GAIN_FLOOR, out=gain)
    out = Spec(spec.X * gain, spec.n, spec.power * (gain * gain))
    return out if isinstance(x, Spec) else istft(out)


# --------------------------------------------------------------------------- S3-4: locate, trim, smooth


def frame_scores(x) -> np.ndarray:
    """Per-frame informativeness: normalised energy / normalised spectral entropy.

    energy term  E_j = clip(1 + (dB_j - max dB) / 40, 0, 1)  (1 at the loudest frame)
    entropy term H_j = -sum p log p / log(50), p the frame's power over 50 bands of 160 Hz
    score        s_j = E_j / max(H_j, 0.05)
    Loud or structured (low-entropy) frames score high; a flat noise floor 20 dB down scores ~0.5.
    """
    spec = _as_spec(x)
    e = spec.energy_db
    inner = e[1:-1] if len(e) > 3 else e
    E = np.clip(1.0 + (e - inner.max()) * (1.0 / SCORE_RANGE_DB), 0.0, 1.0)
    # 4-bin bands (DC dropped): the entropy of 50 bands tracks the 201-bin one at a quarter of the logs.
    pw = spec.power  # 4-bin bands by strided adds (no BLAS: its threads stall on a busy machine)
    P = pw[:, 1::4] + pw[:, 2::4] + pw[:, 3::4] + pw[:, 4::4] + np.float32(1e-20)
    p = P / P.sum(axis=1, keepdims=True)
    H = -(p * np.log(p)).sum(axis=1) * (1.0 / np.log(N_BANDS))
    return E / np.maximum(H, 0.05)


def core_locate(x) -> tuple[int, int]:
    """Alg. 1 `core_locate`: the contiguous span maximising the summed score (s_j - 0.6).

    Maximum-sum subarray over frames (vectorised Kadane via prefix sums): informative frames add,
    uninformative ones subtract, so the span is the densest informative region. Returns sample
    bounds [start, end).
    """
    spec = _as_spec(x)
    v = frame_scores(spec) - SCORE_THRESHOLD
    v[v < 0] *= GAP_WEIGHT
    c = np.concatenate([[0.0], np.cumsum(v)])
    best_before = np.minimum.accumulate(c)[:-1]  # best start prefix for each end
    j = int(np.argmax(c[1:] - best_before)) + 1  # span is frames [i, j)
    i = int(np.argmin(c[:j]))
    start = max(0, i * HOP - HOP // 2)  # frame j is centred on sample j * HOP
    end = min(spec.n, (j - 1) * HOP + HOP // 2)
    return start, max(end, start + 1)


def snap_span(n: int, span: tuple[int, int], delta: float = 0.2) -> tuple[int, int]:
    """Nearest delta-grid bounds [a, b) for `span` inside a clip of n >= delta samples (grid from sample 0)."""
    g = int(round(delta * SAMPLE_RATE))
    top = (n // g) * g
    a = max(0, min(int(np.floor(span[0] / g + 0.5)) * g, top - g))
    b = min(int(np.floor(span[1] / g + 0.5)) * g, top)
    if b - a < g:  # the span snapped to nothing: keep one delta from its start
        b = a + g
    return a, b


def boundary_norm(x: np.ndarray, span: tuple[int, int], delta: float = 0.2) -> np.ndarray:
    """Alg. 1 `boundary_norm`: snap both ends of `span` to the nearest delta (200 ms = c/2) boundary.

    The grid starts at sample 0, so the result's length is a whole number of delta; a span that
    snaps to nothing keeps one delta around its start; a clip shorter than delta is zero-padded.
    Returns `x` itself when the snapped span is the whole clip.
    """
    x = np.asarray(x, dtype=np.float32)
    g = int(round(delta * SAMPLE_RATE))
    if len(x) < g:
        return np.pad(x, (0, g - len(x)))
    a, b = snap_span(len(x), span, delta)
    if a == 0 and b == len(x):
        return x
    return x[a:b].copy()


def hann_ramp(m: int) -> np.ndarray:
    """Rising half of a Hann window over m samples, starting at exactly 0."""
    return (np.sin(0.5 * np.pi * np.arange(m) / m) ** 2).astype(np.float32)


def spec_smooth(x: np.ndarray, omega: float = 0.02, *, start: bool = True, end: bool = True) -> np.ndarray:
    """Alg. 1 `spec_smooth`: Hann taper of omega (20 ms) at both ends (Appendix)."""
    y = np.array(x, dtype=np.float32, copy=True)
    m = min(int(round(omega * SAMPLE_RATE)), len(y) // 2)
    if m > 0:
        r = hann_ramp(m)
        if start:
            y[:m] *= r
        if end:
            y[len(y) - m :] *= r[::-1]
    return y


# --------------------------------------------------------------------------- Alg. 1


def tfjp(
    x: np.ndarray,
    tau: float = 0.3,
    K: int = 3,
    omega: float = 0.02,
    delta: float = 0.2,
    gamma: float = 1.0,
    max_passes: int = 4,
) -> np.ndarray:
    """Alg. 1 "TFJP Module Pipeline" on one 16 kHz mono clip.

    S1-2 (up to K times): silence_cut -> noise_profile -> denoise on one STFT, break when
    `stable` (nothing cut and no separable noise left); S3 core_locate; S4 boundary_norm ->
    spec_smooth; final silence_cut, and back to S1 if it changed the clip (at most `max_passes`).
    The result's length is a multiple of delta. Idempotent: a clip TFJP returned is a fixed point
    (an end that boundary_norm leaves in place and that already starts at zero is not tapered again).
    """
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    if x.size == 0:
        raise ValueError("tfjp: empty clip")
    spec: Spec | None = None  # STFT of x when known (the last final check's), else recomputed
    out = x
    for _ in range(max_passes):
        for k in range(K):  # S1-2: cut and norm, one STFT per iteration
            if spec is None or k > 0:
                spec = stft(x)
            spec, dropped = _cut_frames(spec, tau)
            noise = noise_profile(spec)
            spec = denoise(spec, noise, gamma)
            if dropped or noise.any():
                x = istft(spec)
            # stable(x, n): this iteration cut nothing and the denoised spectrum has no separable noise left.
            if dropped == 0 and _noise_frames(spec) is None:
                break
        a, b = core_locate(spec)  # S3, on the loop's last (shared) spectrum
        out = boundary_norm(x, (a, b), delta)  # S4
        # (a clip shorter than delta came back zero-padded: count its end as moved)
        sa, sb = snap_span(len(x), (a, b), delta) if len(out) <= len(x) else (0, len(x) - 1)
        # An end that boundary_norm left in place and that already sits at zero was tapered by an
        # earlier pass: tapering it again would change it. Moved ends are always tapered.
        out = spec_smooth(out, omega, start=sa > 0 or out[0] != 0.0, end=sb < len(x) or out[-1] != 0.0)
        final = stft(out)  # final check, one more STFT
        cut, dropped = _cut_frames(final, tau)
        if dropped:  # changed(x', x~): goto S1
            x, spec = istft(cut), None
            continue
        # Return once the clip is a fixed point of S1-S4 (nothing to cut, no separable noise, core
        # = whole clip), all read off the final check's STFT: this makes TFJP idempotent. The paper
        # returns as soon as silence_cut changes nothing; trimming can expose new noise statistics
        # or a tighter core, and then we run S1 once more on the trimmed clip instead.
        if _noise_frames(final) is None and snap_span(len(out), core_locate(final), delta) == (0, len(out)):
            return out
        x, spec = out, final
    return out


# --------------------------------------------------------------------------- CLI


AUDIO_EXTS = {".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif"}


def tfjp_file(in_path: str | Path, out_path: str | Path, cfg: TFJPConfig | None = None) -> list[dict]:
    """`soundflow tfjp IN OUT`: one file to one file, or every audio file of a folder (recursively)
    into OUT with the same relative paths (as .wav when the input's format cannot be written)."""
    from soundflow.audio import load_audio, write_audio

    cfg = cfg or TFJPConfig()
    src, dst = Path(in_path), Path(out_path)
    if src.is_dir():
        pairs = [
            (p, (dst / p.relative_to(src)).with_suffix(p.suffix if p.suffix.lower() in {".wav", ".flac"} else ".wav"))
            for p in sorted(src.rglob("*"))
            if p.is_file() and p.suffix.lower() in AUDIO_EXTS
        ]
    else:
        pairs = [(src, dst / (src.stem + ".wav") if dst.is_dir() else dst)]
    report = []
    for p, q in pairs:
        wave = load_audio(p)
        y = cfg(wave)
        q.parent.mkdir(parents=True, exist_ok=True)
        write_audio(q, y)
        report.append({"in": str(p), "out": str(q), "in_s": len(wave) / SAMPLE_RATE, "out_s": len(y) / SAMPLE_RATE})
    return report
