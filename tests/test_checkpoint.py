"""Checkpoint folders (checkpoint.py), name → model (loading.py) and `ModelInfo`, without training."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from soundflow.calibrate import default_threshold
from soundflow.checkpoint import atomic_dir, commit_dir, load_checkpoint, resolve_dir, save_checkpoint, trained_state
from soundflow.loading import PACKAGED, load_model, packaged_checkpoint, resolve_model
from soundflow.model import ModelInfo, build_model


def _adapter_names(model) -> set[str]:
    return {n for n, _ in model.param_groups()["adapter"]}


@pytest.fixture
def saved(tmp_path):
    """A tiny model with a changed adapter, saved with only its adapter tensors."""
    model = build_model("tiny")
    with torch.no_grad():
        for _, p in model.param_groups()["adapter"]:
            p.add_(0.5)
    out = tmp_path / "ckpt"
    save_checkpoint(model, _adapter_names(model), out, recipe={"stages": []})
    return model, out


def _same_params(a, b) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[n], pb[n]) for n in pa)


def test_fresh_model_info_is_the_default():
    m = build_model("tiny")
    assert m.info == ModelInfo() and not m.info.trained and m.info.calibration is None
    assert m.info.source is None and m.info.optimized is None
    assert default_threshold(m) == 0.5 and default_threshold(m, fallback=0.7) == 0.7


def test_model_info_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelInfo().trained = True


def test_save_then_load_round_trip(saved):
    model, out = saved
    assert {p.name for p in out.iterdir()} == {"model.json", "model.safetensors", "recipe.yaml"}
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == "soundflow-checkpoint/1" and meta["model"]["backend"] == "tiny"
    assert meta["trained"] == sorted(_adapter_names(model)) and meta["lora"] is None
    assert set(load_file(str(out / "model.safetensors"))) == _adapter_names(model)  # only what was trained
    back = load_checkpoint(out)
    assert _same_params(back, model) and not _same_params(back, build_model("tiny"))
    assert back.info == ModelInfo(trained=True, source=str(out), calibration=None)
    assert not back.training  # an inference model


def test_calibration_in_model_json_is_the_default_threshold(saved):
    _, out = saved
    meta = json.loads((out / "model.json").read_text())
    meta["calibration"] = {"threshold": 0.3, "balanced_acc": 0.9}
    (out / "model.json").write_text(json.dumps(meta))
    m = load_model(str(out))
    assert m.info.calibration == {"threshold": 0.3, "balanced_acc": 0.9}
    assert default_threshold(m) == 0.3


def test_trained_state_stores_tied_weights_once_and_rejects_unknown_names():
    m = build_model("tiny")  # its head is tied to the embeddings
    names = {n for n, _ in m.param_groups()["head"]}
    state = trained_state(m, names)
    assert set(state) == names and all(t.device.type == "cpu" for t in state.values())
    assert len(state) == 3  # the tied embedding/head matrix once, the added tokens' input and output rows
    with pytest.raises(KeyError):
        trained_state(m, {"no.such.param"})


def test_load_rejects_foreign_tensors_and_wrong_shapes(saved):
    _, out = saved
    state = load_file(str(out / "model.safetensors"))
    save_file({**state, "not.a.param": torch.zeros(1)}, str(out / "model.safetensors"))
    with pytest.raises(KeyError, match="not.a.param"):
        load_checkpoint(out)
    name = sorted(state)[0]
    save_file({**state, name: torch.zeros(3, 3)}, str(out / "model.safetensors"))
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(out)


def test_commit_replaces_and_a_kill_between_renames_leaves_the_old_copy(saved, tmp_path):
    model, out = saved
    save_checkpoint(model, {"special"}, out)  # overwrite: one folder, the new content
    assert json.loads((out / "model.json").read_text())["trained"] == ["special"]
    assert not out.with_name(out.name + ".old").exists()
    # as if killed after `final → final.old` and before `tmp → final`
    tmp = atomic_dir(out)
    out.rename(out.with_name(out.name + ".old"))
    assert resolve_dir(out) == out.with_name(out.name + ".old")
    assert load_checkpoint(out).info.source == str(out.with_name(out.name + ".old"))
    (tmp / "model.json").write_text("{}")
    commit_dir(tmp, out)
    assert resolve_dir(out) == out and not out.with_name(out.name + ".old").exists()
    assert resolve_dir(tmp_path / "nothing") is None
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nothing")


def test_resolve_model_names(saved, tmp_path):
    _, out = saved
    assert resolve_model(str(out)) == out
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    for f in out.iterdir():
        (run / "model" / f.name).write_bytes(f.read_bytes())
    assert resolve_model(str(run)) == run / "model"  # a training run's folder: its final model
    assert load_model(str(run)).info.source == str(run / "model")
    assert resolve_model("tiny") == "tiny" and resolve_model("tiny-qwen") == "tiny-qwen"
    assert not load_model("tiny").info.trained  # a backend without a shipped checkpoint: untrained
    with pytest.raises(FileNotFoundError):
        resolve_model(str(tmp_path))  # a folder without model.json
    with pytest.raises(FileNotFoundError):
        resolve_model("no/such/folder")
    with pytest.raises(ValueError, match="unknown backend"):
        load_model("no-such-backend")


def test_packaged_checkpoints():
    assert packaged_checkpoint("tiny") is None and packaged_checkpoint("no-such") is None
    mini = packaged_checkpoint("mini")
    assert mini is None or (mini == PACKAGED["mini"] and (mini / "model.json").exists())
    if mini is not None:
        assert resolve_model("mini") == mini  # the shipped, trained default wins over the backend


def test_optimize_for_inference_records_the_precision(saved):
    from soundflow.optimize import optimize_for_inference

    _, out = saved
    m = optimize_for_inference(load_checkpoint(out), quant=None)
    assert m.info.optimized == "fp32" and m.info.trained and m.info.source == str(out)  # the rest is kept
    assert optimize_for_inference(build_model("tiny"), quant="int8").info.optimized == "int8"


def test_a_checkpoint_from_before_the_untied_readout_loads_tied(tmp_path):
    """Old checkpoints trained `special` as both input and output rows: loaded, `special_out`
    equals it, so their decisions are unchanged; a new one keeps the two apart."""
    model = build_model("tiny")
    with torch.no_grad():
        model.special.add_(0.25)
        model.special_out.sub_(0.5)
    save_checkpoint(model, {"special"}, tmp_path / "old")
    old = load_checkpoint(tmp_path / "old")
    assert torch.equal(old.special_out, model.special) and torch.equal(old.special, model.special)
    save_checkpoint(model, {"special", "special_out"}, tmp_path / "new")
    new = load_checkpoint(tmp_path / "new")
    assert torch.equal(new.special_out, model.special_out) and not torch.equal(new.special_out, new.special)
