import contextlib
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
from soundflow.data import read_shards, shared_data_dir

DATA = shared_data_dir() or Path("/nonexistent")
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
    p = subprocess.Popen([sys.executable, "-m", "soundflow", "data", "build", str(rec), "--out", str(out), "--workers", "1"],
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


def _proc_state(pid: int) -> str | None:
    """(ppid, state) fields from /proc; None once the process is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[1]  # fields[1]: the parent pid


def _pool_workers(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and _proc_state(int(d.name)) == str(pid):
            with contextlib.suppress(OSError):
                if b"spawn_main" in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_killed_build_leaves_no_workers_behind(tmp_path):
    """kill -9 of the build process ends its pool workers too: an orphan would keep writing
    shards into the output folder of the next run."""
    rec = _recipe(tmp_path, n=40)
    p = subprocess.Popen([sys.executable, "-m", "soundflow", "data", "build", str(rec), "--out", str(tmp_path / "run"),
                          "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0, workers = time.time(), []
    while len(workers) < 2 and time.time() - t0 < 120 and p.poll() is None:
        workers = _pool_workers(p.pid)
        time.sleep(0.1)
    assert len(workers) >= 2, "the pool never started"
    time.sleep(1.0)  # each worker's initializer has run
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    t0 = time.time()
    while any(_proc_state(w) for w in workers) and time.time() - t0 < 10:
        time.sleep(0.1)
    assert not [w for w in workers if _proc_state(w)], "pool workers outlived the killed build"


class _AudioHashGate:
    """Stand-in for Whisper: a unit's verdict depends on its own audio only (about 1 in 2 fail),
    never on the other units checked with it. Counts its calls."""

    def __init__(self):
        from soundflow import asr_gate

        self.inner = asr_gate.AsrGate()
        self.stats, self.threshold, self.retries, self.calls = self.inner.stats, 0.10, asr_gate.RETRIES, 0

    def check(self, waves, refs):
        import zlib

        import numpy as np

        self.calls += 1
        return [1.0 if zlib.crc32(np.asarray(w, np.float32).tobytes()) % 2 == 0 else 0.0 for w in waves]


def test_gate_across_instances_same_corpus_fewer_checks(tmp_path):
    """Slots gated together (run_slots) give the very samples of slots gated one at a time."""
    import numpy as np

    from soundflow import asr_gate, tasks

    cfg = build.load_data_recipe(_recipe(tmp_path, n=8))
    names = sorted(cfg["tasks"])
    w = np.ones(len(names)) / len(names)

    def run(across):
        gate = _AudioHashGate()
        res = tasks.Resources.from_config(cfg["sources"], cfg["_base"], tts_families=("tone",), gate=gate,
                                          max_chunks=30, use_tfjp=False, use_curate=False)
        stats = {"dropped": 0, "dropped_by": {}, "failed": 0}
        slots = [build._slot_steps(cfg, 2, j, res, names, w, stats) for j in range(8)]
        out = build.run_slots(slots, gate) if across else [asr_gate.run_steps(g, gate) for g in slots]
        return out, stats, gate

    a, sa, ga = run(True)
    b, sb, gb = run(False)
    assert ga.stats.retries > 0 and sa["dropped"] > 0  # exercised: re-renders and whole-instance drops
    assert ga.stats.to_json() == gb.stats.to_json(), (ga.stats.to_json(), gb.stats.to_json())
    sa["drops"].sort(key=lambda d: d["slot"])  # (build_shard does the same)
    assert sa == sb
    assert ga.calls < gb.calls  # fewer, fuller gate rounds
    for (ta, xa), (tb, xb) in zip(a, b):
        assert ta == tb and xa.timeline == xb.timeline and np.array_equal(xa.wave, xb.wave)


def test_recipe_reply_after_must_be_an_interval(tmp_path):
    from soundflow.build import RecipeError, load_data_recipe

    p = tmp_path / "r.yaml"
    p.write_text("reply_after_s: [2.0, 1.0]\n")
    with pytest.raises(RecipeError, match="reply_after_s"):
        load_data_recipe(p)
    p.write_text("reply_after_s: [1.2, 2.4]\nevent_augment: {eq: 0.5}\n")
    assert load_data_recipe(p)["reply_after_s"] == [1.2, 2.4]
    p.write_text("event_augment: {echo: 1.0}\n")
    with pytest.raises(RecipeError, match="event_augment: unknown effects"):
        load_data_recipe(p)
