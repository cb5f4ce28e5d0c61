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

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import gather_trained_state, inject_lora, resolve_dir, save_checkpoint
from .data import StreamSample
from .dataspec import load_streams
from .loss import dual_loss
from .model import AudioLM, ModelConfig, build_model
from .tokens import MASK, NO_WINDOW, build_sequence


@dataclass
class StageConfig:
    name: str = "stage"
    trainable: list[str] = field(default_factory=lambda: ["adapter"])  # head | adapter | lm | lora
    data: str | list[str] = "synthetic:beep"  # a data spec (dataspec.load_streams), or a list of them mixed
    lr: float = 1e-4
    steps: int = 100
    batch_size: int = 1
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    max_chunks: int = 60  # L_max = 60 chunks (24 s)
    # lr multiplier for the added tokens' output rows (`special_out`, the <silent>/<response>
    # readout) when they train. Not in the paper, whose stage 1 trains the head for 5 k steps: in a
    # few hundred steps at an LM learning rate these rows barely move (BENCHMARKS.md, issue 10).
    readout_lr_scale: float = 1.0


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
    response_weight: float = 1.0  # weight of a <response> control label vs <silent> (loss.dual_loss)
    reply_windows: bool | str = False  # replies with a timeline "from": True / "any" may come anywhere in their
    # window (one at-least-once term), "all" labels every chunk of it <response> (loss.dual_loss)
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

    def __init__(self, model: AudioLM, size: int, encoder: torch.nn.Module | None = None):
        self.model, self.size, self.store, self.encoder = model, size, {}, encoder

    def __call__(self, s: StreamSample, max_chunks: int | None) -> torch.Tensor:
        key = (s.id, max_chunks)
        if key not in self.store:
            # max_chunks None: the spoken instruction's chunks (heard before the stream)
            chunks = torch.from_numpy(s.chunks(max_chunks) if max_chunks is not None else s.instruction_chunks())
            mel = self.model.features(chunks)
            if self.encoder is None:
                feats = self.model.encode_audio(mel)
            else:
                p = next(self.encoder.parameters())
                with torch.no_grad():
                    feats = self.encoder(mel.to(p.device, p.dtype)).float()
            if len(self.store) >= self.size:
                self.store.pop(next(iter(self.store)))
            self.store[key] = feats
        return self.store[key]


def collate(model: AudioLM, samples: list[StreamSample], feats: FeatureCache, max_chunks: int) -> dict:
    """Alg. 2 sequences, right-padded into a batch; audio features concatenated in order (a
    sample's spoken instruction, if any, then its stream: the order its audio slots are in)."""
    tok = model.tokenizer
    seqs, enc = [], []
    for s in samples:
        f = feats(s, max_chunks)
        fi = feats(s, None) if s.has_instruction_audio else None
        seqs.append(build_sequence(tok, f.shape[0], s.timeline_within(f.shape[0]), s.instruction,
                                   instruction_chunks=0 if fi is None else fi.shape[0],
                                   audio_slots=model.cfg.audio_slots))
        if fi is not None and fi.shape[0]:
            enc.append(fi)
        enc.append(f)
    L = max(len(q) for q in seqs)
    B = len(seqs)
    ids = torch.full((B, L), tok.eos_id, dtype=torch.long)
    am = torch.zeros((B, L), dtype=torch.bool)
    att = torch.zeros((B, L), dtype=torch.long)
    ys = torch.full((B, L), MASK, dtype=torch.long)
    yl = torch.full((B, L), MASK, dtype=torch.long)
    yw = torch.full((B, L), NO_WINDOW, dtype=torch.long)
    n_win = 0
    for i, q in enumerate(seqs):
        n = len(q)
        ids[i, :n] = torch.tensor(q.input_ids)
        am[i, :n] = torch.tensor(q.audio_mask)
        att[i, :n] = 1
        ys[i, :n] = torch.tensor(q.y_stream)
        yl[i, :n] = torch.tensor(q.y_lm)
        w = torch.tensor(q.y_window)
        yw[i, :n] = torch.where(w >= 0, w + n_win, w)  # window ids unique across the batch
        n_win += int(w.max().item()) + 1 if len(w) and w.max() >= 0 else 0
    return {"input_ids": ids, "audio_mask": am, "attention_mask": att, "y_stream": ys, "y_lm": yl,
            "y_window": yw, "enc": torch.cat(enc)}


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

    def __init__(self, model: AudioLM, lam: float, response_weight: float = 1.0, reply_windows: bool = False):
        super().__init__()
        self.model, self.lam, self.response_weight = model, lam, response_weight
        if reply_windows not in (False, True, "any", "all"):
            raise ValueError(f"recipe reply_windows must be true, false, 'any' or 'all', not {reply_windows!r}")
        self.reply_windows = reply_windows
        # FSDP's transformer auto-wrap shards each of these blocks on its own
        self._no_split_modules = list(getattr(model.body, "_no_split_modules", None) or [])

    def forward(self, batch: dict):
        m = self.model
        audio = m.adapt(batch["enc"])
        x = m.embed(batch["input_ids"], batch["audio_mask"], audio)
        h = m.hidden(x, attention_mask=batch["attention_mask"])
        mode = "any" if self.reply_windows is True else self.reply_windows
        return dual_loss(m, h, batch["y_stream"], batch["y_lm"], self.lam, self.response_weight,
                         window=batch["y_window"] if self.reply_windows else None, window_mode=mode or "any")


