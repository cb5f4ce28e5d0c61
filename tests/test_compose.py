"""Dual-track composition (paper Alg. 3): reply chunks, role gains, noise SNRs, tiling, clipping."""

import numpy as np
import pytest

from soundflow.audio import SAMPLE_RATE as SR
from soundflow.compose import Event, compose, reply_chunk, tile_crossfade
from soundflow.tfjp import tfjp


def tone(seconds: float, f: float = 300.0, amp: float = 0.2, rng=None) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    x = amp * np.sin(2 * np.pi * f * t)
    if rng is not None:
        x = x + 0.02 * rng.standard_normal(len(t))
    return x.astype(np.float32)


def db(p: float) -> float:
    return 10 * np.log10(p)


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def test_reply_chunk_is_the_chunk_containing_the_end():
    c = int(0.4 * SR)
    assert reply_chunk(int(0.8 * SR), c) == 1  # ends exactly at 0.8 s: chunk 0.4-0.8
    assert reply_chunk(int(0.81 * SR), c) == 2  # 0.81 s: chunk 0.8-1.2
    assert reply_chunk(1, c) == 0
    assert reply_chunk(int(0.4 * SR) + 1, c) == 1


def test_replies_land_on_the_right_chunk_on_and_off_grid():
    rng = np.random.default_rng(0)
    events = [
        Event(tone(0.8), response="a"),  # 0.0-0.8: on the grid -> chunk 1
        Event(tone(0.01), response="b"),  # 0.8-0.81: just past it -> chunk 2
        Event(tone(0.39)),  # 0.81-1.2: no reply
        Event(tone(0.5), duration=0.1, response="c"),  # reply due 0.1 s into a clip at 1.2 s -> 1.3 -> chunk 3
        Event(tone(0.3), response="d"),  # 1.7-2.0 -> chunk 4
        Event(tone(1.0, f=900), role="background", response="ignored"),  # bg never replies
    ]
    y, timeline, info = compose(events, None, None, rng)
    assert timeline == [{"chunk": 1, "text": "a"}, {"chunk": 2, "text": "b"}, {"chunk": 3, "text": "c"}, {"chunk": 4, "text": "d"}]
    assert len(y) == int(2.0 * SR)
    assert [e.get("reply_chunk") for e in info["events"]] == [1, 2, None, 3, 4, None]
    assert info["events"][4]["offset_s"] == pytest.approx(1.7)


def _scene(rng):
    return [
        Event(tone(1.5, 220, rng=rng), response="hello", provenance={"id": "fg1"}),
        Event(tone(1.0, 1200, amp=0.5), role="background", provenance={"id": "bg"}),
        Event(tone(2.0, 330, rng=rng), response="world", provenance={"id": "fg2"}),
        Event(tone(1.2, 2500, amp=0.05), role="ambient", provenance={"id": "amb"}),
    ]


def test_role_gains_and_snrs_measured_on_the_output():
    rng = np.random.default_rng(1)
    noise_a = rng.standard_normal(int(0.9 * SR)).astype(np.float32)  # shorter than the stream: tiled
    noise_b = [rng.standard_normal(int(5.0 * SR)).astype(np.float32) * 3]  # a pool to draw from
    y, timeline, info = compose(_scene(np.random.default_rng(2)), noise_a, noise_b, np.random.default_rng(3), debug=True)
    stems = info["stems"]
    assert info["peak_scale"] == 1.0
    assert np.allclose(y, sum(stems.values()), atol=1e-6)
    fg = stems["foreground"]
    for ev in info["events"]:
        if ev["role"] == "foreground":
            continue
        a = int(round(ev["offset_s"] * SR))
        clip = stems[ev["role"]][a : a + int(round(ev["length_s"] * SR))]
        measured = db(power(clip) / power(fg))
        assert abs(measured - ev["gain_db"]) < 0.5
        assert ev["gain_db"] == {"background": -6.0, "ambient": -12.0}[ev["role"]]
    s1, s2 = info["noise_event"]["snr_db"], info["noise_ambient"]["snr_db"]
    assert 5 <= s1 <= 20 and 10 <= s2 <= 25  # ambient track held 5 dB quieter
    assert abs(db(power(fg) / power(stems["noise_event"])) - s1) < 0.5
    assert abs(db(power(fg) / power(stems["noise_ambient"])) - s2) < 0.5
    assert [e["provenance"]["id"] for e in info["events"]] == ["fg1", "bg", "fg2", "amb"]

    # Without debug stems: the same seed with and without noise differs by exactly the noise tracks.
    y0, _, _ = compose(_scene(np.random.default_rng(2)), None, None, np.random.default_rng(3))
    y1, t1, _ = compose(_scene(np.random.default_rng(2)), noise_a, noise_b, np.random.default_rng(3))
    assert t1 == timeline and np.array_equal(y1, y)
    expected = -db(10 ** (-s1 / 10) + 10 ** (-s2 / 10))
    assert abs(db(power(fg) / power(y1 - y0)) - expected) < 0.5


def test_the_mix_is_peak_normalised_only_if_it_would_clip():
    rng = np.random.default_rng(4)
    quiet = compose([Event(tone(1.0, amp=0.1))], rng.standard_normal(SR).astype(np.float32), None, rng)
    assert quiet[2]["peak_scale"] == 1.0
    loud = compose([Event(tone(1.0, amp=0.98))], rng.standard_normal(SR).astype(np.float32), None, rng, snr_db=(5, 5))
    assert loud[2]["peak_scale"] < 1.0
    assert np.abs(loud[0]).max() == pytest.approx(0.99, abs=1e-6)


def test_tile_crossfade_keeps_length_and_power():
    rng = np.random.default_rng(5)
    n = rng.standard_normal(int(0.7 * SR)).astype(np.float32)
    track, start = tile_crossfade(n, 10 * SR, int(0.2 * SR), rng)
    assert len(track) == 10 * SR and 0 <= start < len(n)
    seg = track.reshape(50, -1)  # 200 ms pieces: joins included
    assert np.all(np.abs(db(np.mean(seg**2, axis=1) / power(n))) < 1.0)
    short, _ = tile_crossfade(n, 1000, 100, rng)  # long enough: a plain excerpt
    assert len(short) == 1000 and np.any([np.array_equal(short, n[i : i + 1000]) for i in range(len(n) - 999)])


def test_foreground_fades_and_tfjp_reapplied():
    rng = np.random.default_rng(6)
    events = [Event(tone(0.93, rng=rng), response="x"), Event(tone(1.37, 500, rng=rng))]
    y, timeline, info = compose(events, None, None, rng, tfjp=tfjp)
    assert len(y) % int(0.2 * SR) == 0  # every clip went through TFJP: grid-aligned lengths
    first = int(round(info["events"][0]["length_s"] * SR))
    assert timeline == [{"chunk": reply_chunk(first, int(0.4 * SR)), "text": "x"}]
    assert y[0] == 0.0 and y[first - 1] == 0.0 and y[first] == 0.0  # omega fades at each junction


def test_event_role_is_validated():
    with pytest.raises(ValueError):
        Event(np.zeros(10), role="music")
