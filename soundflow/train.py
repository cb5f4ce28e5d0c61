"""Dual-loss, four-stage streaming conversion (paper §Streaming Training and its appendix).

Stage 1 format:        LM head + new token embeddings     lr 1e-4
Stage 2 adapter:       adapter only                       lr 1e-4
Stage 3 streaming SFT: adapter + LM (or LoRA)             lr 5e-5
Stage 4 instruction:   adapter + LM on multi-turn streams lr 1e-5

AdamW (β 0.9/0.95, ε 1e-8), weight decay 0.01, cosine schedule with 3 % warm-up, grad-norm
clip 1.0, bf16 where the device supports it. Built on Accelerate: the same recipe runs under
`accelerate launch` (configs in `soundflow/configs/`). The audio encoder is frozen in every
stage, so its per-chunk features are computed once per sample and cached.

`--resume` continues after kill -9 from the last checkpoint with the same data order: the
order is a pure function of (seed, stage, micro-batch index), so nothing but the step count
has to be restored besides model, optimizer and scheduler state.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import inject_lora, resolve_dir, save_checkpoint
from .data import StreamSample, load_streams
from .loss import dual_loss
from .model import AudioLM, ModelConfig, build_model
from .tokenize import MASK, build_sequence


@dataclass
class StageConfig:
    name: str = "stage"
    trainable: list[str] = field(default_factory=lambda: ["adapter"])  # head | adapter | lm | lora
    data: str = "synthetic:beep"
    lr: float = 1e-4
    steps: int = 100
    batch_size: int = 1
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    max_chunks: int = 60  # L_max = 60 chunks (24 s)


PAPER_STAGES = [
    dict(name="format", trainable=["head"], lr=1e-4),
    dict(name="adapter", trainable=["adapter"], lr=1e-4),
    dict(name="streaming-sft", trainable=["adapter", "lm"], lr=5e-5),
    dict(name="instruction", trainable=["adapter", "lm"], lr=1e-5),
]


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig(**s) for s in PAPER_STAGES])
    out: str = "runs/default"
    seed: int = 0
    lam: float = 1.0  # dual-loss weight λ
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto | bf16 | fp16 | no
    save_every: int = 50  # optimizer steps between resumable checkpoints
    lora: dict | None = None  # e.g. {r: 8, alpha: 16, targets: [q_proj, v_proj]}
    gradient_checkpointing: bool = False
    feature_cache: int = 4096  # samples whose frozen-encoder features stay in memory

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        d = dict(d)
        model = ModelConfig(**d.pop("model", {}))
        stages = [StageConfig(**s) for s in d.pop("stages", PAPER_STAGES)]
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown recipe keys: {sorted(unknown)}")
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(model=model, stages=stages, **d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


def load_recipe(path: str | Path) -> Recipe:
    """A YAML (.yaml/.yml) or TOML (.toml) recipe file."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        d = tomllib.loads(text)
    else:
        import yaml

        d = yaml.safe_load(text) or {}
    return Recipe.from_dict(d)


# --------------------------------------------------------------------------- batches


class FeatureCache:
    """Frozen-encoder features per sample id (the encoder never trains)."""

    def __init__(self, model: AudioLM, size: int):
        self.model, self.size, self.store = model, size, {}

    def __call__(self, s: StreamSample, max_chunks: int) -> torch.Tensor:
        key = (s.id, max_chunks)
        if key not in self.store:
            chunks = torch.from_numpy(s.chunks(max_chunks))
            feats = self.model.encode_audio(self.model.features(chunks))
            if len(self.store) >= self.size:
                self.store.pop(next(iter(self.store)))
            self.store[key] = feats
        return self.store[key]


def collate(model: AudioLM, samples: list[StreamSample], feats: FeatureCache, max_chunks: int) -> dict:
    """Alg. 2 sequences, right-padded into a batch; audio features concatenated in order."""
    tok = model.tokenizer
    seqs, enc = [], []
    for s in samples:
        f = feats(s, max_chunks)
        seqs.append(build_sequence(tok, f.shape[0], s.timeline_within(f.shape[0]), s.instruction,
                                   audio_slots=model.cfg.audio_slots))
        enc.append(f)
    L = max(len(q) for q in seqs)
    B = len(seqs)
    ids = torch.full((B, L), tok.eos_id, dtype=torch.long)
    am = torch.zeros((B, L), dtype=torch.bool)
    att = torch.zeros((B, L), dtype=torch.long)
    ys = torch.full((B, L), MASK, dtype=torch.long)
    yl = torch.full((B, L), MASK, dtype=torch.long)
    for i, q in enumerate(seqs):
        n = len(q)
        ids[i, :n] = torch.tensor(q.input_ids)
        am[i, :n] = torch.tensor(q.audio_mask)
        att[i, :n] = 1
        ys[i, :n] = torch.tensor(q.y_stream)
        yl[i, :n] = torch.tensor(q.y_lm)
    return {"input_ids": ids, "audio_mask": am, "attention_mask": att, "y_stream": ys, "y_lm": yl,
            "enc": torch.cat(enc)}


