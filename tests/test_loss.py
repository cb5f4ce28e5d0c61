"""The dual loss (loss.py, paper Eq. for L) checked against a plain cross-entropy written out by
hand on the tiny model's own head: shift, masks, the λ weighting, N over both kinds of position,
and the decision counts that training logs aggregate."""

import math

import pytest
import torch
import torch.nn.functional as F

from soundflow.loss import dual_loss, ratio
from soundflow.tokens import MASK


def _labels(model, L: int = 12):
    """One row: control labels at 3 positions (two <silent>, one <response>), reply tokens at 4
    others; everything else masked. Labels are aligned with X (dual_loss shifts them)."""
    tok = model.tokenizer
    ys = torch.full((1, L), MASK)
    yl = torch.full((1, L), MASK)
    ys[0, 2], ys[0, 4], ys[0, 6] = tok.silent_id, tok.silent_id, tok.response_id
    yl[0, 7:11] = torch.tensor([5, 6, 7, tok.eos_id])
    return ys, yl


def _reference(model, hidden, ys, yl, lam):
    h = hidden[0, :-1]
    s_pos = [i - 1 for i in range(1, ys.shape[1]) if ys[0, i] != MASK]
    l_pos = [i - 1 for i in range(1, yl.shape[1]) if yl[0, i] != MASK]
    nll_s = sum(F.cross_entropy(model.logits(h[p:p + 1]), ys[0, p + 1:p + 2]) for p in s_pos)
    nll_l = sum(F.cross_entropy(model.logits(h[p:p + 1]), yl[0, p + 1:p + 2]) for p in l_pos)
    return (nll_l + lam * nll_s) / (len(s_pos) + len(l_pos)), nll_s / len(s_pos), nll_l / len(l_pos)


@pytest.mark.parametrize("lam", [1.0, 0.25, 4.0])
def test_dual_loss_matches_hand_written_cross_entropy(model, lam):
    torch.manual_seed(0)
    ys, yl = _labels(model)
    hidden = torch.randn(1, ys.shape[1], model.head.in_features)
    out = dual_loss(model, hidden, ys, yl, lam=lam)
    want, want_s, want_l = _reference(model, hidden, ys, yl, lam)
    assert out.n_stream == 3 and out.n_lm == 4
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert out.stream == pytest.approx(want_s.item(), rel=1e-5)
    assert out.lm == pytest.approx(want_l.item(), rel=1e-5)


def test_decision_counts_follow_the_two_control_logits(model):
    """The decision is <response> vs <silent> only; the counts say which labels it got right."""
    torch.manual_seed(1)
    ys, yl = _labels(model)
    hidden = torch.randn(1, ys.shape[1], model.head.in_features)
    out = dual_loss(model, hidden, ys, yl)
    tok = model.tokenizer
    logits = model.logits(hidden[0, [1, 3, 5]])
    pred = (logits[:, tok.response_id] > logits[:, tok.silent_id]).tolist()
    gold = [False, False, True]
    c = out.counts
    assert c["tp"] == sum(p and g for p, g in zip(pred, gold))
    assert c["fp"] == sum(p and not g for p, g in zip(pred, gold))
    assert c["tn"] + c["fp"] == 2 and c["tp"] + c["fn"] == 1
    assert out.decision_acc == pytest.approx((c["tp"] + c["tn"]) / 3)
    assert set(out.log_dict()) == {"loss", "lm", "stream", "acc", "resp_recall", "sil_recall"}


def test_no_reply_tokens_keeps_the_graph_and_reports_nan_recall(model):
    """A batch of silence only: the loss still backpropagates (zero LM term), and recall over
    absent <response> labels is NaN, not 0 (training logs average NaN-aware)."""
    tok = model.tokenizer
    ys = torch.full((1, 6), MASK)
    ys[0, 2:5] = tok.silent_id
    yl = torch.full((1, 6), MASK)
    hidden = torch.randn(1, 6, model.head.in_features, requires_grad=True)
    out = dual_loss(model, hidden, ys, yl)
    out.loss.backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
    assert out.n_lm == 0 and out.lm == 0.0
    assert math.isnan(out.respond_recall) and not math.isnan(out.silent_recall)


def test_ratio_empty_denominator():
    assert ratio(1, 4) == 0.25
    assert ratio(1, 0) is None
    assert math.isnan(ratio(1, 0, float("nan")))


def test_response_weight_scales_only_the_response_label(model):
    """response_weight w: the one <response> label's NLL counts w times; N stays the label count."""
    torch.manual_seed(2)
    ys, yl = _labels(model)
    hidden = torch.randn(1, ys.shape[1], model.head.in_features)
    base = dual_loss(model, hidden, ys, yl)
    out = dual_loss(model, hidden, ys, yl, response_weight=5.0)
    h = hidden[0, :-1]
    nll_resp = F.cross_entropy(model.logits(h[5:6]), ys[0, 6:7])  # the <response> label at position 6
    assert out.loss.item() == pytest.approx(base.loss.item() + 4.0 * nll_resp.item() / 7, rel=1e-5)


def test_reply_window_is_one_at_least_once_label(model):
    """window ids mark positions 4 and 6 as one reply window: they leave the per-token term and
    count once as −log(1 − (1 − p_4)(1 − p_6)), p = P(<response>) over the whole vocabulary."""
    torch.manual_seed(3)
    ys, yl = _labels(model)
    yw = torch.full_like(ys, -1)
    yw[0, 4], yw[0, 6] = 0, 0
    hidden = torch.randn(1, ys.shape[1], model.head.in_features, requires_grad=True)
    out = dual_loss(model, hidden, ys, yl, window=yw)
    lg = model.logits(hidden[0, :-1])
    p = torch.softmax(lg, -1)[:, model.tokenizer.response_id]
    nll_w = -torch.log(1 - (1 - p[3]) * (1 - p[5]))
    nll_s = F.cross_entropy(lg[1:2], ys[0, 2:3], reduction="sum")
    nll_l = F.cross_entropy(lg[6:10], yl[0, 7:11], reduction="sum")
    assert out.n_stream == 2 and out.n_lm == 4
    assert out.loss.item() == pytest.approx(((nll_s + nll_w + nll_l) / 6).item(), rel=1e-5)
    assert out.counts["tp"] + out.counts["fn"] == 1  # the window is one <response> label
    out.loss.backward()
    assert hidden.grad[0, 3].abs().sum() > 0 and hidden.grad[0, 5].abs().sum() > 0
    assert dual_loss(model, hidden, ys, yl).loss.item() != pytest.approx(out.loss.item())  # None: the plain term


def test_reply_window_all_labels_every_window_position_response(model):
    torch.manual_seed(4)
    ys, yl = _labels(model)
    yw = torch.full_like(ys, -1)
    yw[0, 4], yw[0, 6] = 0, 0
    hidden = torch.randn(1, ys.shape[1], model.head.in_features)
    dense = ys.clone()
    dense[0, 4] = model.tokenizer.response_id
    want = dual_loss(model, hidden, dense, yl)  # the plain term with position 4 relabelled
    got = dual_loss(model, hidden, ys, yl, window=yw, window_mode="all")
    assert got.loss.item() == pytest.approx(want.loss.item(), rel=1e-6) and got.n_stream == 3
    with pytest.raises(ValueError, match="window_mode"):
        dual_loss(model, hidden, ys, yl, window=yw, window_mode="some")
