"""Data build on Ray: two worker processes, one killed with SIGKILL in the middle of its shard;
Ray runs that shard again and the corpus is byte for byte the process pool's."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_build import DATA, _digest, _recipe

from soundflow import build

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DATA / "events" / "catalog.jsonl").exists(), reason="shared data not present")]


def _shard_workers() -> dict[int, str]:
    """Ray worker processes running a build_shard task (Ray titles them `ray::build_shard`)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ray::build_shard"):
                out[int(d.name)] = cmd
    return out


def test_ray_two_workers_one_killed_midway_same_bytes(tmp_path):
    pytest.importorskip("ray")
    rec = _recipe(tmp_path, n=4)  # 2 shards of 2 samples, one per worker
    build.build(rec, tmp_path / "pool", workers=1, quiet=True)  # in-process: no spawn start-up
    out = tmp_path / "ray"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "soundflow", "data", "build", str(rec), "--out", str(out), "--ray", "local"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    killed, seen, deadline = None, set(), time.time() + 240
    try:
        while time.time() < deadline and p.poll() is None:
            busy = _shard_workers()
            seen |= busy.keys()
            # both workers busy and no shard finished yet: every shard is mid-way
            if len(busy) == 2 and not list(out.glob("*.tar")):
                killed = min(busy)
                os.kill(killed, signal.SIGKILL)
                break
            time.sleep(0.02)
        assert killed is not None, "never saw two workers building at once"
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, err.decode()[-3000:]
    assert len(seen) >= 2
    assert not list(out.glob("*.tmp"))
    assert _digest(out) == _digest(tmp_path / "pool")
