"""Decision-threshold calibration on held-out streams."""

import json

import numpy as np
import pytest

from soundflow.calibrate import best_threshold, calibrate, default_threshold
from soundflow.loading import load_model
from soundflow.model import ModelConfig
from soundflow.train import Recipe, StageConfig, train


def test_best_threshold_by_hand():
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.9])
    y = np.array([0, 0, 1, 0, 1, 1])
    thr, st = best_threshold(p, y)
    # at 0.3: respond recall 3/3, silent recall 2/3 → 0.833; at 0.5 and 0.6: 2/3 and 3/3 → 0.833;
    # ties go to the threshold nearest 0.5
    assert thr == pytest.approx(0.5)
    assert best_threshold(p, np.array([0, 0, 1, 1, 1, 1]))[0] == pytest.approx(0.3)  # 4/4 and 2/2
    assert st["balanced_acc"] == pytest.approx(5 / 6)
    assert st["balanced_acc_at_0.5"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError):
        best_threshold(p, np.zeros(6, int))


def test_calibrate_writes_checkpoint_and_is_picked_up(tmp_path):
    recipe = Recipe(model=ModelConfig(backend="tiny"), out=str(tmp_path / "r"),
                    stages=[StageConfig(name="s", trainable=["adapter", "lm"], data="synthetic:beep?n=8&chunks=6",
                                        lr=3e-3, steps=40, batch_size=4)])
    final = train(recipe, progress=False)
    res = calibrate(final, "synthetic:beep?n=8&chunks=6&seed=1")
    assert 0.0 <= res["threshold"] <= 1.0 and res["n_chunks"] == 48 and res["n_respond"] == 8
    assert res["balanced_acc"] >= res["balanced_acc_at_0.5"]
    meta = json.loads((final / "model.json").read_text())
    assert meta["calibration"]["threshold"] == res["threshold"]
    assert default_threshold(load_model(str(final))) == res["threshold"]
    # scored at the precision it is served at: fp32 by default (listen / serve), int8 on request
    assert res["quant"] == "fp32"
    q = calibrate(final, "synthetic:beep?n=8&chunks=6&seed=1", write=False, quant="int8")
    assert q["quant"] == "int8" and q["n_chunks"] == res["n_chunks"]


def test_a_checkpoint_is_served_at_the_precision_it_was_calibrated_at(tmp_path):
    """`--quant auto` (the default of listen, serve, calibrate and the benches): the precision in
    the checkpoint's calibration, else fp32; an explicit precision still wins."""
    from soundflow.bench.common import EngineRunner
    from soundflow.optimize import resolve_quant

    recipe = Recipe(model=ModelConfig(backend="tiny"), out=str(tmp_path / "r"),
                    stages=[StageConfig(name="s", trainable=["adapter", "lm"], data="synthetic:beep?n=4&chunks=4",
                                        lr=3e-3, steps=2, batch_size=2)])
    final = train(recipe, progress=False)
    assert resolve_quant(load_model(str(final)), "auto") is None  # not calibrated: fp32
    assert calibrate(final, "synthetic:beep?n=4&chunks=4&seed=1", quant="int8")["quant"] == "int8"
    m = load_model(str(final))
    assert m.info.calibration["quant"] == "int8" and resolve_quant(m, "auto") == "int8"
    assert EngineRunner(str(final)).model.info.optimized == "int8"
    assert EngineRunner(str(final), quant="none").model.info.optimized in (None, "fp32")
    # recalibrating without a precision keeps the one it was calibrated at
    assert calibrate(final, "synthetic:beep?n=4&chunks=4&seed=1", write=False)["quant"] == "int8"
    with pytest.raises(ValueError, match="quant must be one of"):
        resolve_quant(m, "int4")


def test_bench_runner_serves_a_named_model_as_listen_does(tmp_path):
    from soundflow.bench.common import EngineRunner

    assert EngineRunner("tiny", quant="int8").model.info.optimized == "int8"
    assert EngineRunner("tiny").model.info.optimized in (None, "fp32")


def test_stepped_hidden_is_the_one_forward_fed_as_a_stream():
    """Calibrating a quantised model feeds each stream decision by decision (int8 sets its
    activation scale per forward); in fp32 that is the same computation as one forward."""
    import torch

    from soundflow.calibrate import stepped_hidden
    from soundflow.model import build_model

    m = build_model("tiny").eval()
    x = torch.randn(1, 40, m.embed_tokens.weight.shape[1])
    with torch.inference_mode():
        full = m.hidden(x)[0]
        ends = torch.tensor([5, 16, 17, 30])
        step = stepped_hidden(m, x, ends)
    assert step.shape == full.shape
    torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)
