"""The sound trigger: the part of the <silent>/<response> decision that says "a sound that needs a
reply is here", from what the frozen encoder heard in the last few chunks.

Why it exists (BENCHMARKS.md, issue 10): on this project's CPU budget the LM's control-token
readout learns *when* a reply was placed but hardly *which sounds* need one (per-clip AUC 0.58-0.68
on held-out clips after thousands of steps), while a logistic regression on the very encoder
features the model hears reaches AUC 0.91 on the same clips. The trigger is that regression,
made streaming and causal:

- every chunk is summarised as the mean and the max of its encoder slots (`chunk_summary`);
- the evidence at chunk t pools the summaries of the last w chunks since the last reply, for each
  w in `windows` (mean of the means, max of the maxes: the whole-clip probe's pooling over what
  has been heard, at a few time scales), concatenated; a reply empties it, since the sound that
  caused it has been answered; after a reply the trigger itself called for (its P above the
  LM's), it stays out of the decision until it re-arms: at least `TRIGGER_HOLDOFF` chunks, and
  until its logit has stayed `TRIGGER_REARM_MARGIN` below the level it fires at for
  `TRIGGER_REARM_CHUNKS` chunks, and to name the same sound again it needs as long a spell well
  below the lowest level it fires at, heard after the hold-off — one warning per sound, however
  long it lasts (a crying baby was answered three times in 7 s with the hold-off alone); a reply
  the LM called for, a transcribed word, does not silence it;
- P_trigger = sigmoid(head(standardise(evidence))): a one-hidden-layer MLP (`TRIGGER_HIDDEN`
  units; 0 makes it the logistic regression it started as);
- its second look (`Verifier`, optional): when the trigger's logit comes within `VERIFY_GATE` of
  the level it fires at, the last `VERIFY_CHUNKS` chunks are encoded again as one window, with
  attention across their edges (the per-chunk encoder never looks across one), and a logistic
  regression on that window's pooled encoding (or on the pooled outputs of the encoder's first
  layers, `VERIFY_DEPTH`) must agree before the trigger fires, `confirm` decisions in a row — it
  vetoes below its floor and lets through what it confirms. Context the chunks lack tells an
  event from an ambience that merely resembles one: clip recall 0.25 -> 0.43 at no held-out false reply in the cached study
  (BENCHMARKS.md, 2026-12-02 twelfth session). It costs one encoder pass over the window at each
  chunk that opens its gate; refitting the trigger (`trigger fit`) drops it, renaming keeps it;
- its namer, a softmax regression on the same evidence, says which sound it heard; a reply the
  trigger calls for is the reply the model was trained to give that sound (`decoding.named_reply`),
  since the LM itself guesses the sound (it said "a car horn" to thunder, "bless you" to a crying
  baby). A trigger with a namer calls for a reply only when the namer is sure
  (`TRIGGER_NAME_MIN`): when it was not, the LM wrote the reply and garbled it, and most such
  calls were over ambience (BENCHMARKS.md).

The decision the engine thresholds is then P = max(P_LM, P_trigger): either the LM's own control
readout (a word ended, a question was asked — Alg. 2's decisions) or the trigger (a sound to
warn about) can call for `<response>`; the LM writes the reply either way. Each path keeps its
own calibrated threshold: `soundflow calibrate` picks the model's threshold on the LM's P, the
trigger's on per-clip balanced accuracy, and stores the difference of their logits as the
trigger's `offset` (`calibrate.calibrate_trigger`). A model without a trigger decides with P_LM
alone, as the paper does. Fitting it is `trigger_fit.py`
(`soundflow trigger fit`); it is stored with the checkpoint (docs/formats.md#checkpoint).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .audio import HOP, log_mel

# Chunks pooled: 0.4, 2.4 and 4.8 s. One window of 6 chunks had the best held-out AUC of 1-10
# (0.85); adding 1 and 12 kept it and cut false alarms on ambient chunks 3x (BENCHMARKS.md).
TRIGGER_WINDOWS = (1, 6, 12)
TRIGGER_HOLDOFF = 4  # chunks (1.6 s) after its own reply in which the trigger stays out of the decision:
# shorter than the gap before a next event in the bench (its window + >= 3 chunks)
# After the hold-off it re-arms only once its logit has fallen this far below its firing level
# (`Trigger.fire_logit`) for this many chunks, counted from its reply: a sound that goes on keeps it quiet.
# To warn about the *same* sound again (its namer names the class it last warned about) it also needs
# that many chunks after the hold-off this far below the lowest level it can fire at (`Trigger.rearm_logit`:
# with a second look, where its gate opens): the evidence its reply emptied reads as quiet for a few
# chunks while a baby still cries (warned about 3 times in 7.2 s), and a next, different sound
# in a stream must not wait for that (judging every re-arm so missed 3 of 95 multi-tier events).
TRIGGER_REARM_MARGIN = 2.0
TRIGGER_REARM_CHUNKS = 3
# The head: 64 GELU units beat the logistic regression held out (clip AUC 0.895 vs 0.849; at one
# false reply per hour of unseen ambience, clip recall 0.19 vs 0.03 — BENCHMARKS.md); 256 units
# raised AUC (0.909) but fired more on unseen ambience. Fitted with AdamW, dropout and weight decay.
TRIGGER_HIDDEN = 64
TRIGGER_DROPOUT = 0.2  # on the standardised evidence and the hidden units, while fitting only
TRIGGER_DECAY = 1e-2  # AdamW weight decay
TRIGGER_STEPS = 1000  # AdamW steps of 512 chunks (about 8 epochs of the full fit's 62k chunks)
# The namer (`Trigger.name`): a softmax regression on the same evidence over the sound classes with
# a trained reply (81 % top-1 on held-out RESPOND clips, BENCHMARKS.md). Below this probability the
# trigger does not call for a reply (`TriggerState.score`).
TRIGGER_NAME_MIN = 0.5
TRIGGER_MAX_FALSE_PER_HOUR = 1.0  # the ambient budget the fit's floor is set for (trigger_fit.ambient_floor)
# Class floors (`Trigger.class_floors`): each sound the namer names gets its own ambient floor, from
# the out-of-fold ambient chunks its namer gives that class at least this probability — ambience a
# slightly different fit could call it. Ambience that sets the floor sounds like machines (a
# substation, a coal plant read as a chainsaw, a siren); a knock or a cough has no such neighbours
# and need not wait at the machines' floor: clip recall 0.24 -> 0.34 at the same held-out
# ambient rate in the cached study, 0.41 with the folds' budget pooled (BENCHMARKS.md, 2026-12-02).
TRIGGER_CLASS_FLOOR_P = 0.1
# The second look (`Verifier`), as `trigger verify` fits it by default — the shipped `mini`'s: the
# window it encodes again (4.8 s), how far below its firing level the trigger's logit opens it
# (logits), which encoder layers it pools (`VERIFY_DEPTH`: the outputs of the first so many; 0: its
# final pooled encoding), the regression's strength, and how many decisions in a row it must agree
# (its floor is then the highest level training ambience holds that long). Gate 4 from the cached
# study (gates 0-3 let through little more than the trigger alone, gate 6 and more pass held-out
# ambience); 4.8 s over layers 1-4 at C 0.001 separated events from ambience best there but,
# benched with one look, let 8 false replies an hour through; confirmed twice it let 1 through and
# kept most of the recall (single-tier balanced 0.763 vs 0.693 for 2.4 s of the final encoding at
# one look: BENCHMARKS.md, 2026-12-03).
VERIFY_CHUNKS = 12
VERIFY_GATE = 4.0
VERIFY_DEPTH = 4
VERIFY_C = 0.001
VERIFY_CONFIRM = 2
# "classes": the regression tells the sound classes of each side apart (`Verifier`'s heads); one
# binary head held single-tier balanced accuracy at 0.795 where, with the same windows, floors and
# rule, heads over classes reached 0.850 (BENCHMARKS.md, 2026-12-03 twenty-first session)
VERIFY_HEADS = "classes"
# A sound that lasts under SHORT_SOUND_S (a knock, breaking glass: the median, over a class's training
# clips, of the time each stays within SOUND_DB of its loudest 100 ms) keeps the trigger near firing for
# a decision or two, so a second look that must agree three times in a row misses it (held-out door
# knocks 7 -> 4 of 7 going from two to three); `trigger confirm --short-confirm` asks such classes fewer
# (BENCHMARKS.md, 2026-12-03 seventeenth session).
SHORT_SOUND_S = 2.0
SOUND_DB = 20.0


def chunk_summary(enc: torch.Tensor) -> torch.Tensor:
    """(N, slots, d) encoder output → (N, 2d): each chunk's slot mean, then its slot max."""
    return torch.cat([enc.mean(1), enc.amax(1)], -1).float()


