"""Make synthetic speech sound less synthetic: speed perturbation, room reverberation, telephone
band-limiting, level changes (issue: many real voices). Each is measured by the ASR gate's pass
rate (`soundflow bench voices --augment ...`, BENCHMARKS.md).

Effects are drawn once per speaker, like the voice: one dialogue happens in one room, over one
line, at one level. They are applied to each rendering before the ASR gate, so the gate judges
what the stream will hold, and a failing re-render keeps the same effects.

- speed: the waveform resampled by a factor (tempo and pitch together, as Kaldi-style speed
  perturbation; the TTS speed input changes tempo only);
- reverb: a shoebox room's impulse response from pyroomacoustics (image source method, wall
  absorption from the drawn RT60 by Sabine's formula), the direct-path delay removed so the
  speech start and end stay where they were, at most `REVERB_TAIL_S` of tail kept;
- telephone: 300-3400 Hz band-pass and an 8 kHz round trip (narrowband line);
- level: a gain in dB, clipped at full scale;
- eq: one peaking band (RBJ biquad) at a log-uniform centre frequency, boost or cut: another
  microphone, another room's colour.

The same effects serve sound-event clips (recipe `event_augment`, drawn once per clip, after its
crop): a model trained on a few hundred recordings per class otherwise learns those recordings,
not the class.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

from .audio import SAMPLE_RATE

SPEED_RANGE = (0.9, 1.1)
RT60_RANGE = (0.2, 0.7)  # seconds: a furnished living room to a bare kitchen
ROOM_RANGE = ((3.0, 8.0), (3.0, 7.0), (2.4, 3.2))  # metres, x / y / height
REVERB_TAIL_S = 0.3
TELEPHONE_BAND = (300.0, 3400.0)
TELEPHONE_RATE = 8000
LEVEL_DB_RANGE = (-18.0, 6.0)
EQ_FREQ_RANGE = (150.0, 6000.0)  # Hz, centre of the band, drawn log-uniform
EQ_GAIN_DB_RANGE = (-12.0, 12.0)
EQ_Q_RANGE = (0.7, 2.0)
EFFECTS = ("speed", "reverb", "telephone", "level", "eq")


@dataclass(frozen=True)
class Effects:
    """One speaker's drawn effects; the identity by default."""

    speed: float = 1.0
    rt60: float = 0.0  # 0: dry
    room: tuple[float, float, float] = (0.0, 0.0, 0.0)
    source: tuple[float, float, float] = (0.0, 0.0, 0.0)
    mic: tuple[float, float, float] = (0.0, 0.0, 0.0)
    telephone: bool = False
    gain_db: float = 0.0
    eq: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (centre Hz, gain dB, Q); 0 Hz: flat

    def apply(self, wave: np.ndarray) -> np.ndarray:
        x = np.asarray(wave, np.float32)
        if self.speed != 1.0:
            import soxr

            x = soxr.resample(x, SAMPLE_RATE * self.speed, SAMPLE_RATE)
        if self.rt60 > 0:
            x = _reverberate(x, self)
        if self.telephone:
            x = _telephone(x)
        if self.eq[0] > 0:
            x = _peaking_eq(x, *self.eq)
        if self.gain_db:
            x = np.clip(x * np.float32(10 ** (self.gain_db / 20)), -1.0, 1.0)  # a loud speaker clips
        return np.asarray(x, np.float32)

    def to_json(self) -> dict:
        d = asdict(self)
        return {k: (np.round(v, 3).tolist() if isinstance(v, tuple) else round(v, 3) if isinstance(v, float) else v)
                for k, v in d.items()}


