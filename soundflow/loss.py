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


def _window_nll(logits: torch.Tensor, ids: torch.Tensor, response_id: int, silent_id: int) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Σ over windows of −log P(a <response> somewhere in the window) = −log(1 − Π_k (1 − p_k)),
    p_k = P(<response>) at the window's k-th control position; the number of windows; and per
    window whether the arg-max decision responds at any of its positions."""
    log_p = logits[:, response_id] - torch.logsumexp(logits, -1)
    log_silent = torch.log(-torch.expm1(log_p.clamp(max=-1e-7)))  # log(1 - p_k), accurate for p_k near 0 and 1
    uniq, inv = torch.unique(ids, return_inverse=True)
    s = torch.zeros(len(uniq), dtype=logits.dtype).index_add(0, inv, log_silent)
    nll = -torch.log(-torch.expm1(s.clamp(max=-1e-7)))
    with torch.no_grad():
        pos = (logits[:, response_id] > logits[:, silent_id]).long()
        fired = torch.zeros(len(uniq), dtype=torch.long).scatter_reduce(0, inv, pos, "amax").bool()
    return nll.sum(), len(uniq), fired


def dual_loss(model, hidden: torch.Tensor, y_stream: torch.Tensor, y_lm: torch.Tensor, lam: float = 1.0,
              response_weight: float = 1.0, window: torch.Tensor | None = None, window_mode: str = "any") -> LossOutput:
    """hidden: (B, L, d) decoder states for X; labels aligned with X (shifted here).

    response_weight: the weight of a `<response>` control label against a `<silent>` one (1.0: the
    paper's plain λ term). A stream holds one `<response>` per reply among tens of `<silent>`, so a
    weight > 1 lets the rare decision pull harder; `soundflow calibrate` then sets the threshold.

    window: (B, L) reply-window ids aligned with X (`tokens.StreamSequence.y_window`), or None.
    Given, the control positions of a window [from, chunk] leave the per-token term and count as
    one label: −log P(<response> at one of them at least), so a sound may be answered as soon as
    it is recognised (a multiple-instance objective; the paper's plain term asks for the exact
    chunk its clip ends on). Not in the paper; off unless the recipe sets `reply_windows`.
    window_mode "all": every position of a window is labelled `<response>` instead (dense: the
    sound is worth a reply at each of its chunks; the reply text still follows the gold chunk)."""
    h = hidden[:, :-1]
    ys, yl = y_stream[:, 1:], y_lm[:, 1:]
    s_mask, l_mask = ys != MASK, yl != MASK
    zero = hidden.sum() * 0.0  # keeps the graph connected when a batch has no reply tokens
    w_mask = (window[:, 1:] >= 0) & s_mask if window is not None else torch.zeros_like(s_mask)
    if window_mode == "all":
        ys = torch.where(w_mask, model.tokenizer.response_id, ys)
        w_mask = torch.zeros_like(s_mask)
    elif window_mode != "any":
        raise ValueError(f"window_mode must be 'any' or 'all', not {window_mode!r}")
    s_mask = s_mask & ~w_mask
    s_logits = model.logits(h[s_mask])
    s_tgt = ys[s_mask]
    tok = model.tokenizer
    if len(s_tgt) and response_weight != 1.0:
        w = torch.where(s_tgt == tok.response_id, response_weight, 1.0).to(s_logits.dtype)
        nll_s = (F.cross_entropy(s_logits, s_tgt, reduction="none") * w).sum()
    else:
        nll_s = F.cross_entropy(s_logits, s_tgt, reduction="sum") if len(s_tgt) else zero
    l_tgt = yl[l_mask]
    nll_l = F.cross_entropy(model.logits(h[l_mask]), l_tgt, reduction="sum") if len(l_tgt) else zero
    n_s, n_l = int(s_mask.sum()), int(l_mask.sum())
    fired = torch.zeros(0, dtype=torch.bool)
    if w_mask.any():
        nll_w, n_w, fired = _window_nll(model.logits(h[w_mask]), window[:, 1:][w_mask], tok.response_id,
                                          tok.silent_id)
        nll_s, n_s = nll_s + response_weight * nll_w, n_s + n_w
    loss = (nll_l + lam * nll_s) / max(n_s + n_l, 1)

    with torch.no_grad():
        pred_resp = s_logits[:, tok.response_id] > s_logits[:, tok.silent_id]
        gold_resp = s_tgt == tok.response_id
        c = {  # a window is one <response> label: hit when any of its positions responds
            "tp": int((pred_resp & gold_resp).sum()) + int(fired.sum()),
            "fn": int((~pred_resp & gold_resp).sum()) + int((~fired).sum()),
            "tn": int((~pred_resp & ~gold_resp).sum()), "fp": int((pred_resp & ~gold_resp).sum()),
        }
    nan = float("nan")
    return LossOutput(
        loss=loss, lm=nll_l.item() / max(n_l, 1), stream=nll_s.item() / max(n_s, 1), n_lm=n_l, n_stream=n_s,
        decision_acc=ratio(c["tp"] + c["tn"], n_s, nan), respond_recall=ratio(c["tp"], c["tp"] + c["fn"], nan),
        silent_recall=ratio(c["tn"], c["tn"] + c["fp"], nan), counts=c,
    )