# --------------------------------------------------------------------------- freeze policy


def set_trainable(model: AudioLM, groups: list[str]) -> set[str]:
    """Freeze everything, then unfreeze the stage's groups; return the trainable names."""
    known = {"head", "tokens", "adapter", "lm", "lora"}
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


def _param_lists(model: AudioLM, split_readout: bool = False) -> tuple[list, ...]:
    """The optimizer's groups (weight decay, none, and with `split_readout` the control tokens'
    output rows at their own lr), in a fixed order: index i of a saved optimizer state is the i-th
    parameter of these lists, whatever wraps the model."""
    apart = {id(model.special_out)} if split_readout else set()
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and id(p) not in apart]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    if not split_readout:
        return decay, no_decay
    return decay, no_decay, [model.special_out] if model.special_out.requires_grad else []


def _opt_lists(model: AudioLM, opt) -> tuple[list, ...]:
    """`_param_lists` as `opt` was built from them (a third group: the readout apart)."""
    return _param_lists(model, len(opt.param_groups) == 3)


def _opt_and_sched(model: AudioLM, recipe: Recipe, stage: StageConfig):
    from transformers import get_cosine_schedule_with_warmup

    lists = _param_lists(model, stage.readout_lr_scale != 1.0)
    groups = [{"params": lists[0], "weight_decay": recipe.weight_decay}, {"params": lists[1], "weight_decay": 0.0}]
    if len(lists) == 3:  # a third group only when asked for: saved two-group states still load
        groups.append({"params": lists[2], "weight_decay": 0.0, "lr": stage.lr * stage.readout_lr_scale})
    opt = torch.optim.AdamW(groups, lr=stage.lr, betas=recipe.betas, eps=recipe.eps)
    return opt, get_cosine_schedule_with_warmup(opt, math.ceil(stage.warmup_ratio * stage.steps), stage.steps)


def _configure_deepspeed(acc, recipe: Recipe, stage: StageConfig) -> None:
    """ZeRO's own accumulation, micro-batch and clipping come from the stage, not the launch
    config: DeepSpeed steps its engine at the boundary Accelerate's `accumulate` marks, so both
    must agree on the count. Set before each stage's `prepare` (a new engine per stage)."""
    cfg = acc.state.deepspeed_plugin.deepspeed_config
    cfg["gradient_accumulation_steps"] = stage.grad_accum
    cfg["train_micro_batch_size_per_gpu"] = stage.batch_size
    cfg["train_batch_size"] = stage.batch_size * stage.grad_accum * acc.num_processes
    cfg["gradient_clipping"] = recipe.max_grad_norm