@dataclass(frozen=True)
class Augment:
    """Probability of each effect per speaker (recipe `tts.augment: {speed: 0.3, reverb: 0.3, ...}`)."""

    speed: float = 0.0
    reverb: float = 0.0
    telephone: float = 0.0
    level: float = 0.0
    eq: float = 0.0

    @classmethod
    def from_config(cls, cfg: dict | None, where: str = "tts.augment") -> "Augment | None":
        if not cfg:
            return None
        unknown = set(cfg) - set(EFFECTS)
        if unknown:
            raise ValueError(f"{where}: unknown effects {sorted(unknown)} (known: {', '.join(EFFECTS)})")
        return cls(**{k: float(v) for k, v in cfg.items()})

    def draw(self, rng: np.random.Generator) -> Effects:
        """The same number of draws whatever the probabilities (the rng advances alike), except that
        the EQ band is drawn only when `eq` > 0: recipes written before it keep their streams."""
        u = rng.random(4)
        speed = float(rng.uniform(*SPEED_RANGE))
        rt60 = float(rng.uniform(*RT60_RANGE))
        room = tuple(float(rng.uniform(*r)) for r in ROOM_RANGE)
        rel = rng.uniform(0.15, 0.85, size=(2, 3))  # source and mic inside the room, off the walls
        gain = float(rng.uniform(*LEVEL_DB_RANGE))
        rev = bool(u[1] < self.reverb)
        return Effects(speed=speed if u[0] < self.speed else 1.0, rt60=rt60 if rev else 0.0,
                       room=room if rev else (0.0, 0.0, 0.0),
                       source=tuple(float(a * b) for a, b in zip(rel[0], room)) if rev else (0.0, 0.0, 0.0),
                       mic=tuple(float(a * b) for a, b in zip(rel[1], room)) if rev else (0.0, 0.0, 0.0),
                       telephone=bool(u[2] < self.telephone), gain_db=gain if u[3] < self.level else 0.0,
                       eq=self._draw_eq(rng))

    def _draw_eq(self, rng: np.random.Generator) -> tuple[float, float, float]:
        if self.eq <= 0:
            return (0.0, 0.0, 0.0)
        u, f, g, q = rng.random(), rng.uniform(*np.log(EQ_FREQ_RANGE)), rng.uniform(*EQ_GAIN_DB_RANGE), rng.uniform(*EQ_Q_RANGE)
        return (float(np.exp(f)), float(g), float(q)) if u < self.eq else (0.0, 0.0, 0.0)


def only(effect: str) -> Augment:
    """An `Augment` that always applies `effect` and nothing else (for measuring one effect)."""
    if effect not in EFFECTS:
        raise ValueError(f"unknown effect {effect!r} (known: {', '.join(EFFECTS)})")
    return Augment(**{effect: 1.0})


@functools.lru_cache(maxsize=64)
def room_impulse_response(rt60: float, room: tuple, source: tuple, mic: tuple) -> np.ndarray:
    """Shoebox RIR at 16 kHz, starting at its direct path, unit peak (cached: one per speaker)."""
    import pyroomacoustics as pra

    absorption, max_order = pra.inverse_sabine(rt60, list(room))
    r = pra.ShoeBox(list(room), fs=SAMPLE_RATE, materials=pra.Material(absorption), max_order=min(max_order, 40))
    r.add_source(list(source))
    r.add_microphone(np.array(mic, float)[:, None])
    r.compute_rir()
    h = np.asarray(r.rir[0][0], np.float64)
    h = h[int(np.argmax(np.abs(h))):]  # drop the propagation delay: speech keeps its timing
    return (h / np.abs(h).max()).astype(np.float32)


def _reverberate(x: np.ndarray, fx: Effects) -> np.ndarray:
    from scipy.signal import fftconvolve

    h = room_impulse_response(fx.rt60, fx.room, fx.source, fx.mic)
    y = fftconvolve(x, h)[: len(x) + int(REVERB_TAIL_S * SAMPLE_RATE)]
    peak = np.abs(y).max()
    return (y * (np.abs(x).max() / peak) if peak > 0 else y).astype(np.float32)  # same peak as dry


def _peaking_eq(x: np.ndarray, freq: float, gain_db: float, q: float) -> np.ndarray:
    """One peaking band (Audio EQ Cookbook biquad); a boost is limited to full scale."""
    from scipy.signal import lfilter

    a_ = 10 ** (gain_db / 40)
    w = 2 * np.pi * min(freq, 0.45 * SAMPLE_RATE) / SAMPLE_RATE
    alpha = np.sin(w) / (2 * q)
    b = np.array([1 + alpha * a_, -2 * np.cos(w), 1 - alpha * a_])
    a = np.array([1 + alpha / a_, -2 * np.cos(w), 1 - alpha / a_])
    return np.clip(lfilter(b / a[0], a / a[0], x), -1.0, 1.0).astype(np.float32)


def _telephone(x: np.ndarray) -> np.ndarray:
    import soxr
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, TELEPHONE_BAND, btype="bandpass", fs=SAMPLE_RATE, output="sos")
    y = sosfiltfilt(sos, x).astype(np.float32)
    return soxr.resample(soxr.resample(y, SAMPLE_RATE, TELEPHONE_RATE), TELEPHONE_RATE, SAMPLE_RATE)[: len(x)]
