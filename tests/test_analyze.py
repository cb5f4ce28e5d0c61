"""The paper's two analyses (analyze.py) on the tiny backend."""

import copy
import json

import numpy as np
import pytest
import torch

from soundflow import analyze
from soundflow.cli import main
from soundflow.data import synthetic_beeps
from soundflow.model import build_model

DATA = "synthetic:beep?n=3&chunks=5&seed=2"


def test_continuity_ratio_definition():
    """A vector turning by the same angle every slot, across chunk edges too, is seamless (1.0);
    chunks drawn independently of each other lose it at the boundary."""
    d, n, s = 16, 6, 10
    steps = torch.arange(n * s, dtype=torch.float32) * 0.05
    basis = torch.linalg.qr(torch.randn(d, 2))[0]
    smooth = (torch.stack([steps.cos(), steps.sin()], -1) @ basis.T).view(n, s, d)
    assert analyze.continuity_ratio(smooth) == pytest.approx(1.0, abs=1e-5)
    g = torch.Generator().manual_seed(0)
    chunks = torch.stack([torch.randn(d, generator=g) + 0.05 * torch.randn(s, d, generator=g) for _ in range(n)])
    b, i = analyze._pair_cosines(chunks, center=False)
    assert i.mean() > 0.9 and analyze.continuity_ratio(chunks) == pytest.approx(float(b.mean() / i.mean()))
    assert analyze.continuity_ratio(chunks) < 0.5


def test_hand_run_layers_match_the_model_and_ablation_zeroes_one_head(model):
    s = synthetic_beeps(1, 4, seed=5)[0]
    x = analyze.prepare(model, s, 4)
    ref = model.hidden(x.embeds[None])
    with torch.no_grad():
        out = analyze.run_layers(model, x.embeds[None])
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        layer, head = 1, 2
        cap = analyze._Capture()
        analyze.run_layers(model, x.embeds[None], queries=x.decision_pos, capture=cap)
        mask = torch.ones(1, 4)
        mask[0, head] = 0
        abl = analyze.run_layers(model, cap.layer_inputs[layer][None], start=layer, head_mask=mask)
        # independent route: the same head cut out of o_proj's weight, the model's own forward
        m2 = copy.deepcopy(model)
        o = m2.body.layers[layer].self_attn.o_proj
        hd = m2.body.layers[layer].self_attn.head_dim
        o.weight[:, head * hd : (head + 1) * hd] = 0
        torch.testing.assert_close(abl, m2.hidden(x.embeds[None]), atol=1e-5, rtol=1e-5)
    assert x.decision_pos.tolist() == x.audio_pos[:, -1].tolist()


def test_continuity_on_tiny(model, tmp_path):
    r = analyze.analyze_continuity(model, DATA, max_chunks=5, progress=False)
    n_layers = len(model.body.layers)
    assert r["stages"] == ["encoder", "adapter"] + [f"layer_{i}" for i in range(n_layers)]
    assert r["n_streams"] == 3 and set(r["ratio"]) == set(r["stages"]) == set(r["centered"])
    s = synthetic_beeps(3, 5, seed=2)[0]
    x = analyze.prepare(model, s, 5)
    assert r["streams"][0]["ratio"]["encoder"] == pytest.approx(analyze.continuity_ratio(x.enc), abs=1e-4)
    h0 = analyze.layer_outputs(model, x.embeds)[0][x.audio_pos]
    assert r["streams"][0]["ratio"]["layer_0"] == pytest.approx(analyze.continuity_ratio(h0), abs=1e-4)
    js, png = analyze.write_result(r, tmp_path)
    assert json.loads(js.read_text())["ratio"] == r["ratio"] and png.stat().st_size > 1000


def test_heads_on_tiny_find_a_planted_dominant_head(tmp_path):
    model = build_model("tiny")
    r = analyze.analyze_heads(model, DATA, max_chunks=5, progress=False)
    L, H = len(model.body.layers), 4
    per = {k: np.asarray(v) for k, v in r["per_head"].items()}
    assert all(v.shape == (L, H) for v in per.values())
    # every key position is audio or text: the three shares add up to the whole attention
    total = per["attn_current_chunk"] + per["attn_past_audio"] + per["attn_text"]
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    np.testing.assert_allclose(per["output_share"].sum(1), 1.0, atol=1e-5)
    assert r["n_decisions"] == 15 and r["forward_check_max_abs_err"] < 1e-4
    # plant: one head's output weights scaled up makes it carry the decision
    planted = build_model("tiny")
    att = planted.body.layers[1].self_attn
    with torch.no_grad():
        att.o_proj.weight[:, 3 * att.head_dim : 4 * att.head_dim] *= 40
    p = analyze.analyze_heads(planted, DATA, max_chunks=5, progress=False)
    assert p["top_heads"][0]["head"] == "L1H3"
    assert p["dominance"]["top1_over_top2"] > 1.5
    assert p["top_heads"][0]["output_share"] > 0.5


