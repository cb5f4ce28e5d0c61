"""Checkpoint folders: write (`save_checkpoint`) and read (`load_checkpoint`), one format.

A checkpoint holds only trained parameters (safetensors) plus the model config and recipe
(docs/formats.md#checkpoint). Reading rebuilds the backend from its base weights (offline
packages or hub ids), re-injects LoRA if the recipe used it, puts the trained tensors back on top
and records what the folder says in `model.info`. Writes are atomic (temp folder, then rename),
so a run killed mid-save never leaves a half checkpoint behind. `loading.load_model` resolves a
name (a shipped checkpoint, a training run, a backend) to one of these folders or a fresh model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .model import AudioLM, ModelConfig, build_model
from .trigger import logit_of


def trained_state(model: AudioLM, names: set[str]) -> dict[str, torch.Tensor]:
    """The named parameters, deduplicated (tied embeddings are stored once)."""
    params = dict(model.named_parameters(remove_duplicate=True))
    missing = names - params.keys()
    if missing:
        raise KeyError(f"not parameters of the model: {sorted(missing)[:5]}")
    return {n: params[n].detach().to("cpu").contiguous() for n in sorted(names)}


def gather_trained_state(model: AudioLM, names: set[str], keep: bool = True) -> dict[str, torch.Tensor] | None:
    """`trained_state` for a model that may be sharded (FSDP DTensors): every process must call
    it, as gathering a shard is collective; only those with `keep` get the full tensors back."""
    from torch.distributed.tensor import DTensor

    params = dict(model.named_parameters(remove_duplicate=True))
    missing = names - params.keys()
    if missing:
        raise KeyError(f"not parameters of the model: {sorted(missing)[:5]}")
    out = {}
    for n in sorted(names):
        p = params[n]
        if isinstance(p, DTensor):
            p = p.full_tensor()
        if keep:
            out[n] = p.detach().to("cpu").contiguous()
    return out if keep else None


def atomic_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def commit_dir(tmp: Path, final: Path) -> None:
    """Replace `final` by `tmp`; the old copy survives as `<final>.old` until the swap is done."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def resolve_dir(final: Path) -> Path | None:
    """The folder to read: `final`, or its `.old` copy if a kill hit between the two renames."""
    if (final / "model.json").exists():
        return final
    old = final.with_name(final.name + ".old")
    return old if (old / "model.json").exists() else None


def save_checkpoint(model: AudioLM, names: set[str], out: Path, recipe: dict | None = None,
                    lora: dict | None = None, extra_files: dict[str, object] | None = None,
                    state: dict[str, torch.Tensor] | None = None) -> None:
    """`state`: the tensors to write when the caller already gathered them (a sharded model)."""
    out = Path(out)
    if model.trigger is not None:  # a fitted sound trigger travels with every later save
        names = set(names) | {f"trigger.{n}" for n, _ in model.trigger.named_parameters()}
        if state is not None:
            state = {**state, **{f"trigger.{n}": p.detach().cpu() for n, p in model.trigger.named_parameters()}}
    tmp = atomic_dir(out)
    save_file(state if state is not None else trained_state(model, names), str(tmp / "model.safetensors"))
    meta = {"format": "soundflow-checkpoint/1", "model": asdict(model.cfg), "lora": lora,
            "trained": sorted(names), "vocab_size": model.tokenizer.vocab_size}
    if model.trigger is not None:
        meta["trigger"] = model.trigger.config()
    (tmp / "model.json").write_text(json.dumps(meta, indent=1))
    if recipe is not None:
        import yaml

        (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    for name, obj in (extra_files or {}).items():
        torch.save(obj, tmp / name)
    commit_dir(tmp, out)


def inject_lora(model: AudioLM, lora: dict) -> None:
    """LoRA adapters (peft) on the LM body's projections."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=lora.get("r", 8), lora_alpha=lora.get("alpha", 16), lora_dropout=lora.get("dropout", 0.0),
                     target_modules=lora.get("targets", ["q_proj", "k_proj", "v_proj", "o_proj"]))
    inject_adapter_in_model(cfg, model.body)


def merge_lora(model: AudioLM) -> int:
    """Fold every LoRA adapter into its base projection (W + BA·alpha/r) and drop the wrapper:
    inference then costs what the base model costs, and int8 quantisation sees plain Linears.
    Returns how many layers were merged."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(model.body.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.body.get_submodule(parent_name) if parent_name else model.body
            setattr(parent, child, module.get_base_layer())
            merged += 1
    return merged


def load_checkpoint(folder: str | Path, merge: bool = True) -> AudioLM:
    """An inference model from a checkpoint folder; `merge=False` keeps LoRA as separate,
    trainable adapters (to fine-tune further)."""
    folder = resolve_dir(Path(folder))
    if folder is None:
        raise FileNotFoundError("no soundflow checkpoint (model.json) there")
    meta = json.loads((folder / "model.json").read_text())
    model = build_model(ModelConfig(**meta["model"]))
    if meta.get("lora"):
        inject_lora(model, meta["lora"])
    if meta.get("trigger"):  # trigger.py; a folder without one decides as the paper does
        cfg = meta["trigger"]
        model.add_trigger(cfg["windows"], cfg["d_summary"], holdoff=cfg.get("holdoff"), hidden=cfg.get("hidden"),
                          floor=cfg.get("floor"), classes=cfg.get("classes") or (), replies=cfg.get("replies") or (),
                          class_floors=cfg.get("class_floors"), verifier=cfg.get("verifier"))
    model.load_trained(load_file(str(folder / "model.safetensors")))
    if meta.get("lora") and merge:
        merge_lora(model)
    # listen and the server say plainly when a model is not trained; the calibration is the
    # decision threshold `soundflow calibrate` picked on held-out data
    if model.trigger is not None:  # its threshold aligned with the model's (calibrate.calibrate_trigger)
        cal = meta.get("calibration") or {}
        model.trigger.offset = float((cal.get("trigger") or {}).get("offset", 0.0))
        if (cal.get("trigger") or {}).get("class_offsets") is not None and model.trigger.namer is not None:
            model.trigger.class_offsets = torch.tensor(cal["trigger"]["class_offsets"], dtype=torch.float32)
        model.trigger.fire_logit = logit_of(cal.get("threshold", 0.5))
    model.info = replace(model.info, trained=True, source=str(folder), calibration=meta.get("calibration"))
    return model.eval()
