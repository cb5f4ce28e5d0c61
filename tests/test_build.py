import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from soundflow import build
from soundflow.data import read_shards

DATA = Path("/work/shared/data")
pytestmark = pytest.mark.skipif(not (DATA / "events" / "catalog.jsonl").exists(), reason="shared data not present")

RECIPE = """
seed: 5
samples: __N__
samples_per_shard: 2
max_chunks: 30
sources:
  events: ${SOUNDFLOW_DATA:-__DATA__}/events/catalog.jsonl
  noise: ${SOUNDFLOW_DATA:-__DATA__}/noise/manifest.jsonl
  music: ${SOUNDFLOW_DATA:-__DATA__}/music/manifest.jsonl
  speech: ${SOUNDFLOW_DATA:-__DATA__}/speech/manifest.jsonl
tasks: {asr: 1, translation: 1, chat: 1, understanding: 1, music: 1, proactive: 1, agent: 1}
tts: {families: [tone], gate: false}
tfjp: false
curate: true
curate_embedder: hash
"""


def _recipe(tmp_path, n=6):
    p = tmp_path / "tiny.yaml"
    p.write_text(RECIPE.replace("__N__", str(n)).replace("__DATA__", str(DATA)))
    return p


def _digest(folder):
    """Per-member content hashes of every finished shard."""
    out = {}
    for shard in sorted(Path(folder).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                out[(shard.name, m.name)] = hashlib.sha256(tar.extractfile(m).read()).hexdigest()
    return out


def test_build_pool_and_read_back(tmp_path):
    s = build.build(_recipe(tmp_path), tmp_path / "a", workers=2, quiet=True)
    assert s["samples"] == 6 and s["shards"] == 3
    assert 0 < s["silence_ratio"] < 1 and s["replies_per_minute"] > 0
    assert s["xrt_per_core"] > 0 and s["xrt_per_cpu_s"] > 0
    samples = list(read_shards(tmp_path / "a"))
    assert len(samples) == 6
    for x in samples:
        assert x.wave is not None and len(x.wave) <= 30 * 6400
        assert all(t["chunk"] < -(-len(x.wave) // 6400) for t in x.timeline)
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["samples"] == 6
    # a rerun skips everything and gives the same corpus
    before = _digest(tmp_path / "a")
    build.build(_recipe(tmp_path), tmp_path / "a", workers=1, quiet=True)
    assert _digest(tmp_path / "a") == before
    # worker count / order does not matter
    build.build(_recipe(tmp_path), tmp_path / "b", workers=1, quiet=True)
    assert _digest(tmp_path / "b") == before


def test_ray_local_equals_pool(tmp_path):
    pytest.importorskip("ray")
    import ray

    rec = _recipe(tmp_path, n=4)
    build.build(rec, tmp_path / "pool", workers=2, quiet=True)
    try:
        build.build(rec, tmp_path / "ray", ray="local", quiet=True)
    finally:
        ray.shutdown()
    assert _digest(tmp_path / "ray") == _digest(tmp_path / "pool")


def test_kill_and_resume(tmp_path):
    rec = _recipe(tmp_path, n=12)
    build.build(rec, tmp_path / "ref", workers=1, quiet=True)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "soundflow.build", str(rec), "--out", str(out), "--workers", "1"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    while not list(out.glob("*.tar")) and time.time() - t0 < 120:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    finished = list(out.glob("*.tar"))
    assert finished and len(finished) < 6, "kill came too late to test resuming"
    ref = _digest(tmp_path / "ref")
    got = _digest(out)
    assert all(ref[k] == v for k, v in got.items())  # shards finished before the kill already match
    build.build(rec, out, workers=1, quiet=True)
    assert not list(out.glob("*.tmp"))
    assert _digest(out) == _digest(tmp_path / "ref")