def train(recipe: Recipe, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> Path:
    """Run every stage; returns the final model folder (`<out>/model`). `stop_after` ends the
    run after that many optimizer steps in total (tests use it to simulate a kill).

    Under `accelerate launch` (W processes) `batch_size` and `grad_accum` are per process: an
    optimizer step sees batch_size × grad_accum × W samples, the positions [cursor, cursor +
    that) of the same seed-pure order a single process reads (process r takes micro-batch
    m·W + r of them), so W processes with batch B equal one with batch W·B, and the data cursor
    (not the step count) says where a resumed run continues, whatever its W."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs
    from tqdm.auto import tqdm

    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    handlers, cpu = [], False
    if launched > 1 and not torch.accelerator.is_available():
        # Without a GPU (or other accelerator), Accelerate 1.x finds no process-group backend
        # for processes that torchrun started and leaves each to train alone. DeepSpeed's CPU
        # accelerator talks gloo; everything else becomes DDP over gloo (Accelerate's MULTI_CPU).
        if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        else:
            cpu = True
    acc = Accelerator(mixed_precision=_precision(recipe.precision), kwargs_handlers=handlers, cpu=cpu,
                      gradient_accumulation_steps=recipe.stages[0].grad_accum if recipe.stages else 1)
    if launched > 1 and acc.num_processes != launched:
        # unconnected processes would each train alone, all writing the same files
        raise RuntimeError(f"launched {launched} processes but Accelerate joined {acc.num_processes} "
                           f"({acc.distributed_type}); on CPU use soundflow/configs/ddp-cpu.yaml")
    if os.environ.get("ACCELERATE_USE_FSDP") == "true" and acc.distributed_type != DistributedType.FSDP:
        # Accelerate 1.x enables FSDP on GPU-like devices only; do not silently run DDP instead
        raise RuntimeError(f"an FSDP launch that Accelerate set up as {acc.distributed_type} (FSDP needs GPUs here)")
    fsdp = acc.distributed_type == DistributedType.FSDP
    if fsdp and not acc.is_fsdp2:
        raise ValueError("FSDP1 is not supported: set fsdp_version: 2 (see soundflow/configs/fsdp.yaml)")
    ds = acc.distributed_type == DistributedType.DEEPSPEED
    W, rank = acc.num_processes, acc.process_index
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
        model.load_trained(load_file(str(ckpt / "model.safetensors")))
        trained, start_stage, start_step = set(st["trained"]), st["stage"], st["step"]
        acc.wait_for_everyone()  # every process has read the log's length before the main one cuts it
        if acc.is_main_process:
            _truncate_log(log_path, st["log_lines"])
        acc.print(f"resuming from {ckpt}: stage {start_stage + 1}, step {start_step}")
    elif not resume and log_path.exists() and acc.is_main_process:
        log_path.unlink()

    # FSDP shards every parameter, the frozen encoder's too, and a sharded module may only run
    # inside the root's forward on all ranks at once; features are computed per rank, whenever
    # its cache misses, so they use an unsharded copy of the (small, frozen) encoder.
    encoder = copy.deepcopy(model.encoder) if fsdp else None
    feats = FeatureCache(model, recipe.feature_cache, encoder)
    objective = StreamingObjective(model, recipe.lam, recipe.response_weight, recipe.reply_windows)
    wrapped = None  # under FSDP the model is sharded once, by the first stage's prepare
    data_cache: dict[str | tuple, list[StreamSample]] = {}
    total_steps = 0
    for si, stage in enumerate(recipe.stages):
        if si < start_stage:
            continue
        names = set_trainable(model, stage.trainable)
        trained |= names
        acc.gradient_accumulation_steps = stage.grad_accum
        hook, row_mask = None, None
        if "head" in stage.trainable and "lm" not in stage.trainable:
            if fsdp:  # a tensor hook on a sharded parameter never sees the gradient: mask after backward
                row_mask = _new_rows_mask(model)
            else:
                hook = _new_rows_only_hook(model)
        opt, sched = _opt_and_sched(model, recipe, stage)
        step, per_step = 0, stage.batch_size * stage.grad_accum * W
        cursor = 0  # samples of this stage's order consumed before `step`
        resumed = st is not None and si == start_stage and "optimizer" in st
        if resumed:
            step = start_step
            # checkpoints from before the cursor was stored were all written with this formula
            cursor = st.get("cursor", start_step * per_step)
            if not (fsdp or ds):  # plain optimizer: its state loads as it was saved
                opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
        if ds:
            _configure_deepspeed(acc, recipe, stage)
        if fsdp and wrapped is not None:
            # already sharded: requires_grad changes in place, only the optimizer is new
            opt_p = acc.prepare_optimizer(opt)
        else:
            # DDP records the trainable parameters when it wraps, DeepSpeed when it builds its
            # engine: both are rebuilt for each stage's freeze policy, over the same module
            wrapped, opt_p = acc.prepare(objective, opt)
        if resumed and (fsdp or ds):
            _load_full_optimizer_state(acc, model, opt, st["optimizer"])
        key = stage.data if isinstance(stage.data, str) else tuple(stage.data)
        if key not in data_cache:  # stages that share a data set read it once
            data_cache[key] = load_streams(stage.data)
        samples = data_cache[key]
        bar = tqdm(total=stage.steps, initial=step, desc=f"stage {si + 1}/{len(recipe.stages)} {stage.name}",
                   disable=not (progress and acc.is_local_main_process), dynamic_ncols=True)
        t0 = time.time()
        while step < stage.steps:
            wrapped.train()
            logs, ntok = [], 0
            acc.step = 0  # Accelerate's micro-batch counter: the last of these grad_accum syncs
            for micro in range(stage.grad_accum):
                pos = cursor + (micro * W + rank) * stage.batch_size
                idx = sample_order(len(samples), recipe.seed, si, pos, stage.batch_size)
                batch = collate(model, [samples[i] for i in idx], feats, stage.max_chunks)
                batch = {k: v.to(acc.device) for k, v in batch.items()}
                ntok += int(batch["attention_mask"].sum())
                with acc.accumulate(wrapped):
                    o = wrapped(batch)
                    acc.backward(o.loss)  # divided by grad_accum there
                logs.append(o)
            if row_mask is not None:
                _mask_rows_(model, row_mask)
            gnorm = acc.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], recipe.max_grad_norm)
            opt_p.step()
            if not opt_p.step_was_skipped:  # (fp16 overflow) the schedule advances with real steps only
                sched.step()
            opt_p.zero_grad(set_to_none=True)
            step += 1
            cursor += per_step
            total_steps += 1
            rec = _merge_logs(logs) if W == 1 else _merge_logs_across(acc, logs)
            if W > 1:
                ntok = int(acc.reduce(torch.tensor(ntok, device=acc.device), "sum"))
            rec.update(stage=si + 1, step=step, lr=sched.get_last_lr()[0],
                       grad_norm=float(gnorm) if gnorm is not None else float("nan"), tokens=ntok,
                       sec=time.time() - t0)
            t0 = time.time()
            if acc.is_main_process:
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            bar.set_postfix(lm=f"{rec['lm']:.3f}", stream=f"{rec['stream']:.3f}", acc=f"{rec['acc']:.2f}")
            bar.update(1)
            done = step == stage.steps
            if step % recipe.save_every == 0 or done:
                next_stage, next_step = (si + 1, 0) if done else (si, step)
                _save_resume(acc, model, trained, out, recipe, opt, sched, next_stage, next_step, log_path,
                             cursor=0 if done else cursor, world_size=W)
            if stop_after is not None and total_steps >= stop_after:
                bar.close()
                acc.wait_for_everyone()
                return out / "checkpoint"
        bar.close()
        if hook is not None:
            hook.remove()
        if ds:  # the old engine's gradient hooks stay on the parameters unless it is torn down
            acc.deepspeed_engine_wrapped.engine.destroy()
        keep = wrapped if fsdp else None
        acc.free_memory()
        wrapped = keep
        st = None
    final = out / "model"
    state = gather_trained_state(model, trained, acc.is_main_process)
    if acc.is_main_process:
        save_checkpoint(model, trained, final, recipe.to_dict(), recipe.lora, state=state)
    acc.wait_for_everyone()
    return final


def _new_rows_mask(model: AudioLM):
    emb = model.embed_tokens.weight
    if emb is model.head.weight or not emb.requires_grad:
        return None
    return model.new_token_grad_mask()


def _mask_rows_(model: AudioLM, mask: torch.Tensor) -> None:
    """Zero the base-vocabulary rows of a (sharded) embedding gradient: a 0/1 mask applied to the
    accumulated gradient equals applying it to each micro-batch's."""
    g = model.embed_tokens.weight.grad
    if g is None:
        return
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(g, DTensor):  # the mask sharded by rows like the gradient, applied shard by shard
        m = distribute_tensor(mask.to(g.device, g.dtype).expand(g.shape).contiguous(), g.device_mesh, g.placements)
        g.to_local().mul_(m.to_local())
    else:
        g.mul_(mask.to(g.device, g.dtype))


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


def _merge_logs_across(acc, logs) -> dict:
    """`_merge_logs` over every process's micro-batches: the metrics of the whole optimizer step."""
    v = torch.tensor([sum(o.loss.item() for o in logs), len(logs), sum(o.lm * o.n_lm for o in logs),
                      sum(o.n_lm for o in logs), sum(o.stream * o.n_stream for o in logs),
                      sum(o.n_stream for o in logs)] + [sum(o.counts[k] for o in logs) for k in ("tp", "fn", "tn", "fp")],
                     dtype=torch.float64, device=acc.device)
    (loss, n, lm, n_l, stream, n_s, tp, fn, tn, fp) = acc.reduce(v, "sum").tolist()
    r = lambda a, b: a / b if b else float("nan")  # noqa: E731
    return {"loss": loss / n, "lm": r(lm, n_l) if n_l else 0.0, "stream": r(stream, n_s),
            "acc": r(tp + tn, n_s), "resp_recall": r(tp, tp + fn), "sil_recall": r(tn, tn + fp),
            "n_lm": int(n_l), "n_stream": int(n_s)}


def _full_optimizer_state(acc, model: AudioLM, opt) -> dict:
    """The optimizer state as a single process's `opt.state_dict()` would hold it (full tensors,
    index i = i-th parameter of `_param_lists`), so any world size can load it. Collective under
    FSDP and DeepSpeed: every process must call it."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.DEEPSPEED:
        from deepspeed.utils import safe_get_full_optimizer_state

        _relink_zero_states(acc)
        flat_state = next(iter(opt.state.values()), {})  # ZeRO keeps one state per flat partition
        state, i = {}, 0
        for p in (q for g in _opt_lists(model, opt) for q in g):
            s = {k: safe_get_full_optimizer_state(p, k) for k in ("exp_avg", "exp_avg_sq")}
            if s["exp_avg"] is not None:
                state[i] = {"step": flat_state["step"].detach().clone().cpu(),
                            **{k: v.detach().cpu() for k, v in s.items()}}
            i += 1
    elif acc.distributed_type == DistributedType.FSDP:
        from torch.distributed.tensor import DTensor

        state, i = {}, 0
        for p in (q for g in _opt_lists(model, opt) for q in g):
            if p in opt.state:
                state[i] = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu()
                            for k, v in opt.state[p].items()}
            i += 1
    else:
        return opt.state_dict()
    groups, i = [], 0
    for g, params in zip(opt.param_groups, _opt_lists(model, opt)):
        groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": list(range(i, i + len(params)))})
        i += len(params)
    return {"state": state, "param_groups": groups}


def _relink_zero_states(acc) -> None:
    """Point each parameter's ZeRO fragment at the current optimizer state. DeepSpeed 0.19 links
    them once, right after the first parameter group's first step, so with two groups (decay /
    no decay) the second group's parameters never see theirs."""
    zo = acc.deepspeed_engine_wrapped.engine.optimizer
    zo._hp_optimizer_states_linked = False
    zo._lazy_init_hp_params_optimizer_state()


