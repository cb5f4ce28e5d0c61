"""Speech-free ambience beyond the noise library: the sound trigger's negatives (issue 10).

An always-on model hears hours of nothing in particular, and a false reply per hour is already
one too many; a trigger fitted on a few minutes of distinct ambience speaks up at ambience it has
never heard (83 false replies per hour of the held-out half of the noise library, 66 of them over
one recording of 50 Hz mains hum, BENCHMARKS.md). Three sources make more of it, offline:

- `augmented_ambience`: the library's own recordings through `augment.Effects` drawn per block
  (speed 0.7-1.4 — hum at 35-70 Hz, a fan at another speed —, one EQ band, a level): the same
  rooms, other machines and microphones;
- `synthetic_ambience`: what mains-powered homes and offices hum with — mains hum with random
  harmonics, fans and air handling (filtered noise with a blade-rate flutter), motors (a pulse
  train at a wandering rate), coloured noise with a slow swell — and mixes of two;
- `install_ambience` (`soundflow data ambience`): about 40 min of real recordings from three
  Debian data packages, a manifest in the noise library's format for
  `soundflow trigger fit --ambient-manifest`.

The first two are seed-pure. Neither is ever played by `bench ambient`, which holds out recordings, not
these: a measure of ambience the fit never heard.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.signal import butter, sosfilt

from .audio import SAMPLE_RATE, load_audio
from .augment import EQ_FREQ_RANGE, EQ_GAIN_DB_RANGE, EQ_Q_RANGE, Effects
from .compose import colored_noise, dbfs_to_rms
from .data import read_jsonl, write_jsonl

AMBIENT_SPEED_RANGE = (0.7, 1.4)  # wider than for speech (augment.SPEED_RANGE): ambience has no voice to keep
AMBIENT_LEVEL_DB_RANGE = (-12.0, 8.0)  # per block, clipped at full scale
AMBIENT_BLOCK_S = 20.0  # one draw of effects per block: a machine runs for a while
SYNTH_SEGMENT_S = (5.0, 30.0)  # as `bench.ambient.SEGMENT_S`
SYNTH_LEVEL_DBFS = (-50.0, -12.0)
SYNTH_MIX_P = 0.4  # share of segments with a second source under the first
SYNTH_MIX_DB = (-20.0, 0.0)  # the second source's level relative to the first
MAINS_HZ = (50.0, 60.0)


def _rms_to(x: np.ndarray, dbfs: float) -> np.ndarray:
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12) * dbfs_to_rms(dbfs)).astype(np.float32)


def _hum(n: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum (or a transformer's, a fridge's): a fundamental with decaying random harmonics."""
    t = np.arange(n) / SAMPLE_RATE
    f0 = (float(rng.choice(MAINS_HZ)) if rng.random() < 0.6 else rng.uniform(40.0, 130.0)) * (1 + rng.uniform(-0.01, 0.01))
    alpha, x = rng.uniform(0.2, 1.5), np.zeros(n)
    for k in range(1, int(rng.integers(3, 40))):
        if k * f0 > 7000:
            break
        x += rng.uniform(0.2, 1.0) * k**-alpha * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
    return x + colored_noise(n, rng, "pink", 0.0) * np.std(x) * 10 ** (rng.uniform(-40, -5) / 20)


def _fan(n: int, rng: np.random.Generator) -> np.ndarray:
    """A fan or air handling: low-passed noise with a blade-rate flutter, sometimes a motor whine."""
    t = np.arange(n) / SAMPLE_RATE
    x = sosfilt(butter(2, rng.uniform(150.0, 4000.0), "low", fs=SAMPLE_RATE, output="sos"),
                colored_noise(n, rng, str(rng.choice(["white", "pink", "brown"])), 0.0))
    x *= 1 + rng.uniform(0.0, 0.4) * np.sin(2 * np.pi * rng.uniform(3.0, 40.0) * t)
    if rng.random() < 0.5:
        x += np.std(x) * rng.uniform(0.1, 1.0) * np.sin(2 * np.pi * rng.uniform(80.0, 400.0) * t)
    return x


def _motor(n: int, rng: np.random.Generator) -> np.ndarray:
    """A motor or engine at idle: a low-passed pulse train whose rate wanders slowly."""
    t = np.arange(n) / SAMPLE_RATE
    rate = rng.uniform(20.0, 150.0) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t))
    x = (np.mod(np.cumsum(rate) / SAMPLE_RATE, 1.0) < rng.uniform(0.05, 0.5)).astype(np.float64)
    x = sosfilt(butter(2, rng.uniform(300.0, 3000.0), "low", fs=SAMPLE_RATE, output="sos"), x - x.mean())
    return x + np.std(x) * 10 ** (rng.uniform(-30, 0) / 20) * colored_noise(n, rng, "pink", 0.0)


