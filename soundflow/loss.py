"""Dual loss (paper §Streaming Training, Eq. for L):

    L = (1/N) Σ_j [ −log P(t_j | H_j)  +  λ · (−log P(s_j | H_j)) ]

t_j are reply tokens (y_LM), s_j control tokens (y_stream); the two are mutually exclusive per
position, N counts all supervised positions. Logits are computed only at supervised positions:
a 60-chunk stream has ~660 positions of which ~70 carry a label, so this skips ~90 % of the
vocabulary projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .tokens import MASK


@dataclass
class LossOutput:
    loss: torch.Tensor
    lm: float  # mean −log P over reply tokens
    stream: float  # mean −log P over control tokens
    n_lm: int
    n_stream: int
    decision_acc: float  # argmax over {<silent>, <response>} vs the label
    respond_recall: float  # over chunks labelled <response>  (nan when none)
    silent_recall: float  # over chunks labelled <silent>
    counts: dict  # tp/fn/tn/fp for aggregation over steps

    def log_dict(self) -> dict:
        return {"loss": self.loss.item(), "lm": self.lm, "stream": self.stream, "acc": self.decision_acc,
                "resp_recall": self.respond_recall, "sil_recall": self.silent_recall}


def ratio(a: float, b: float, empty: float | None = None) -> float | None:
    """a / b, or `empty` when b is 0 (None for JSON reports; training metrics pass NaN)."""
    return a / b if b else empty


def dual_loss(model, hidden: torch.Tensor, y_stream: torch.Tensor, y_lm: torch.Tensor, lam: float = 1.0) -> LossOutput:
    """hidden: (B, L, d) decoder states for X; labels aligned with X (shifted here)."""
    h = hidden[:, :-1]
    ys, yl = y_stream[:, 1:], y_lm[:, 1:]
    s_mask, l_mask = ys != MASK, yl != MASK
    zero = hidden.sum() * 0.0  # keeps the graph connected when a batch has no reply tokens
    s_logits = model.logits(h[s_mask])
    s_tgt = ys[s_mask]
    nll_s = F.cross_entropy(s_logits, s_tgt, reduction="sum") if len(s_tgt) else zero
    l_tgt = yl[l_mask]
    nll_l = F.cross_entropy(model.logits(h[l_mask]), l_tgt, reduction="sum") if len(l_tgt) else zero
    n_s, n_l = int(s_mask.sum()), int(l_mask.sum())
    loss = (nll_l + lam * nll_s) / max(n_s + n_l, 1)

    tok = model.tokenizer
    with torch.no_grad():
        pred_resp = s_logits[:, tok.response_id] > s_logits[:, tok.silent_id]
        gold_resp = s_tgt == tok.response_id
        c = {
            "tp": int((pred_resp & gold_resp).sum()), "fn": int((~pred_resp & gold_resp).sum()),
            "tn": int((~pred_resp & ~gold_resp).sum()), "fp": int((pred_resp & ~gold_resp).sum()),
        }
    nan = float("nan")
    return LossOutput(
        loss=loss, lm=nll_l.item() / max(n_l, 1), stream=nll_s.item() / max(n_s, 1), n_lm=n_l, n_stream=n_s,
        decision_acc=ratio(c["tp"] + c["tn"], n_s, nan), respond_recall=ratio(c["tp"], c["tp"] + c["fn"], nan),
        silent_recall=ratio(c["tn"], c["tn"] + c["fp"], nan), counts=c,
    )