def sample_order(n: int, seed: int, stage: int, start: int, count: int) -> list[int]:
    """Positions [start, start+count) of the endless shuffled order: one permutation per epoch,
    each a pure function of (seed, stage, epoch)."""
    out = []
    for pos in range(start, start + count):
        epoch, i = divmod(pos, n)
        perm = np.random.default_rng([seed, stage, epoch]).permutation(n)
        out.append(int(perm[i]))
    return out


class StreamingObjective(torch.nn.Module):
    """Wraps the model so Accelerate/DDP see one forward that returns the dual loss."""

    def __init__(self, model: AudioLM, lam: float):
        super().__init__()
        self.model, self.lam = model, lam

    def forward(self, batch: dict):
        m = self.model
        audio = m.adapt(batch["enc"])
        x = m.embed(batch["input_ids"], batch["audio_mask"], audio)
        h = m.hidden(x, attention_mask=batch["attention_mask"])
        return dual_loss(m, h, batch["y_stream"], batch["y_lm"], self.lam)


# --------------------------------------------------------------------------- freeze policy


def set_trainable(model: AudioLM, groups: list[str]) -> set[str]:
    """Freeze everything, then unfreeze the stage's groups; return the trainable names."""
    known = {"head", "adapter", "lm", "lora"}
    if set(groups) - known:
        raise ValueError(f"unknown trainable groups {sorted(set(groups) - known)}; use {sorted(known)}")
    model.requires_grad_(False)
    pg = model.param_groups()
    names = set()
    for g in groups:
        if g == "lora":
            sel = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
            if not sel:
                raise ValueError("trainable 'lora' but the recipe has no `lora:` section")
        elif g == "lm" and any("lora_" in n for n, _ in model.named_parameters()):
            sel = [(n, p) for n, p in model.named_parameters() if "lora_" in n] + pg["head"]
        else:
            sel = pg[g]
        for n, p in sel:
            p.requires_grad_(True)
            names.add(n)
    return names


def _new_rows_only_hook(model: AudioLM):
    """Stage 1 with an untied head: of the input embeddings only the new tokens' rows train."""
    emb = model.embed_tokens.weight
    if emb is model.head.weight or not emb.requires_grad:
        return None
    mask = model.new_token_grad_mask().to(emb.device, emb.dtype)
    return emb.register_hook(lambda g: g * mask)


# --------------------------------------------------------------------------- the loop


def _precision(p: str) -> str:
    if p != "auto":
        return p
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _truncate_log(path: Path, n_lines: int) -> None:
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)[:n_lines]
        path.write_text("".join(lines))