def test_analyze_cli(tmp_path, capsys):
    assert main(["analyze", "continuity", "tiny", DATA, "--max-chunks", "4", "--out", str(tmp_path)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["analysis"] == "continuity" and "layer_0" in line["ratio"]
    assert main(["analyze", "heads", "tiny", DATA, "--max-chunks", "4", "--limit", "2", "--out", str(tmp_path)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["n_streams"] == 2 and line["top_heads"][0]["head"].startswith("L")
    assert (tmp_path / "heads.png").exists() and (tmp_path / "continuity.png").exists()
    assert main(["analyze", "heads", "tiny-qwen", DATA, "--out", str(tmp_path)]) == 2  # body not supported: one line
    capsys.readouterr()
    # continuity reads layer outputs through hooks: the paper's Qwen2.5-Omni architecture works
    assert main(["analyze", "continuity", "tiny-qwen", DATA, "--max-chunks", "4", "--out", str(tmp_path / "q")]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["model"]["backend"] == "tiny-qwen" and set(line["ratio"]) == {"encoder", "adapter", "layer_0", "layer_1"}


def test_heads_says_so_when_the_control_tokens_are_untrained(tmp_path):
    """Fresh control tokens share one output row (as `mini` before training): P(<response>) is
    0.5 everywhere (up to round-off), ablation cannot move it, and the result says that."""
    m = build_model("tiny")
    tok = m.tokenizer
    with torch.no_grad():
        m.head.weight[tok.response_id] = m.head.weight[tok.silent_id]
        n = m.n_base_vocab  # added tokens in their own tables; the decision reads the output rows
        m.special_out[tok.response_id - n] = m.special_out[tok.silent_id - n]
    r = analyze.analyze_heads(m, DATA, max_chunks=4, progress=False)
    assert r["ablation"] is False and "identical" in r["note"]
    assert r["top_heads"] == [] and r["dominance"] is None and "delta_logodds" not in r["per_head"]
    np.testing.assert_allclose(np.asarray(r["per_head"]["output_share"]).sum(1), 1.0, atol=1e-5)
    _, png = analyze.write_result(r, tmp_path)
    assert png.stat().st_size > 1000


def test_analysed_sequence_is_trainings_with_the_spoken_instruction(model):
    """A sample with a spoken instruction (A^ins) is analysed on exactly the sequence `collate`
    trains on: text instruction, the instruction's audio slots, then the stream."""
    from soundflow.data import StreamSample
    from soundflow.train import FeatureCache, collate

    rng = np.random.default_rng(7)
    wave = (0.1 * rng.standard_normal(int(16000 * 0.4 * 4))).astype(np.float32)  # 4 chunks
    instr = (0.1 * rng.standard_normal(int(16000 * 1.0))).astype(np.float32)  # 2.5 → 3 chunks
    s = StreamSample(id="spoken", task="chat", instruction="hi", timeline=[{"chunk": 2, "text": "ok"}],
                     wave=wave, instruction_wave=instr)
    x = analyze.prepare(model, s, 4)
    b = collate(model, [s], FeatureCache(model, 4), 4)
    with torch.no_grad():
        ref = model.embed(b["input_ids"], b["audio_mask"], model.adapt(b["enc"]))[0].float()
    torch.testing.assert_close(x.embeds, ref)  # the same tokens, the same audio in the same slots
    assert torch.equal(x.audio_mask, b["audio_mask"][0])
    slots = model.cfg.audio_slots
    n_text = len(model.tokenizer.encode("hi"))
    assert x.instruction_chunks == 3 and int(x.audio_mask.sum()) == (3 + 4) * slots
    assert x.audio_mask[n_text : n_text + 3 * slots].all()  # the instruction's slots, before the stream
    assert int(x.audio_pos.min()) == n_text + 3 * slots  # the stream's slots come after them
    assert x.enc.shape[0] == x.adapted.shape[0] == 4  # the stream's chunks only (continuity pairs)
    torch.testing.assert_close(x.enc, b["enc"][3:])
    assert x.gold.tolist() == [0, 0, 1, 0]
    # the spoken instruction is heard: the stream's hidden states differ without it
    plain = analyze.prepare(model, StreamSample(id="plain", task="chat", instruction="hi",
                                                timeline=s.timeline, wave=wave), 4)
    assert plain.instruction_chunks == 0 and plain.embeds.shape[0] == x.embeds.shape[0] - 3 * slots
    h = analyze.layer_outputs(model, x.embeds)[-1][x.audio_pos]
    h0 = analyze.layer_outputs(model, plain.embeds)[-1][plain.audio_pos]
    assert not torch.allclose(h, h0, atol=1e-4)
    # heads: every key is audio (instruction or stream) or text
    r = analyze.analyze_heads(model, [s], max_chunks=4, progress=False)
    per = {k: np.asarray(v) for k, v in r["per_head"].items()}
    np.testing.assert_allclose(per["attn_current_chunk"] + per["attn_past_audio"] + per["attn_text"], 1.0, atol=1e-5)