def _load_full_optimizer_state(acc, model: AudioLM, opt, sd: dict) -> None:
    """Inverse of `_full_optimizer_state` for FSDP (shard each tensor like its parameter) and
    DeepSpeed (hand each parameter's full state to ZeRO's partitions); after `prepare`."""
    from accelerate.utils import DistributedType

    params = [q for g in _opt_lists(model, opt) for q in g]
    if acc.distributed_type == DistributedType.DEEPSPEED:
        from deepspeed.utils import safe_set_full_optimizer_state

        if sd["state"]:
            # AdamW creates its state at the first step; create it now (zeros, then overwritten
            # fragment by fragment) so ZeRO's per-parameter views exist to be written into
            step = next(iter(sd["state"].values()))["step"]
            for fp in acc.deepspeed_engine_wrapped.engine.optimizer.single_partition_of_fp32_groups:
                opt.state[fp] = {"step": step.clone().to(fp.device), "exp_avg": torch.zeros_like(fp),
                                 "exp_avg_sq": torch.zeros_like(fp)}
            _relink_zero_states(acc)
        for i, p in enumerate(params):
            for k in ("exp_avg", "exp_avg_sq"):
                if i in sd["state"]:
                    safe_set_full_optimizer_state(p, sd["state"][i][k].to(p.device), k)
        for g, saved in zip(opt.param_groups, sd["param_groups"]):
            g.update({k: v for k, v in saved.items() if k != "params"})
        return
    from torch.distributed.tensor import DTensor, distribute_tensor

    opt.load_state_dict(sd)  # loads plain tensors keyed by these DTensor parameters
    for p in params:
        for k, v in opt.state.get(p, {}).items():
            if isinstance(p, DTensor) and torch.is_tensor(v) and not isinstance(v, DTensor) and v.shape == p.shape:
                opt.state[p][k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements)


def _save_resume(acc, model, trained, out, recipe, opt, sched, stage, step, log_path, cursor: int = 0,
                 world_size: int = 1) -> None:
    acc.wait_for_everyone()
    # gathered on every process (FSDP/ZeRO collectives), written by the main one only
    tensors = gather_trained_state(model, trained, acc.is_main_process)
    optim = _full_optimizer_state(acc, model, opt) if step else None
    if not acc.is_main_process:
        return
    n_lines = len(log_path.read_text().splitlines()) if log_path.exists() else 0
    state = {"stage": stage, "step": step, "trained": sorted(trained), "log_lines": n_lines,
             "cursor": cursor, "world_size": world_size, "distributed": acc.distributed_type.value}
    if step:  # mid-stage: the next run continues this optimizer; at a stage boundary a new one starts
        state.update(optimizer=optim, scheduler=sched.state_dict())
    save_checkpoint(model, trained, out / "checkpoint", recipe.to_dict(), recipe.lora,
                    extra_files={"trainer_state.pt": state}, state=tensors)