def train(recipe: Recipe, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> Path:
    """Run every stage; returns the final model folder (`<out>/model`). `stop_after` ends the
    run after that many optimizer steps in total (tests use it to simulate a kill)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    acc = Accelerator(mixed_precision=_precision(recipe.precision))
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model)
    if recipe.lora:
        inject_lora(model, recipe.lora)
    if recipe.gradient_checkpointing:
        model.body.gradient_checkpointing_enable()
    model.to(acc.device)

    log_path, trained = out / "metrics.jsonl", set()
    start_stage, start_step, st = 0, 0, None
    ckpt = resolve_dir(out / "checkpoint") if resume else None
    if ckpt is not None:
        from safetensors.torch import load_file

        st = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        params = dict(model.named_parameters(remove_duplicate=True))
        with torch.no_grad():
            for n, t in load_file(str(ckpt / "model.safetensors")).items():
                params[n].copy_(t)
        trained, start_stage, start_step = set(st["trained"]), st["stage"], st["step"]
        _truncate_log(log_path, st["log_lines"])
        acc.print(f"resuming from {ckpt}: stage {start_stage + 1}, step {start_step}")
    elif not resume and log_path.exists():
        log_path.unlink()

    feats = FeatureCache(model, recipe.feature_cache)
    objective = StreamingObjective(model, recipe.lam)
    data_cache: dict[str, list[StreamSample]] = {}
    total_steps = 0
    for si, stage in enumerate(recipe.stages):
        if si < start_stage:
            continue
        names = set_trainable(model, stage.trainable)
        trained |= names
        hook = _new_rows_only_hook(model) if "head" in stage.trainable and "lm" not in stage.trainable else None
        decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=stage.lr, betas=recipe.betas, eps=recipe.eps)
        sched = get_cosine_schedule_with_warmup(opt, math.ceil(stage.warmup_ratio * stage.steps), stage.steps)
        step = 0
        if st is not None and si == start_stage and "optimizer" in st:
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            step = start_step
        wrapped, opt_p, sched_p = acc.prepare(objective, opt, sched)
        samples = data_cache.setdefault(stage.data, load_streams(stage.data))
        bar = tqdm(total=stage.steps, initial=step, desc=f"stage {si + 1}/{len(recipe.stages)} {stage.name}",
                   disable=not (progress and acc.is_local_main_process), dynamic_ncols=True)
        t0 = time.time()
        while step < stage.steps:
            wrapped.train()
            logs, ntok = [], 0
            for micro in range(stage.grad_accum):
                b = (step * stage.grad_accum + micro) * acc.num_processes + acc.process_index
                idx = sample_order(len(samples), recipe.seed, si, b * stage.batch_size, stage.batch_size)
                batch = collate(model, [samples[i] for i in idx], feats, stage.max_chunks)
                batch = {k: v.to(acc.device) for k, v in batch.items()}
                ntok += int(batch["attention_mask"].sum())
                ctx = acc.no_sync(wrapped) if micro < stage.grad_accum - 1 else _nullctx()
                with ctx:
                    o = wrapped(batch)
                    acc.backward(o.loss / stage.grad_accum)
                logs.append(o)
            gnorm = acc.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], recipe.max_grad_norm)
            opt_p.step()
            sched_p.step()
            opt_p.zero_grad(set_to_none=True)
            step += 1
            total_steps += 1
            rec = _merge_logs(logs)
            rec.update(stage=si + 1, step=step, lr=sched.get_last_lr()[0], grad_norm=float(gnorm),
                       tokens=ntok, sec=time.time() - t0)
            t0 = time.time()
            if acc.is_main_process:
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            bar.set_postfix(lm=f"{rec['lm']:.3f}", stream=f"{rec['stream']:.3f}", acc=f"{rec['acc']:.2f}")
            bar.update(1)
            done = step == stage.steps
            if step % recipe.save_every == 0 or done:
                next_stage, next_step = (si + 1, 0) if done else (si, step)
                _save_resume(acc, model, trained, out, recipe, opt, sched, next_stage, next_step, log_path)
            if stop_after is not None and total_steps >= stop_after:
                bar.close()
                return out / "checkpoint"
        bar.close()
        if hook is not None:
            hook.remove()
        acc.free_memory()
        st = None
    final = out / "model"
    if acc.is_main_process:
        save_checkpoint(model, trained, final, recipe.to_dict(), recipe.lora)
    acc.wait_for_everyone()
    return final


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _merge_logs(logs) -> dict:
    n_s = sum(o.n_stream for o in logs)
    n_l = sum(o.n_lm for o in logs)
    c = {k: sum(o.counts[k] for o in logs) for k in ("tp", "fn", "tn", "fp")}
    r = lambda a, b: a / b if b else float("nan")  # noqa: E731
    return {
        "loss": sum(o.loss.item() for o in logs) / len(logs),
        "lm": r(sum(o.lm * o.n_lm for o in logs), n_l) if n_l else 0.0,
        "stream": r(sum(o.stream * o.n_stream for o in logs), n_s),
        "acc": r(c["tp"] + c["tn"], n_s), "resp_recall": r(c["tp"], c["tp"] + c["fn"]),
        "sil_recall": r(c["tn"], c["tn"] + c["fp"]), "n_lm": n_l, "n_stream": n_s,
    }


def _save_resume(acc, model, trained, out, recipe, opt, sched, stage, step, log_path) -> None:
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return
    n_lines = len(log_path.read_text().splitlines()) if log_path.exists() else 0
    state = {"stage": stage, "step": step, "trained": sorted(trained), "log_lines": n_lines}
    if step:  # mid-stage: the next run continues this optimizer; at a stage boundary a new one starts
        state.update(optimizer=opt.state_dict(), scheduler=sched.state_dict())
    save_checkpoint(model, trained, out / "checkpoint", recipe.to_dict(), recipe.lora,
                    extra_files={"trainer_state.pt": state})
