"""Multi-process training with real processes on CPU: `accelerate launch --num_processes 2` over
gloo, on the tiny backend. Each launch costs ~20 s of process start-up on 2 cores, so the runs
are shared by module fixtures and the launching tests are marked slow.

The recipe's samples all have the same token counts (beeps at a fixed chunk count), so the
mean of two processes' per-token losses is the per-token loss of their union: W processes with
batch B must then give one process with batch W·B, to float tolerance."""

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from soundflow.train import load_recipe, train

CONFIGS = Path(__file__).resolve().parents[1] / "soundflow" / "configs"
DATA = "synthetic:beep?n=8&chunks=4"


def recipe(out, per_process: int = 1, save_every: int = 2) -> dict:
    """Two stages (the second unfreezes the LM, so wrappers must be rebuilt), stage 1 with
    2-step accumulation. `per_process` scales the per-process batch: 1 for two processes,
    2 for one process with the same effective batch."""
    k = per_process
    return {"model": {"backend": "tiny"}, "out": str(out), "seed": 3, "save_every": save_every,
            "stages": [{"name": "a", "trainable": ["adapter"], "data": DATA, "lr": 1e-2, "steps": 3,
                        "batch_size": 1 * k, "grad_accum": 2, "warmup_ratio": 0.0},
                       {"name": "b", "trainable": ["adapter", "lm"], "data": DATA, "lr": 1e-2, "steps": 3,
                        "batch_size": 2 * k, "grad_accum": 1, "warmup_ratio": 0.0}]}


def kill_tree(p: subprocess.Popen) -> None:
    """kill -9 of a launch and all it started, waiting until every process is gone. torchrun
    starts each worker in a session of its own, so killing the launcher's group alone would leave
    both workers training (and writing checkpoints) behind the test's back."""
    procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
    for q in procs:
        try:
            q.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
    p.wait()


def write(tmp, d: dict, name: str) -> Path:
    p = Path(tmp) / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def metrics(out) -> list[dict]:
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def losses(out) -> list[float]:
    return [m["loss"] for m in metrics(out)]


def params(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def assert_same_params(a: dict, b: dict, atol=1e-4):
    """Adam's first steps turn float-order noise in small gradients into visible parameter
    noise: measured 2.4e-5 between DDP and one process after 6 steps at lr 1e-2, against 4e-2
    when the two processes were not joined (each on half the batch)."""
    assert a.keys() == b.keys()
    worst = max((x - b[n]).abs().max().item() for n, x in a.items())
    assert worst <= atol, f"largest parameter difference {worst:.2e}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_cmd(config: Path, recipe_path: Path, *extra: str) -> list[str]:
    acc = shutil.which("accelerate") or "accelerate"
    # a free port: other runs on this machine may hold the default 29500
    return [acc, "launch", "--config_file", str(config), "--num_processes", "2", "--main_process_port",
            str(_free_port()), "-m", "soundflow.cli", "train", str(recipe_path), *extra]


# one thread per process, as `accelerate launch` sets: on 2 shared cores torch's default two
# intra-op threads made a tiny-model step 5-20x slower (BENCHMARKS.md, Scale out)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def launch(config: Path, recipe_path: Path, *extra: str, timeout: int = 400) -> None:
    r = subprocess.run(launch_cmd(config, recipe_path, *extra), env=ENV, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-5000:])


def cpu_config(tmp, shipped: str, **over) -> Path:
    """A shipped config with only what this machine forces changed (2 processes, fp32)."""
    c = yaml.safe_load((CONFIGS / shipped).read_text())
    c.update(num_machines=1, num_processes=2, mixed_precision="no", **over)
    p = Path(tmp) / f"cpu-{shipped}"
    p.write_text(yaml.safe_dump(c))
    return p


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def single(work):
    """One process, twice the per-process batch: the reference every multi-process run must match."""
    out = work / "single"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        final = train(load_recipe(write(work, recipe(out, per_process=2), "single")), progress=False)
    finally:
        torch.set_num_threads(n)
    return out, final


@pytest.fixture(scope="module")
def ddp(work):
    out = work / "ddp"
    launch(CONFIGS / "ddp-cpu.yaml", write(work, recipe(out), "ddp"))
    return out


def test_recipe_samples_have_equal_token_counts():
    """The premise of comparing W·B in one process with B in each of W processes."""
    from soundflow.dataspec import load_streams
    from soundflow.model import build_model
    from soundflow.tokens import MASK
    from soundflow.train import FeatureCache, collate

    model = build_model("tiny")
    feats = FeatureCache(model, 64)
    counts = {tuple(int((collate(model, [s], feats, 60)[k] != MASK).sum()) for k in ("y_stream", "y_lm"))
              for s in load_streams(DATA)}
    assert len(counts) == 1, counts


def test_accumulation_equals_one_step_over_the_whole_batch(tmp_path):
    """One process: 4 micro-batches of 1 accumulated == one batch of 4 (Accelerate's accumulate)."""
    torch.set_num_threads(1)  # (restored by conftest)
    def run(name, bs, ga):
        d = recipe(tmp_path / name)
        d["stages"] = [dict(d["stages"][1], batch_size=bs, grad_accum=ga)]
        return train(load_recipe(write(tmp_path, d, name)), progress=False)

    acc = run("accum", 1, 4)
    big = run("big", 4, 1)
    assert_same_params(params(acc), params(big))
    assert losses(tmp_path / "accum") == pytest.approx(losses(tmp_path / "big"), rel=1e-5)