def _swell(n: int, rng: np.random.Generator) -> np.ndarray:
    """Coloured noise whose level swells slowly (wind, distant traffic, a room's air)."""
    t = np.arange(n) / SAMPLE_RATE
    return colored_noise(n, rng, str(rng.choice(["white", "pink", "brown"])), 0.0) * (
        1 + rng.uniform(0.0, 0.5) * np.sin(2 * np.pi * rng.uniform(0.02, 0.3) * t))


SOURCES = {"hum": _hum, "fan": _fan, "motor": _motor, "swell": _swell}


def synthetic_ambience(minutes: float, seed: int = 0) -> np.ndarray:
    """`minutes` of synthesised ambience at 16 kHz: segments of 5-30 s, each one source of
    `SOURCES` (or two, mixed), at -50 to -12 dBFS."""
    rng = np.random.default_rng(seed)
    total, pieces, got, names = int(minutes * 60 * SAMPLE_RATE), [], 0, sorted(SOURCES)
    while got < total:
        n = int(rng.uniform(*SYNTH_SEGMENT_S) * SAMPLE_RATE)
        x = _rms_to(SOURCES[names[rng.integers(len(names))]](n, rng), 0.0)
        if rng.random() < SYNTH_MIX_P:
            x = x + _rms_to(SOURCES[names[rng.integers(len(names))]](n, rng), rng.uniform(*SYNTH_MIX_DB))
        pieces.append(_rms_to(x, rng.uniform(*SYNTH_LEVEL_DBFS)))
        got += n
    return np.clip(np.concatenate(pieces)[:total] if pieces else np.zeros(0), -1.0, 1.0).astype(np.float32)


