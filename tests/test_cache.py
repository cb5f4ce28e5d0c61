"""The decoder's KV cache (cache.py): growable buffers, roll back, shift by RoPE re-rotation."""

import pytest
import torch

from soundflow import decoding
from soundflow.cache import growable_layer_class, new_cache, shift_cache, truncate_cache
from soundflow.model import build_model


@pytest.fixture(scope="module", params=["tiny", "tiny-qwen"])
def model(request):
    return build_model(request.param)


def _kv(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 2, n, 8, generator=g), torch.randn(1, 2, n, 8, generator=g)


def test_growable_cache_equals_concatenation():
    """Steps past the first buffer's capacity (256) keep every key and value, in order."""
    from transformers.cache_utils import DynamicCache

    grow, ref = new_cache(), DynamicCache()
    for i, n in enumerate([11, 1, 200, 60, 1, 300]):
        k, v = _kv(n, i)
        for c in (grow, ref):
            c.update(k, v, 0)
        torch.testing.assert_close(grow.layers[0].keys, ref.layers[0].keys, rtol=0, atol=0)
        torch.testing.assert_close(grow.layers[0].values, ref.layers[0].values, rtol=0, atol=0)
    assert isinstance(grow.layers[0], growable_layer_class())
    assert grow.layers[0].kbuf.shape[-2] > grow.get_seq_length() == 573  # spare capacity, not a copy a step


def test_truncate_then_update_overwrites_the_stale_tail():
    c = new_cache()
    k, v = _kv(10, 0)
    c.update(k, v, 0)
    truncate_cache(c, 4)
    k2, v2 = _kv(3, 1)
    keys, values = c.update(k2, v2, 0)
    assert c.get_seq_length() == 7
    torch.testing.assert_close(keys, torch.cat([k[..., :4, :], k2], -2), rtol=0, atol=0)
    torch.testing.assert_close(values, torch.cat([v[..., :4, :], v2], -2), rtol=0, atol=0)
    truncate_cache(c, 100)  # longer than the cache: nothing to drop
    assert c.get_seq_length() == 7


def test_shift_by_nothing_is_a_no_op(model):
    st = decoding.start(model, "hello")
    keys = [layer.keys.clone() for layer in st.cache.layers]
    shift_cache(st.cache, 0, 0, model.rotary_emb)
    assert all(torch.equal(a, layer.keys) for a, layer in zip(keys, st.cache.layers))


def test_shift_cache_equals_computing_at_lower_positions(model):
    """Evicting n positions and re-rotating the rest equals having computed them n lower."""
    torch.manual_seed(0)
    audio = model.encode(model.features(torch.randn(4, 6400) * 0.1)).detach()
    ref = decoding.start(model)  # chunks 2, 3 at positions 0..
    for k in (2, 3):
        decoding.feed_audio(model, ref, audio[k : k + 1])
        decoding.decide(model, ref, 1.1)
    n = 7
    sh = decoding.start(model)
    sh.pos = n  # the same chunks computed n positions higher, behind n positions to evict
    for k in (2, 3):
        decoding.feed_audio(model, sh, audio[k : k + 1])
        decoding.decide(model, sh, 1.1)
    for layer in sh.cache.layers:
        pad = torch.zeros(*layer.keys.shape[:-2], n, layer.keys.shape[-1])
        layer.keys, layer.values = torch.cat([pad, layer.keys], -2), torch.cat([pad, layer.values], -2)
        layer.kbuf = None
    shift_cache(sh.cache, 0, n, model.rotary_emb)
    sh.pos -= n
    for a, b in zip(ref.cache.layers, sh.cache.layers):
        assert torch.allclose(a.keys, b.keys, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)
    assert abs(decoding.feed_audio(model, ref, audio[:1]) - decoding.feed_audio(model, sh, audio[:1])) < 1e-5



def test_truncate_cache(model):
    st = decoding.start(model, "hello world")
    n = st.cache.get_seq_length()
    truncate_cache(st.cache, 4)
    assert st.cache.get_seq_length() == 4 and n > 4
