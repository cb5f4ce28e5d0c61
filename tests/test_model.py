"""Backends behind one interface: tiny, tiny Qwen2.5-Omni (same classes as the real one), mini."""

import numpy as np
import pytest
import torch

from soundflow.decoding import DecodeOptions, decode_stream
from soundflow.model import build_model


@pytest.fixture(scope="module", params=["tiny", "tiny-qwen"])
def model(request):
    return build_model(request.param)


def test_chunks_encoded_independently(model):
    rng = np.random.default_rng(0)
    chunks = torch.from_numpy((0.1 * rng.standard_normal((4, 6400))).astype(np.float32))
    together = model.encode(model.features(chunks))
    assert together.shape == (4, model.cfg.audio_slots, model.embed_tokens.weight.shape[1])
    alone = model.encode(model.features(chunks[2:3]))
    assert torch.allclose(together[2], alone[0], atol=1e-5)  # no cross-chunk encoder attention


def test_special_tokens_are_new_rows(model):
    tok = model.tokenizer
    ids = {tok.silent_id, tok.response_id, tok.eos_id, tok.audio_id}
    assert len(ids) == 4 and min(ids) >= model.n_base_vocab
    assert model.embed_tokens.weight.shape[0] >= tok.vocab_size


def test_decode_stream_events(model):
    chunks = [np.zeros(6400, np.float32) for _ in range(3)]
    ev = list(decode_stream(model, chunks, DecodeOptions(threshold=0.0, max_reply_tokens=3)))
    dec = [e for e in ev if e["type"] == "decision"]
    assert [e["chunk"] for e in dec] == [0, 1, 2]
    assert all(0.0 <= e["p_response"] <= 1.0 for e in dec)
    assert sum(e["type"] == "response" for e in ev) == 3  # threshold 0 → always respond


def test_cached_decoding_matches_full_forward(model):
    """The KV-cache path (pending control tokens, drained chunks) equals one full forward."""
    from soundflow import decoding
    from soundflow.tokens import build_sequence

    torch.manual_seed(0)
    chunks = torch.randn(3, 6400) * 0.1
    audio = model.encode(model.features(chunks))
    state = decoding.start(model, "hi")
    decoding.feed_audio(model, state, audio[:1])
    decoding.decide(model, state, 0.0)  # <silent> pending
    p_inc = decoding.feed_audio(model, state, audio[1:])  # drain two chunks at once
    seq = build_sequence(model.tokenizer, 3, [], instruction="hi")
    ids = torch.tensor([seq.input_ids[:-1]])  # up to the last audio slot
    am = torch.tensor([seq.audio_mask[:-1]])
    with torch.no_grad():
        h = model.hidden(model.embed(ids, am, audio))
    p_full = float(model.control_probs(h[0, -1]).detach())
    assert abs(p_inc - p_full) < 1e-4


def test_inference_attention_and_cache_match_reference():
    """attention.gqa_attention + the growable KV cache give the decoder's reference probabilities."""
    import copy

    from soundflow import decoding
    from soundflow.optimize import optimize_for_inference

    for name in ("tiny", "tiny-qwen"):
        ref = build_model(name)
        fast = optimize_for_inference(copy.deepcopy(ref), quant=None)
        audio = ref.encode(ref.features(torch.randn(40, 6400) * 0.1)).detach()
        probs = []
        for m in (ref, fast):
            st = decoding.start(m, "watch the room")
            ps = []
            for k in range(0, 40, 4):  # drains of 1-4 chunks, replies in between
                ps.append(decoding.feed_audio(m, st, audio[k : k + 1 + k % 4]))
                if decoding.decide(m, st, 1.0 if k % 8 else 0.0):
                    list(decoding.reply_tokens(m, st, 3))
            probs.append(ps)
        assert np.allclose(probs[0], probs[1], atol=1e-5), name


@pytest.mark.slow
def test_packaged_mini_is_the_trained_calibrated_default():
    """`load_model("mini")` is the shipped trained checkpoint (trained tensors, LoRA merged, a
    calibrated threshold); `build_model("mini")` stays the untrained backend."""
    from soundflow.calibrate import default_threshold
    from soundflow.loading import load_model, packaged_checkpoint
    from soundflow.model import build_model

    folder = packaged_checkpoint("mini")
    assert folder is not None and (folder / "model.safetensors").stat().st_size < 50 * 2**20
    trained, fresh = load_model("mini"), build_model("mini")
    assert 0.0 < default_threshold(trained) < 1.0
    x = torch.randn(2, 10, fresh.adapter.net[0].in_features)
    with torch.no_grad():
        assert not torch.allclose(trained.adapt(x), fresh.adapt(x))
    assert not any("lora" in n for n, _ in trained.named_parameters())  # merged for inference

