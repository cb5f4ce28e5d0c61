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


def test_bench_runner_serves_a_named_model_as_listen_does(tmp_path):
    from soundflow.bench.common import EngineRunner

    assert EngineRunner("tiny", quant="int8").model.info.optimized == "int8"
    assert EngineRunner("tiny").model.info.optimized in (None, "fp32")