def pool(summaries: torch.Tensor) -> torch.Tensor:
    """(k, 2d) chunk summaries → (2d,) evidence: the means' mean, the maxes' max."""
    d = summaries.shape[-1] // 2
    return torch.cat([summaries[:, :d].mean(0), summaries[:, d:].amax(0)])


def evidence(recent: torch.Tensor, windows: Sequence[int]) -> torch.Tensor:
    """(k, 2d) summaries heard since the last reply, oldest first → (len(windows) · 2d,): the
    pool of the last w of them for each w."""
    return torch.cat([pool(recent[-w:]) for w in windows])


def pooled_stream(summaries: torch.Tensor, resets: Iterable[int] = (),
                  windows: Sequence[int] = TRIGGER_WINDOWS) -> torch.Tensor:
    """(T, 2d) → (T, len(windows) · 2d) evidence at every chunk, as `TriggerState` builds it live:
    `resets` are the chunks a reply was given at (their successors start afresh)."""
    resets, start, out, longest = set(resets), 0, [], max(windows)
    for t in range(summaries.shape[0]):
        out.append(evidence(summaries[max(start, t - longest + 1): t + 1], windows))
        if t in resets:
            start = t + 1
    return torch.stack(out) if out else summaries.new_zeros(0, len(windows) * summaries.shape[-1])


