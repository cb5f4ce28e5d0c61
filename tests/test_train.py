"""Dual-loss four-stage training: overfit, freeze policy, kill -9 and resume, recipes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from soundflow.checkpoint import load_checkpoint
from soundflow.data import synthetic_beeps
from soundflow.decoding import decode_stream
from soundflow.loading import load_model
from soundflow.model import ModelConfig, build_model
from soundflow.train import Recipe, StageConfig, load_recipe, set_trainable, train


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_overfit_beeps_tiny(tmp_path):
    """20 streams, a tone at a random chunk → reply "beep" there: 100 % decisions, exact text."""
    recipe = Recipe(model=ModelConfig(backend="tiny"), out=str(tmp_path / "run"), save_every=10_000,
                    stages=[StageConfig(name="all", trainable=["adapter", "lm"], data="synthetic:beep?n=20&chunks=8",
                                        lr=3e-3, steps=300, batch_size=4)])
    final = train(recipe, progress=False)
    model = load_model(str(final))
    correct = total = exact = 0
    for s in synthetic_beeps(20, 8):
        ev = list(decode_stream(model, s.chunks()))
        gold = s.timeline[0]["chunk"]
        for e in ev:
            if e["type"] == "decision":
                total += 1
                correct += (e["decision"] == "response") == (e["chunk"] == gold)
        replies = [(e["chunk"], e["text"]) for e in ev if e["type"] == "response"]
        exact += replies == [(gold, "beep")]
    assert correct == total == 160
    assert exact == 20
    last = metrics(recipe.out)[-1]
    assert last["acc"] == 1.0 and last["lm"] < 0.05 and last["stream"] < 0.05


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_four_stage_freeze_policy(tmp_path):
    """Each stage changes exactly its modules; the encoder never trains; λ logged separately."""
    model = build_model("tiny")
    groups = model.param_groups()
    assert set(n for n, _ in groups["adapter"]) and not any(n.startswith("encoder.") for g in groups.values()
                                                             for n, _ in g)
    stages = [StageConfig(name=n, trainable=t, data="synthetic:beep?n=4&chunks=4", lr=1e-2, steps=2, batch_size=2)
              for n, t in [("format", ["head"]), ("adapter", ["adapter"]), ("sft", ["adapter", "lm"])]]
    out = tmp_path / "run"
    before = _snapshot(build_model("tiny"))
    final = train(Recipe(model=ModelConfig(backend="tiny"), out=str(out), stages=stages[:2], save_every=100),
                  progress=False)
    after = _snapshot(load_model(str(final)))
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"body.embed_tokens.weight", "special", "special_out"} | {n for n, _ in groups["adapter"]}
    saved = json.loads((final / "model.json").read_text())["trained"]
    assert set(saved) == changed  # only trained parameters are stored
    m = metrics(out)
    assert {"lm", "stream", "acc", "resp_recall", "sil_recall"} <= set(m[0])


def test_tokens_group_trains_only_the_added_rows(tmp_path):
    """The "tokens" group changes the added tokens' table alone; the checkpoint holds only it
    (a few KB, not the tied 49k-row matrix of `mini`), and the decision depends on it."""
    stages = [StageConfig(name="format", trainable=["tokens"], data="synthetic:beep?n=4&chunks=4", lr=1e-1,
                          steps=2, batch_size=2)]
    before = _snapshot(build_model("tiny"))
    final = train(Recipe(model=ModelConfig(backend="tiny"), out=str(tmp_path / "run"), stages=stages,
                         save_every=100), progress=False)
    model = load_model(str(final))
    after = _snapshot(model)
    assert {n for n in before if not torch.equal(before[n], after[n])} == {"special", "special_out"}
    assert json.loads((final / "model.json").read_text())["trained"] == ["special", "special_out"]
    h = torch.randn(3, model.special.shape[1])
    tok = model.tokenizer
    full = model.logits(h)
    assert torch.allclose(full[:, [tok.silent_id, tok.response_id]], model.control_logits(h))
    assert torch.allclose(model.embed_ids([tok.response_id])[0], model.special[tok.response_id - model.n_base_vocab])
    assert not torch.equal(model.special, model.special_out)  # input and output rows train apart


def test_untied_head_stage1_trains_only_new_embedding_rows():
    from soundflow.train import _new_rows_only_hook

    model = build_model("tiny-qwen")  # its LM head is not tied to the embeddings
    assert model.embed_tokens.weight is not model.head.weight
    set_trainable(model, ["head"])
    model.embed_tokens.weight.requires_grad_(True)
    hook = _new_rows_only_hook(model)
    ids = torch.tensor([[1, 2, model.tokenizer.silent_id]])
    model.logits(model.hidden(model.embed(ids))).sum().backward()
    g = model.embed_tokens.weight.grad
    # base rows are masked; the added tokens are read from (and train in) the `special` table
    assert g[: model.n_base_vocab].abs().sum() == 0
    assert model.special.grad[model.tokenizer.silent_id - model.n_base_vocab].abs().sum() > 0
    hook.remove()


def _recipe_file(tmp_path, out, steps=12, save_every=4):
    d = {"model": {"backend": "tiny"}, "out": str(out), "save_every": save_every, "seed": 3,
         "stages": [{"name": "a", "trainable": ["adapter"], "data": "synthetic:beep?n=6&chunks=4", "lr": 1e-2,
                     "steps": steps // 2, "batch_size": 2, "grad_accum": 2},
                    {"name": "b", "trainable": ["adapter", "lm"], "data": "synthetic:beep?n=6&chunks=4", "lr": 1e-2,
                     "steps": steps // 2, "batch_size": 2}]}
    p = tmp_path / f"{Path(out).name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_kill9_and_resume_gives_the_same_loss_curve(tmp_path):
    ref = train(load_recipe(_recipe_file(tmp_path, tmp_path / "ref")), progress=False)
    want = [m["loss"] for m in metrics(ref.parent)]
    assert len(want) == 12

    out = tmp_path / "killed"
    rec = _recipe_file(tmp_path, out)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "soundflow.cli", "train", str(rec)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    log = out / "metrics.jsonl"
    # kill -9 once it is past the first checkpoint, between checkpoints (mid stage 2 if we can)
    while time.time() < deadline:
        n = len(log.read_text().splitlines()) if log.exists() else 0
        if n >= 9 or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists() or n >= 12, "run finished before it could be killed"
    r = subprocess.run([sys.executable, "-m", "soundflow.cli", "train", str(rec), "--resume"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = [m["loss"] for m in metrics(out)]
    assert len(got) == 12
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_single_process_checkpoint_of_the_old_format_resumes(tmp_path):
    """A run's checkpoint as the single-process trainer wrote it before multi-process support
    (trainer_state: stage, step, trained, log_lines, optimizer, scheduler; no data cursor)
    resumes mid-stage to the loss curve of an uninterrupted run."""
    torch.set_num_threads(1)  # much faster on the shared 2 cores (restored by conftest)
    ref = train(load_recipe(_recipe_file(tmp_path, tmp_path / "ref")), progress=False)
    want = [m["loss"] for m in metrics(ref.parent)]
    out = tmp_path / "old"
    rec = _recipe_file(tmp_path, out)
    train(load_recipe(rec), progress=False, stop_after=11)  # last checkpoint: stage 2, step 4
    path = out / "checkpoint" / "trainer_state.pt"
    st = torch.load(path, weights_only=False)
    assert (st["stage"], st["step"]) == (1, 4)
    old = {k: st[k] for k in ("stage", "step", "trained", "log_lines", "optimizer", "scheduler")}
    torch.save(old, path)
    train(load_recipe(rec), resume=True, progress=False)
    got = [m["loss"] for m in metrics(out)]
    assert got == want  # the same process count and code path: bit for bit


def test_lora_option_and_toml_recipe(tmp_path):
    toml = tmp_path / "r.toml"
    toml.write_text(f'''out = "{tmp_path / 'lora'}"
[model]
backend = "tiny"
[lora]
r = 4
alpha = 8
targets = ["q_proj", "v_proj"]
[[stages]]
name = "sft"
trainable = ["adapter", "lora"]
data = "synthetic:beep?n=2&chunks=3"
steps = 2
''')
    recipe = load_recipe(toml)
    final = train(recipe, progress=False)
    meta = json.loads((final / "model.json").read_text())
    assert meta["lora"]["r"] == 4
    assert any("lora_A" in n for n in meta["trained"]) and not any("q_proj.weight" in n for n in meta["trained"])
    kept = load_checkpoint(final, merge=False)
    assert any("lora_" in n for n, _ in kept.named_parameters())
    assert any(float(p.detach().abs().sum()) > 0 for n, p in kept.named_parameters() if "lora_B" in n)  # LoRA moved
    m = load_model(str(final))  # inference: LoRA folded into q/v, plain Linears again
    assert not any("lora_" in n for n, _ in m.named_parameters())
    x = torch.randn(1, 5, m.body.config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(m.hidden(x), kept.hidden(x), rtol=1e-4, atol=1e-5)


def test_one_step_tiny_qwen_same_code_path(tmp_path):
    recipe = Recipe(model=ModelConfig(backend="tiny-qwen"), out=str(tmp_path / "q"),
                    stages=[StageConfig(name=n, trainable=t, data="synthetic:beep?n=2&chunks=3", steps=1)
                            for n, t in [("format", ["head"]), ("adapter", ["adapter"]), ("sft", ["adapter", "lm"])]])
    final = train(recipe, progress=False)
    rows = metrics(recipe.out)
    assert len(rows) == 3 and all(r["loss"] > 0 for r in rows)
    assert load_model(str(final)).cfg.backend == "tiny-qwen"


@pytest.mark.slow
def test_one_step_mini(tmp_path):
    recipe = Recipe(model=ModelConfig(backend="mini"), out=str(tmp_path / "m"),
                    stages=[StageConfig(name="sft", trainable=["adapter", "lm"], data="synthetic:beep?n=1&chunks=5",
                                        steps=1, lr=1e-5)])
    final = train(recipe, progress=False)
    row = metrics(recipe.out)[0]
    assert row["n_stream"] == 5 and row["loss"] > 0
    assert (final / "model.safetensors").stat().st_size > 100e6  # the LM was trained, so it is stored


def test_readout_lr_scale_gives_the_control_readout_its_own_lr_and_resumes(tmp_path):
    """`readout_lr_scale`: the control tokens' output rows in a third optimizer group at lr × scale
    (the rest at the stage's lr); a run stopped mid-stage resumes to the uninterrupted loss curve."""
    from soundflow.train import _opt_and_sched

    torch.set_num_threads(1)
    model = build_model("tiny")
    stage = StageConfig(trainable=["tokens", "adapter"], lr=1e-3, steps=4, readout_lr_scale=20.0)
    set_trainable(model, stage.trainable)
    opt, _ = _opt_and_sched(model, Recipe(), stage)
    assert len(opt.param_groups) == 3 and opt.param_groups[2]["params"] == [model.special_out]
    assert opt.param_groups[2]["lr"] == pytest.approx(20 * opt.param_groups[0]["lr"])
    assert all(p is not model.special_out for g in opt.param_groups[:2] for p in g["params"])
    assert any(p is model.special for p in opt.param_groups[0]["params"])  # the input rows at the stage's lr
    plain, _ = _opt_and_sched(model, Recipe(), StageConfig(trainable=["tokens", "adapter"], lr=1e-3))
    assert len(plain.param_groups) == 2  # unscaled: the two groups saved states were written with

    def rec(out):
        d = {"model": {"backend": "tiny"}, "out": str(out), "save_every": 3, "seed": 3,
             "stages": [{"name": "a", "trainable": ["tokens", "adapter"], "data": "synthetic:beep?n=6&chunks=4",
                         "lr": 1e-2, "steps": 8, "batch_size": 2, "readout_lr_scale": 10.0}]}
        p = tmp_path / f"{Path(out).name}.yaml"
        p.write_text(yaml.safe_dump(d))
        return load_recipe(p)

    want = [m["loss"] for m in metrics(train(rec(tmp_path / "ref"), progress=False).parent)]
    train(rec(tmp_path / "cut"), progress=False, stop_after=7)  # last checkpoint at step 6
    got = [m["loss"] for m in metrics(train(rec(tmp_path / "cut"), resume=True, progress=False).parent)]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
