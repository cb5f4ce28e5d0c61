"""The decoder's KV cache: growable buffers, roll back, and eviction by RoPE re-rotation.

A stream's context lives in one transformers `Cache` (one layer of keys/values per decoder
layer). Three operations are the framework's own:

- `new_cache()`: layers that write only each step's new tokens into a buffer with spare
  capacity (transformers' `DynamicLayer` concatenates the whole cache every step, so per-chunk
  cost would grow over a stream);
- `truncate_cache`: keep the first positions (roll back a tentative forward, as the barge-in
  probe and a failed batch do);
- `shift_cache`: drop a span and move the later positions down without re-running the LM
  (how the engine keeps a bounded context window, docs/architecture.md).
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def growable_layer_class() -> type:
    """`GrowableLayer`, a transformers `DynamicLayer` subclass (defined on first use, so importing
    this module does not import transformers)."""
    from transformers.cache_utils import DynamicLayer

    class GrowableLayer(DynamicLayer):
        """A DynamicLayer whose keys/values live in a buffer with spare capacity.

        DynamicLayer concatenates the whole cache on every step (O(cache) copies per chunk,
        so per-chunk cost grows over a stream); here a step writes only its new tokens and the
        buffer doubles when full. `keys`/`values` stay views, so crop() and readers just work.
        Code that replaces `keys`/`values` itself sets `kbuf = None`: the next update then
        re-buffers from them."""

        kbuf = vbuf = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, L = self.get_seq_length(), key_states.shape[-2]
            buf = self.kbuf
            if buf is None or n + L > buf.shape[-2] or buf.shape[:-2] != key_states.shape[:-2]:
                cap = max(256, 2 * (n + L))
                kb = key_states.new_empty(*key_states.shape[:-2], cap, key_states.shape[-1])
                vb = value_states.new_empty(*value_states.shape[:-2], cap, value_states.shape[-1])
                if n:
                    kb[..., :n, :] = self.keys
                    vb[..., :n, :] = self.values
                self.kbuf, self.vbuf = kb, vb
            self.kbuf[..., n : n + L, :] = key_states
            self.vbuf[..., n : n + L, :] = value_states
            self.keys, self.values = self.kbuf[..., : n + L, :], self.vbuf[..., : n + L, :]
            return self.keys, self.values

    return GrowableLayer


def new_cache():
    """A transformers Cache of `GrowableLayer`s (amortised O(new tokens) per step)."""
    from transformers.cache_utils import Cache

    return Cache(layer_class_to_replicate=growable_layer_class())


def truncate_cache(cache, length: int) -> None:
    """Keep the first `length` positions of every layer (roll back a tentative forward).

    `Cache.crop`'s argument changed meaning across transformers releases (a final length, then
    a count to remove); this says what it means. Growable buffers stay: the next update
    overwrites the stale tail."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.shape[-2] > length:
            layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]


@torch.no_grad()
def shift_cache(cache, start: int, n: int, rotary_emb) -> None:
    """Drop cache positions [start, start + n) and move the later ones n positions down.

    RoPE makes attention depend on relative positions only, and R(a)R(b) = R(a + b): keys
    stored at position p become keys at p - n by one more rotation by -n, so evicting old
    context costs an elementwise pass over the window instead of re-running the LM over it.
    Values carry no position. `rotary_emb` is the model's RoPE, `AudioLM.rotary_emb`
    (`(x, position_ids) -> (cos, sin)`, as in transformers). (Qwen's M-RoPE reduces to plain
    RoPE here: all three position axes are equal for audio and text.)"""
    if n <= 0:
        return
    for layer in cache.layers:
        k, v = layer.keys, layer.values
        tail = k[..., start + n :, :]
        pos = torch.full((1, tail.shape[-2]), -n, dtype=torch.long, device=tail.device)
        cos, sin = rotary_emb(tail, pos)
        cos, sin = cos.to(tail.dtype).unsqueeze(1), sin.to(tail.dtype).unsqueeze(1)
        half = tail.shape[-1] // 2
        rot = torch.cat([-tail[..., half:], tail[..., :half]], dim=-1)  # HF's rotate_half
        layer.keys = torch.cat([k[..., :start, :], tail * cos + rot * sin], dim=-2)
        layer.values = torch.cat([v[..., :start, :], v[..., start + n :, :]], dim=-2)
        layer.kbuf = None  # a GrowableLayer re-buffers from keys/values on its next update