def holding_off(n: int, resets: Iterable[int], holdoff: int = TRIGGER_HOLDOFF) -> torch.Tensor:
    """(n,) bool: the chunks in which the trigger holds off — the `holdoff` after each of its replies."""
    mask = torch.zeros(n, dtype=torch.bool)
    for r in resets:
        mask[r + 1: r + 1 + holdoff] = True
    return mask


class Verifier(nn.Module):
    """The trigger's second look: logistic regression on the summary of the last `chunks` chunks'
    log-mels encoded as one window (`window_summary`): the mean + max pooled outputs of the
    encoder's `layers` (1-based), or of its final pooled encoding when `layers` is None (the first
    verifiers' form). Its tensors are fitted (`trigger_fit.fit_verifier`); `floor` is the logit it
    must reach, `gate` how far below its firing level the trigger's logit must come for it to be
    asked, and `confirm` how many decisions in a row it must reach the floor before the trigger
    fires (a sound persists; a passing resemblance in ambience mostly does not). A short sound
    cannot persist: `class_confirm` / `class_floor` may ask fewer decisions (at the floor fitted
    for that many) of the classes its trigger's namer names whose sounds are short.
    `d_summary`: one encoding's summary width (2 d_enc).

    One head (the first verifiers) is a binary regression: RESPOND against everything else. With
    `negative_heads` and `respond_heads` (the sound classes of each side; "" for background) it is
    a regression over those classes and its logit is log P(any RESPOND class) − log P(any other):
    RESPOND sounds are many unlike things, and one linear boundary around all of them had to stand
    so far out that held-out ambience cost most of the recall (BENCHMARKS.md, 2026-12-03)."""

    def __init__(self, d_summary: int, n_mels: int, chunks: int = VERIFY_CHUNKS, gate: float = VERIFY_GATE,
                 floor: float = 0.0, layers: Sequence[int] | None = None, confirm: int = 1,
                 class_confirm: Sequence[int] | None = None, class_floor: Sequence[float] | None = None,
                 negative_heads: Sequence[str] | None = None, respond_heads: Sequence[str] | None = None):
        # confirm 1 is also what a checkpoint without the key means (verifiers before 2026-12-03)
        super().__init__()
        if (negative_heads is None) != (respond_heads is None) or respond_heads is not None and (
                not negative_heads or not respond_heads):
            raise ValueError("a verifier over classes needs both negative_heads and respond_heads, each non-empty")
        self.negative_heads = None if negative_heads is None else tuple(str(h) for h in negative_heads)
        self.respond_heads = None if respond_heads is None else tuple(str(h) for h in respond_heads)
        self.n_mels, self.chunks, self.confirm = int(n_mels), int(chunks), int(confirm)
        if self.confirm < 1:
            raise ValueError(f"verifier confirm must be >= 1 decision, got {confirm!r}")
        self.set_class_confirm(class_confirm, class_floor)
        self.gate, self.floor = float(gate), float(floor)
        self.layers = None if layers is None else tuple(int(x) for x in layers)
        if self.layers is not None and (not self.layers or min(self.layers) < 1):
            raise ValueError(f"verifier layers are 1-based encoder layer numbers, got {layers!r}")
        self.d_summary = int(d_summary) * (len(self.layers) if self.layers else 1)
        self.mean = nn.Parameter(torch.zeros(self.d_summary))
        self.scale = nn.Parameter(torch.ones(self.d_summary))
        heads = () if self.respond_heads is None else (len(self.negative_heads) + len(self.respond_heads),)
        self.weight = nn.Parameter(torch.zeros(*heads, self.d_summary))  # rows: negative heads, then respond heads
        self.bias = nn.Parameter(torch.zeros(heads))
        self.requires_grad_(False)

    def set_class_confirm(self, confirm: Sequence[int] | None, floor: Sequence[float] | None) -> None:
        """Per namer class, the decisions in a row it must agree and the floor it must reach for
        that many (None: `confirm` and `floor` for every class; `trigger_fit.short_sound_confirm`)."""
        if (confirm is None) != (floor is None) or confirm is not None and len(confirm) != len(floor):
            raise ValueError("class_confirm and class_floor go together, one value per namer class")
        if confirm is not None and min(confirm, default=1) < 1:
            raise ValueError(f"verifier confirm must be >= 1 decision, got {list(confirm)!r}")
        self.class_confirm = None if confirm is None else [int(c) for c in confirm]
        self.class_floor = None if floor is None else [float(f) for f in floor]

    def rule_of(self, k: int | None) -> tuple[int, float]:
        """(decisions in a row, floor) for a sound its trigger's namer calls class `k` (None: unnamed)."""
        if self.class_confirm is None or k is None:
            return self.confirm, self.floor
        return self.class_confirm[k], self.class_floor[k]

    def config(self) -> dict:
        cfg = {"chunks": self.chunks, "gate": self.gate, "floor": self.floor, "n_mels": self.n_mels}
        if self.confirm != 1:
            cfg["confirm"] = self.confirm
        if self.class_confirm is not None:
            cfg.update(class_confirm=list(self.class_confirm), class_floor=list(self.class_floor))
        if self.respond_heads is not None:
            cfg.update(negative_heads=list(self.negative_heads), respond_heads=list(self.respond_heads))
        return cfg if self.layers is None else {**cfg, "layers": list(self.layers)}

    def logit(self, summary: torch.Tensor) -> torch.Tensor:
        """(..., d_summary) window summaries → (...) logits."""
        z = (summary.float() - self.mean) / self.scale
        if self.respond_heads is None:
            return z @ self.weight + self.bias
        h = z @ self.weight.T + self.bias
        n = len(self.negative_heads)
        return torch.logsumexp(h[..., n:], -1) - torch.logsumexp(h[..., :n], -1)

    def summary(self, summarize, mels: torch.Tensor) -> torch.Tensor:
        """(N, k, n_mels, F) log-mels of k ≤ `chunks` consecutive chunks → (N, d_summary): fewer
        than `chunks` (a stream's first seconds) are padded in front with silence's log-mel, as the
        fit pads a short clip with zeros (`trigger_fit.verify_windows`)."""
        n, k, m, f = mels.shape
        if k < self.chunks:
            quiet = log_mel(torch.zeros(f * HOP), m).to(mels.device, mels.dtype)
            mels = torch.cat([quiet.expand(n, self.chunks - k, m, f), mels], 1)
        return window_summary(summarize, mels, self.layers)


