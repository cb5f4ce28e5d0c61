"""ambience.py: synthesised and augmented ambience for the trigger's negatives — seed-pure,
finite, at the stated levels, and what each source claims to be — and recorded ambience taken
from Debian packages (real .deb files built here)."""

import io
import shutil
import subprocess
import zipfile

import numpy as np
import pytest
import soundfile as sf

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


def _deb(tmp_path, package, files):
    """A real .deb (dpkg-deb --build) holding `files` {path: bytes}."""
    root = tmp_path / f"{package}-root"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {package}\nVersion: 1.0-1\nArchitecture: all\n"
                                             "Maintainer: t <t@t>\nDescription: test\n")
    out = tmp_path / "debs" / f"{package}_1.0-1_all.deb"
    out.parent.mkdir(exist_ok=True)
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(root), str(out)], check=True, capture_output=True)
    return out


def _sound(seconds, sr, fmt="WAV"):
    buf = io.BytesIO()
    t = np.arange(int(seconds * sr)) / sr
    sf.write(buf, np.stack([0.1 * np.sin(2 * np.pi * 220 * t)] * 2, 1), sr, format=fmt)  # stereo: mixed down
    return buf.getvalue()


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb (Debian/Ubuntu) builds the test packages")
def test_install_ambience_takes_wanted_files_from_debs_and_a_zip_inside_one(tmp_path):
    from soundflow.ambience import DebAmbience, install_ambience
    from soundflow.data import read_jsonl

    city = DebAmbience("city-data", "CC0", r"^usr/share/games/city/sounds/[^/]+\.wav$", exclude=("Harbor",))
    zipped = DebAmbience("zip-data", "CC-BY", r"^audio/ambient/[^/]+\.ogg$", inner_zip="usr/share/games/z/public.zip",
                         min_s=2.0)
    _deb(tmp_path, "city-data", {"usr/share/games/city/sounds/TraficLow1.wav": _sound(1.5, 22050),
                                 "usr/share/games/city/sounds/Harbor1.wav": _sound(1.5, 22050),  # a horn: left out
                                 "usr/share/games/city/music/song.wav": _sound(1.5, 22050)})  # not ambience
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("audio/ambient/rain.ogg", _sound(3.0, 44100, "OGG"))
        z.writestr("audio/ambient/drip.ogg", _sound(1.0, 44100, "OGG"))  # under min_s
        z.writestr("audio/ambient/broken.ogg", b"not audio")  # skipped, said so
    _deb(tmp_path, "zip-data", {"usr/share/games/z/public.zip": zbuf.getvalue()})
    said = []
    out = install_ambience(tmp_path / "amb", debs=tmp_path / "debs", specs=(city, zipped), log=said.append)
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["city_sounds_TraficLow1", "zip_audio_ambient_rain"]
    assert [r["duration"] for r in rows] == [1.5, 3.0] and {r["kind"] for r in rows} == {"ambient"}
    assert rows[0]["license"] == "CC0" and rows[1]["source"] == "Debian zip-data 1.0-1: audio/ambient/rain.ogg"
    x, sr = sf.read(out.parent / rows[1]["audio"])
    assert sr == 16000 and x.ndim == 1 and len(x) == 48000
    assert any("broken.ogg" in s for s in said)
    said.clear()  # idempotent: nothing is fetched again
    assert install_ambience(tmp_path / "amb", debs=tmp_path / "nowhere", specs=(city, zipped), log=said.append) == out
    assert sum("already" in s for s in said) == 2 and read_jsonl(out) == rows


def test_install_ambience_without_the_package_says_how_to_get_it(tmp_path, monkeypatch):
    from soundflow import ambience

    monkeypatch.setattr(ambience.shutil, "which", lambda name: "/usr/bin/dpkg-deb" if name == "dpkg-deb" else None)
    with pytest.raises(RuntimeError, match="apt-get is needed.*--debs"):
        ambience.install_ambience(tmp_path / "amb", debs=tmp_path, specs=ambience.AMBIENCE_DEBS[:1], log=lambda s: None)