def augmented_ambience(wave: np.ndarray, seed: int = 0, block_s: float = AMBIENT_BLOCK_S) -> np.ndarray:
    """`wave` with `augment.Effects` (speed, one EQ band, level) drawn per `block_s` block. Speed
    changes each block's length, so the result is about as long as `wave`, not exactly."""
    rng = np.random.default_rng(seed)
    blk, out = int(block_s * SAMPLE_RATE), []
    lo, hi = np.log(EQ_FREQ_RANGE[0]), np.log(EQ_FREQ_RANGE[1])
    for i in range(0, len(wave), blk):
        fx = Effects(speed=float(rng.uniform(*AMBIENT_SPEED_RANGE)),
                     eq=(float(np.exp(rng.uniform(lo, hi))), float(rng.uniform(*EQ_GAIN_DB_RANGE)), float(rng.uniform(*EQ_Q_RANGE))),
                     gain_db=float(rng.uniform(*AMBIENT_LEVEL_DB_RANGE)))
        out.append(fx.apply(np.asarray(wave[i: i + blk], np.float32)))
    return np.clip(np.concatenate(out) if out else np.zeros(0), -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Recorded ambience from Debian packages: `soundflow data ambience`
# --------------------------------------------------------------------------------------------
#
# The noise library holds 3.4 min of distinct ambience on each side of its split; three Debian
# data packages hold about 40 min more of real recordings (weather, water, forests by day and
# night, traffic, industry, mills and power plants), reachable wherever apt is. As trigger
# negatives beside the library's they cut held-out false replies at a given recall (BENCHMARKS.md).
# A negative must be something the model should never answer, so files whose sound the proactive
# policy answers (thunder, ships' and trains' horns, farm animals, hammering like knocking) or
# that may hold voices (schools, markets, crowds) are left out by name.


@dataclass(frozen=True)
class DebAmbience:
    """One Debian package's ambience: members matching `pattern` (inside `inner_zip` when set),
    at least `min_s` long, none whose path contains an `exclude` fragment."""

    package: str
    license: str
    pattern: str
    inner_zip: str | None = None
    min_s: float = 0.0
    exclude: tuple[str, ...] = ()

    def wanted(self, path: str) -> bool:
        return re.search(self.pattern, path) is not None and not any(x in path for x in self.exclude)


AMBIENCE_DEBS = (
    DebAmbience("megaglest-data", "CC-BY-SA-3.0 (the MegaGlest team; the package's copyright file)",
                r"^usr/share/games/megaglest/tilesets/[^/]+/sounds/[^/]+\.(ogg|wav)$", min_s=10.0,
                exclude=("/hell/",)),  # one-shot animal calls are under 10 s; hell's is no place on earth
    DebAmbience("lincity-ng-data", "GPL-2+ or CC-BY-SA-2.0 (LinCity-NG; the package's copyright file)",
                r"^usr/share/games/lincity-ng/sounds/[^/]+\.wav$",
                exclude=("Residential", "Market", "School", "University", "SportsCroud", "Health", "Shanty", "Commune",
                         "Monument", "Build", "Raze", "Fire", "Rocket", "Click", "Window",  # voices, alarms, one-shot events
                         "Harbor", "RailTrain", "Farm", "Blacksmith", "DirtTrack")),  # horns, animals, hammering
    DebAmbience("0ad-data", "CC-BY-SA-3.0 (Wildfire Games; audio/LICENSE.txt in public.zip)",
                r"^audio/ambient/(weather|dayscape|water)/[^/]+\.ogg$",
                inner_zip="usr/share/games/0ad/mods/public/public.zip", exclude=("thunder",)),
)
AMBIENCE_SETUP_COMMAND = "soundflow data ambience"


def ambience_dir() -> Path:
    from .weights import cache_dir

    return cache_dir() / "ambience"


def _deb_of(spec: DebAmbience, debs: Path | None, tmp: Path, log) -> Path:
    """The package's .deb: from `debs` when there, else `apt-get download` into `tmp`."""
    found = sorted(debs.glob(f"{spec.package}_*.deb")) if debs else []
    if found:
        return found[-1]
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError(f"apt-get is needed to fetch {spec.package} (or pass --debs DIR holding its .deb)")
    log(f"+ apt-get download {spec.package}")
    out = subprocess.run([apt, "download", spec.package], cwd=tmp, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"apt-get download {spec.package} failed: {out.stderr.strip()[-300:]}")
    return next(tmp.glob(f"{spec.package}_*.deb"))


def _deb_members(deb: Path, spec: DebAmbience, tmp: Path):
    """(path, bytes) of the wanted members, streaming the package's data tarball."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    inner = None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as t:
        for m in t:
            path = m.name.removeprefix("./")
            if not m.isfile():
                continue
            if spec.inner_zip and path == spec.inner_zip:  # a zip needs its end first: copy it out
                inner = tmp / Path(path).name
                with open(inner, "wb") as f:
                    shutil.copyfileobj(t.extractfile(m), f, 1 << 20)
            elif not spec.inner_zip and spec.wanted(path):
                yield path, t.extractfile(m).read()
    if proc.wait():
        raise RuntimeError(f"dpkg-deb could not read {deb}")
    if spec.inner_zip:
        if inner is None:
            raise RuntimeError(f"{deb.name}: no {spec.inner_zip}")
        with zipfile.ZipFile(inner) as z:
            for name in sorted(z.namelist()):
                if spec.wanted(name):
                    yield name, z.read(name)
        inner.unlink()


def install_ambience(root: Path | None = None, debs: Path | None = None, specs: Sequence[DebAmbience] = AMBIENCE_DEBS,
                     log=print) -> Path:
    """Fetch the packages' ambience into `root` (16 kHz mono FLAC) and write its manifest
    (`id, audio, duration, kind, source, license`, the noise library's format); a package already
    there is skipped. Returns the manifest's path."""
    import soundfile as sf

    root = root or ambience_dir()
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for spec in specs:
        part = root / f"{spec.package}.jsonl"
        if part.is_file():
            log(f"{spec.package}: already in {root}")
            continue
        if shutil.which("dpkg-deb") is None:
            raise RuntimeError("dpkg-deb is needed to unpack the Debian packages (a Debian or Ubuntu system)")
        with tempfile.TemporaryDirectory(prefix="soundflow-ambience-") as tmp:
            deb = _deb_of(spec, debs, Path(tmp), log)
            version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True).stdout.strip()
            rows = []
            for path, data in _deb_members(deb, spec, Path(tmp)):
                try:
                    x = load_audio(io.BytesIO(data))
                except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the rest
                    log(f"{spec.package}: skipped {path} ({e})")
                    continue
                if len(x) < max(spec.min_s, 1.0) * SAMPLE_RATE:
                    continue
                rid = re.sub(r"[^A-Za-z0-9]+", "_", path.rsplit(".", 1)[0].removeprefix("usr/share/games/")).strip("_")
                short = spec.package.split("-")[0]
                rid = rid if rid.startswith(short) else f"{short}_{rid}"
                sf.write(root / "audio" / f"{rid}.flac", x, SAMPLE_RATE)
                rows.append({"id": rid, "audio": f"audio/{rid}.flac", "duration": round(len(x) / SAMPLE_RATE, 3),
                             "kind": "ambient", "source": f"Debian {spec.package} {version}: {path}", "license": spec.license})
        if not rows:
            raise RuntimeError(f"{spec.package}: no ambience found in {deb.name}")
        write_jsonl(part, rows)
        log(f"{spec.package}: {len(rows)} files, {sum(r['duration'] for r in rows) / 60:.1f} min")
    rows = [r for spec in specs for r in read_jsonl(root / f"{spec.package}.jsonl")]
    write_jsonl(root / "manifest.jsonl", rows)
    log(f"{root / 'manifest.jsonl'}: {len(rows)} files, {sum(r['duration'] for r in rows) / 60:.1f} min of recorded "
        f"ambience (pass it to `soundflow trigger fit --ambient-manifest`)")
    return root / "manifest.jsonl"