def window_summary(summarize, mels: torch.Tensor, layers: Sequence[int] | None = None) -> torch.Tensor:
    """(N, k, n_mels, F) log-mels of k consecutive chunks → (N, D): the k chunks joined in time and
    summarised as one window by `summarize` ((N, n_mels, k F), layers → (N, D):
    `AudioLM.summarize`, mean + max pooled). The verifier's input, fitted and served alike."""
    n, k, m, f = mels.shape
    return summarize(mels.permute(0, 2, 1, 3).reshape(n, m, k * f), layers)


class Trigger(nn.Module):
    """head((evidence − mean) / scale). Parameters (frozen: the LM's training never touches
    them), so a checkpoint stores them with the rest. `floor` is the lowest logit it may fire at
    (the fit's ambient false-alarm budget, `trigger_fit.ambient_floor`; None: no floor), and
    `class_floors` the same per namer class (None: the one floor for all);
    `offset` comes from the checkpoint's calibration and aligns its threshold with the model's,
    `class_offsets` (with class floors) does so per class: the class is the namer's argmax."""

    def __init__(self, d_summary: int, windows: Sequence[int] = TRIGGER_WINDOWS, holdoff: int = TRIGGER_HOLDOFF,
                 hidden: int = TRIGGER_HIDDEN, floor: float | None = None, classes: Sequence[str] = (),
                 replies: Sequence[str] = (), class_floors: Sequence[float] | None = None,
                 verifier: dict | None = None):
        super().__init__()
        self.windows = tuple(int(w) for w in windows)
        self.holdoff = int(holdoff)
        if not self.windows or min(self.windows) < 1:
            raise ValueError(f"trigger windows must be chunk counts >= 1, got {windows!r}")
        self.d_summary, self.hidden_units, self.floor = d_summary, int(hidden), floor
        n = len(self.windows) * d_summary
        self.mean = nn.Parameter(torch.zeros(n))
        self.scale = nn.Parameter(torch.ones(n))
        self.hidden = nn.Linear(n, self.hidden_units) if self.hidden_units else None
        self.out = nn.Linear(self.hidden_units or n, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.set_classes(classes, replies)
        self.class_floors = None if class_floors is None else [float(f) for f in class_floors]
        if self.class_floors is not None and len(self.class_floors) != len(self.classes):
            raise ValueError(f"{len(self.class_floors)} class floors for {len(self.classes)} classes")
        # the second look, when fitted (`Verifier`; its config as `config()["verifier"]`)
        self.verifier = Verifier(d_summary, **verifier) if verifier else None
        if self.verifier is not None and self.verifier.class_confirm is not None \
                and len(self.verifier.class_confirm) != len(self.classes):
            raise ValueError(f"{len(self.verifier.class_confirm)} verifier class rules for {len(self.classes)} classes")
        self.requires_grad_(False)
        self.offset = 0.0
        self.class_offsets: torch.Tensor | None = None  # (classes,), from the calibration
        # the logit (offset applied) at which it fires: logit(the calibrated threshold); re-arming
        # is measured from it (`TriggerState.score`)
        self.fire_logit = 0.0

    def set_classes(self, classes: Sequence[str], replies: Sequence[str]) -> None:
        """The namer's classes and the reply the model was trained to give each (an empty namer
        without classes). Its weights start at zero: fit or load them next."""
        if len(classes) != len(replies):
            raise ValueError(f"{len(classes)} classes but {len(replies)} replies")
        self.classes, self.replies = tuple(classes), tuple(replies)
        self.class_floors, self.class_offsets = None, None  # a new namer's classes: its floors are to be set again
        if getattr(self, "verifier", None) is not None:
            self.verifier.set_class_confirm(None, None)  # ... and its second look's per-class rule
        self.namer = nn.Linear(self.mean.numel(), len(self.classes)) if self.classes else None
        if self.namer is not None:
            nn.init.zeros_(self.namer.weight)
            nn.init.zeros_(self.namer.bias)
            self.namer.requires_grad_(False)

    def config(self) -> dict:
        return {"windows": list(self.windows), "d_summary": self.d_summary, "holdoff": self.holdoff,
                "hidden": self.hidden_units, "floor": self.floor, "classes": list(self.classes),
                "replies": list(self.replies), "class_floors": self.class_floors,
                "verifier": None if self.verifier is None else self.verifier.config()}

    def name(self, evidence: torch.Tensor) -> tuple[int, float] | None:
        """(class index, probability) of the sound the evidence holds; None without a namer."""
        if self.namer is None:
            return None
        p = torch.softmax(self.namer(self.standardise(evidence)), -1)
        k = int(p.argmax())
        return k, float(p[k])

    def head(self, z: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
        """Standardised evidence (..., n) → logit (...); `dropout` > 0 only while fitting."""
        z = nn.functional.dropout(z, dropout, training=dropout > 0)
        if self.hidden is not None:
            z = nn.functional.dropout(nn.functional.gelu(self.hidden(z)), dropout, training=dropout > 0)
        return self.out(z)[..., 0]

    def standardise(self, evidence: torch.Tensor) -> torch.Tensor:
        return (evidence.float() - self.mean) / self.scale

    def logit(self, evidence: torch.Tensor) -> torch.Tensor:
        z = self.standardise(evidence)
        if self.class_offsets is not None and self.namer is not None:
            return self.head(z) + self.class_offsets.to(z.device)[self.namer(z).argmax(-1)]
        return self.head(z) + self.offset

    @property
    def rearm_logit(self) -> float:
        """The level its logit must stay under, after the hold-off, before it warns about the same
        sound again: `TRIGGER_REARM_MARGIN` below the lowest it fires at — the firing level, or with
        a verifier the level its gate opens."""
        lowest = self.fire_logit - (self.verifier.gate if self.verifier is not None else 0.0)
        return lowest - TRIGGER_REARM_MARGIN

    def named_class(self, evidence: torch.Tensor) -> torch.Tensor | None:
        """(...,) the namer's argmax class index at each evidence row; None without a namer."""
        return None if self.namer is None else self.namer(self.standardise(evidence)).argmax(-1)

    def prob(self, evidence: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(evidence))


def logit_of(p: float) -> float:
    """log(p / (1 - p)), p clipped to [1e-6, 1 - 1e-6]: a threshold as a logit."""
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def combine(p_lm, p_trigger):
    """Either path can call for a reply: max(P_LM, P_trigger) (tensors, arrays or floats)."""
    if isinstance(p_lm, torch.Tensor):
        return torch.maximum(p_lm, torch.as_tensor(p_trigger, dtype=p_lm.dtype))
    return np.maximum(p_lm, p_trigger)


@dataclass
class TriggerState:
    """One stream's evidence: the summaries heard since the last reply (at most the longest
    window), how many more chunks the trigger holds off for after its own reply, and whether it
    has re-armed since. With a verifier, also the last chunks' log-mels for its second look: each
    heard row is then the chunk's summary (`d_summary` values) followed by its flattened log-mel
    (`AudioLM.encode_heard`)."""

    windows: tuple[int, ...] = TRIGGER_WINDOWS
    holdoff: int = TRIGGER_HOLDOFF
    heard: deque = field(default_factory=deque)
    quiet: int = 0
    last: tuple[float, float] = (0.0, 0.0)  # (P_LM, P_trigger) of the newest decision
    heard_name: tuple[int, float] | None = None  # the namer's (class, P) at the newest decision
    named: tuple[int, float] | None = None  # ... kept for the reply the trigger called for
    waiting: bool = False  # out of the decision since its own reply, until it re-arms
    below: int = 0  # chunks in a row its logit has stayed under the re-arm level
    calm: int = TRIGGER_REARM_CHUNKS  # ... under `Trigger.rearm_logit` after the hold-off (up to TRIGGER_REARM_CHUNKS)
    warned: int | None = None  # the class its namer named at its own last reply
    d_summary: int = 0  # > 0 with a verifier: where a heard row's log-mel starts
    verify_chunks: int = 0  # log-mels kept for the verifier (0: none)
    mels: deque = field(default_factory=deque)
    verified: float | None = None  # the verifier's logit at the newest decision (None: not asked)
    agreed: int = 0  # decisions in a row, up to the newest, at which the verifier reached its floor

    @classmethod
    def of(cls, trigger: "Trigger") -> "TriggerState":
        v = trigger.verifier
        return cls(trigger.windows, trigger.holdoff, d_summary=trigger.d_summary if v else 0,
                   verify_chunks=v.chunks if v else 0)

    def push(self, heard: torch.Tensor) -> None:
        for row in heard:
            if self.verify_chunks:  # the log-mel part stays for the second look, whatever the replies
                self.mels.append(row[self.d_summary:])
                while len(self.mels) > self.verify_chunks:
                    self.mels.popleft()
                row = row[: self.d_summary]
            self.heard.append(row)
            self.quiet = max(0, self.quiet - 1)
            while len(self.heard) > max(self.windows):
                self.heard.popleft()

    def evidence(self) -> torch.Tensor | None:
        """None while holding off (the decision is then the LM's alone)."""
        return None if self.quiet else self._pooled()

    def _pooled(self) -> torch.Tensor | None:
        return evidence(torch.stack(list(self.heard)), self.windows) if self.heard else None

    def score(self, trigger: "Trigger", summarize=None) -> float:
        """P_trigger for the newest chunk, and the namer's guess with it; 0 while the trigger is
        out of the decision (holding off, or not re-armed since its reply). `summarize`: the frozen
        encoder's window summaries (`AudioLM.summarize`), which a trigger with a verifier needs."""
        self.heard_name, self.verified = None, None
        agreed, self.agreed = self.agreed, 0  # kept only by a verifier asked again and agreeing again
        ev = self._pooled()
        if ev is None:
            return 0.0
        lg = float(trigger.logit(ev))
        if not self.quiet and self.calm < TRIGGER_REARM_CHUNKS:
            self.calm = self.calm + 1 if lg < trigger.rearm_logit else 0
        if self.waiting:
            self.below = self.below + 1 if lg < trigger.fire_logit - TRIGGER_REARM_MARGIN else 0
            if self.quiet or self.below < TRIGGER_REARM_CHUNKS:
                return 0.0
            self.waiting = False
        elif self.quiet:
            return 0.0
        self.heard_name = trigger.name(ev)
        if self.heard_name is not None and self.heard_name[1] < TRIGGER_NAME_MIN:
            return 0.0  # it speaks only of sounds it can name; the LM's own decision still stands
        if self.heard_name is not None and self.heard_name[0] == self.warned and self.calm < TRIGGER_REARM_CHUNKS:
            return 0.0  # the sound it last warned about, with no real quiet since: the same sound going on
        v = trigger.verifier
        if v is not None and self.mels and lg >= trigger.fire_logit - v.gate:
            if summarize is None:
                raise ValueError("this trigger has a verifier: score needs the encoder (AudioLM.summarize)")
            mels = torch.stack(list(self.mels))
            mels = mels.reshape(1, len(self.mels), v.n_mels, -1)
            self.verified = float(v.logit(v.summary(summarize, mels))[0])
            confirm, floor = v.rule_of(None if self.heard_name is None else self.heard_name[0])
            self.agreed = agreed + 1 if self.verified >= floor else 0
            # it decides the trigger's part: fire once it has agreed `confirm` times in a row, else stay under
            lg = max(lg, trigger.fire_logit + 1e-4) if self.agreed >= confirm else min(lg, trigger.fire_logit - 1e-4)
        return float(torch.sigmoid(torch.tensor(lg)))

    def replied(self) -> None:
        """A reply on the newest chunk: empty the evidence; if the trigger called for it, keep
        what its namer heard, hold off and wait to re-arm. A reply the LM called for stays the
        LM's own: given the namer's words it answered spoken digits with "Bless you!" (streaming
        WER 1.8 -> 6.2, BENCHMARKS.md 2026-12-02)."""
        self.heard.clear()
        mine = self.last[1] >= self.last[0]
        self.named = self.heard_name if mine else None
        if mine:
            self.quiet = self.holdoff + 1  # the next `holdoff` chunks pushed
            self.waiting, self.below, self.calm = True, 0, 0
            self.warned = None if self.heard_name is None else self.heard_name[0]

    def copy(self) -> "TriggerState":
        return replace(self, heard=deque(self.heard), mels=deque(self.mels))