@pytest.mark.slow
def test_ddp_two_processes_equal_one_with_twice_the_batch(single, ddp):
    out, final = single
    assert_same_params(params(ddp / "model"), params(final))
    # logged metrics are those of the whole step (both processes' micro-batches)
    got, want = metrics(ddp), metrics(out)
    assert [m["tokens"] for m in got] == [m["tokens"] for m in want]
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in want], rel=1e-5)
    assert json.loads((ddp / "model" / "model.json").read_text())["trained"] == \
        json.loads((final / "model.json").read_text())["trained"]


@pytest.mark.slow
def test_zero2_equals_one_process(work, single):
    """The shipped ZeRO-2 config (only process count and fp32 changed) on DeepSpeed's CPU
    accelerator: ZeRO's own accumulation (stage 1) and a new engine for stage 2."""
    pytest.importorskip("deepspeed")
    out = work / "zero2"
    launch(cpu_config(work, "zero2.yaml"), write(work, recipe(out), "zero2"))
    ref_out, final = single
    assert_same_params(params(out / "model"), params(final))
    assert losses(out) == pytest.approx(losses(ref_out), rel=1e-5)


@pytest.mark.slow
def test_fsdp2_equals_one_process_and_resumes(work, single):
    """The shipped FSDP2 config (2 processes, fp32) through Accelerate's FSDP2 prepare, on CPU
    over gloo (tests/fsdp_cpu.py lifts Accelerate's GPU-only gate): the model sharded once, the
    second stage unfreezing the LM inside the shards. Stopped mid stage 2 and resumed from its
    gathered checkpoint (optimizer state re-sharded), it ends where one process does."""
    out = work / "fsdp2"
    cfg, rec = cpu_config(work, "fsdp.yaml"), write(work, recipe(out, save_every=1), "fsdp2")
    script = str(Path(__file__).with_name("fsdp_cpu.py"))

    def run(*extra):
        cmd = launch_cmd(cfg, rec)
        cmd = cmd[: cmd.index("-m")] + [script, str(rec), *extra]
        r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-5000:])

    run("--stop-after", "5")
    st = torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert (st["distributed"], st["stage"], st["step"]) == ("FSDP", 1, 2) and st["optimizer"]["state"]
    assert not (out / "model").exists()
    run("--resume")
    ref_out, final = single
    assert_same_params(params(out / "model"), params(final))
    assert losses(out) == pytest.approx(losses(ref_out), rel=1e-5)


@pytest.mark.slow
def test_kill9_of_two_processes_then_resume(work, ddp, tmp_path):
    """kill -9 of a 2-process run mid stage 2; resumed with 2 processes it continues the same
    loss curve, and the checkpoint (full tensors, data cursor) resumes in one process as well."""
    want = losses(ddp)
    out = work / "killed"
    rec = write(work, recipe(out, save_every=1), "killed")
    p = subprocess.Popen(launch_cmd(CONFIGS / "ddp-cpu.yaml", rec), env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    log, deadline, n = out / "metrics.jsonl", time.time() + 300, 0
    while time.time() < deadline and p.poll() is None:
        n = len(log.read_text().splitlines()) if log.exists() else 0
        if n >= 4:  # past the stage boundary and one mid-stage-2 checkpoint
            break
        time.sleep(0.02)
    kill_tree(p)
    assert 4 <= n < 6 and not (out / "model").exists(), f"kill came at {n} steps"
    st = torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert st["stage"] == 1 and st["world_size"] == 2 and st["cursor"] == st["step"] * 4

    one = tmp_path / "one"
    shutil.copytree(out, one)
    launch(CONFIGS / "ddp-cpu.yaml", rec, "--resume")
    assert losses(out) == pytest.approx(want, rel=1e-5)
    assert_same_params(params(out / "model"), params(ddp / "model"))

    # the same checkpoint, one process with twice the per-process batch
    torch.set_num_threads(1)
    d = recipe(one, per_process=2, save_every=1)
    train(load_recipe(write(tmp_path, d, "one")), resume=True, progress=False)
    assert losses(one) == pytest.approx(want, rel=1e-5)
    assert_same_params(params(one / "model"), params(ddp / "model"))


@pytest.mark.slow
def test_fsdp_launch_without_gpus_is_refused(work):
    """Accelerate 1.x sets up FSDP on GPU-type devices only; on this CPU the shipped FSDP config
    would otherwise train as plain DDP (or as unconnected copies), under the FSDP name."""
    out = work / "fsdp"
    r = subprocess.run(launch_cmd(cpu_config(work, "fsdp.yaml"), write(work, recipe(out), "fsdp")), env=ENV,
                       capture_output=True, text=True, timeout=400)
    assert r.returncode != 0 and "FSDP needs GPUs" in r.stderr, r.stderr[-3000:]
    assert not (out / "metrics.jsonl").exists()
