"""Hierarchical audio event curation: paper §3.2 "Hierarchical Audio Event Selection" and Appendix
"Streaming Data Construction".

Instead of random concatenation (which breaks contextual consistency, e.g. a car horn while a
speaker talks), a stream is curated in three stages:

  (i)   scenario planning: from a bag of randomly matched annotations, plan a scenario with
        3-15 sub-events, each with a role in {foreground, background, ambient};
  (ii)  event refinement: each sub-event gets a retrieval query and a generation-fallback caption;
  (iii) clip grounding: retrieve the top-3 catalog clips and verify each against identity,
        cleanliness, duration fit and continuity -> accept | reprocess (route through TFJP,
        then accept) | reject; when nothing passes, an audio generator synthesises the event,
        and the synthesised clip is verified identically.

Two curators implement (i), (ii) and the verifier: `LLMCurator` drives any OpenAI-compatible
chat endpoint in JSON mode at temperature 0.7 (prompts below, modelled on the paper's
description), and `OfflineCurator` needs no network: scenario templates chosen by embedding
similarity to the bag, events drawn from the catalog rows that match the template, and an
acoustic verifier. `curate_stream` runs the loop and returns `compose.Event`s; its offline
generation fallback is `tones.ToneGenerator`, and RESPOND events get their reply from `replies`.

The LLM verifier cannot hear: it judges the candidate's metadata plus measurements we take of the
waveform (`measure`): clipping ratio, level, silence ratio, frame-energy dynamic range, edge level.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from soundflow.audio import SAMPLE_RATE, AudioError, frame_levels_db
from soundflow.catalog import Catalog, CatalogRow, mentions
from soundflow.compose import ROLES, Event, crop
from soundflow.curator_client import LLMClient
from soundflow.replies import default_reply
from soundflow.tfjp import TFJPConfig
from soundflow.tones import ToneGenerator

MIN_EVENTS, MAX_EVENTS = 3, 15  # Appendix: "emits 3-15 sub-events"
TOP_K = 3  # §3.2: "selects the top-3 most relevant candidates"
VERDICTS = ("accept", "reprocess", "reject")  # Appendix: verifier outcomes
CRITERIA = ("identity", "cleanliness", "duration_fit", "continuity")  # Appendix: four criteria
MIN_FG_SECONDS = 0.5  # shorter foreground remainders are dropped rather than squeezed in


class CurationError(RuntimeError):
    """A scenario could not be planned or grounded."""


# --------------------------------------------------------------------------- plan structures


@dataclass
class SubEvent:
    """One planned sub-event. duration: most seconds of audio the plan gives it (None: any)."""

    description: str
    role: str = "foreground"
    cls: str = ""  # catalog class it should come from, when the planner knows one
    query: str = ""  # (ii) retrieval query
    fallback_caption: str = ""  # (ii) caption for the generation fallback
    duration: float | None = None
    respond: bool | None = None  # planner's opinion on whether it warrants a reply

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"sub-event role must be one of {ROLES}, got {self.role!r}")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Scenario:
    title: str
    setting: str
    events: list[SubEvent]
    planner: str  # "offline-template:<name>" or "llm:<model>"
    bag: list[str] = field(default_factory=list)  # the annotations it was planned from

    def to_json(self) -> dict:
        return {"title": self.title, "setting": self.setting, "planner": self.planner, "bag": self.bag,
                "events": [e.to_json() for e in self.events]}


@dataclass
class Candidate:
    """A clip offered to the verifier: retrieved from the catalog or synthesised."""

    waveform: np.ndarray
    caption: str
    origin: str = "retrieved"  # "retrieved" | "generated"
    cls: str = ""
    category: str = ""
    decision: str | None = None
    row: CatalogRow | None = None
    score: float | None = None  # retrieval cosine
    stats: dict = field(default_factory=dict)

    def describe(self) -> dict:
        d = {"origin": self.origin, "caption": self.caption, "class": self.cls, "category": self.category,
             "measurements": self.stats}
        if self.score is not None:
            d["retrieval_score"] = round(self.score, 3)
        if self.row is not None:
            d["clip_id"] = self.row.id
        return d


@dataclass
class Verdict:
    verdict: str  # accept | reprocess | reject
    criteria: dict = field(default_factory=dict)  # criterion -> bool
    reason: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass
class GroundingContext:
    """What the verifier may look at besides the candidate: the catalog, budget, neighbours."""

    catalog: Catalog
    scenario: Scenario
    max_seconds: float
    remaining_s: float  # foreground seconds still free
    previous: str | None = None  # caption of the previous foreground event
    used_ids: set = field(default_factory=set)
    used_groups: set = field(default_factory=set)


# --------------------------------------------------------------------------- measurements


def measure(x: np.ndarray, sr: int = SAMPLE_RATE) -> dict:
    """Acoustic facts the verifiers use (20 ms frames).

    clip_ratio: share of samples at |x| >= 0.99 (hard clipping); rms_db: level in dBFS;
    silence_ratio: share of frames 30 dB under the loud (p90) frame level; dynamic_db: p90 - p10
    frame level (a crude SNR: low for steady sounds or noisy clips); edge_db: louder of the first
    and last 20 ms relative to the clip's RMS (near 0 dB = cut mid-sound).
    """
    x = np.asarray(x, np.float32).reshape(-1)
    n = len(x)
    out = {"duration_s": round(n / sr, 3)}
    if n == 0:
        return {**out, "clip_ratio": 0.0, "rms_db": -120.0, "silence_ratio": 1.0, "dynamic_db": 0.0, "edge_db": -120.0}
    e = frame_levels_db(x, max(1, int(0.02 * sr)))
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    p90, p10 = np.percentile(e, 90), np.percentile(e, 10)
    rms_db = 20 * np.log10(rms + 1e-12)
    out.update(
        clip_ratio=round(float(np.mean(np.abs(x) >= 0.99)), 5),
        rms_db=round(float(rms_db), 1),
        silence_ratio=round(float(np.mean(e < p90 - 30.0)), 3),
        dynamic_db=round(float(p90 - p10), 1),
        edge_db=round(float(max(e[0], e[-1]) - rms_db), 1),
    )
    return out


# --------------------------------------------------------------------------- curator protocol


@runtime_checkable
class Curator(Protocol):
    """Planner, refiner and verifier (Appendix: the three LLM roles)."""

    planner: str  # provenance label

    def plan(self, bag: list[CatalogRow], catalog: Catalog, rng: np.random.Generator, max_seconds: float) -> Scenario: ...

    def refine(self, scenario: Scenario, catalog: Catalog, rng: np.random.Generator) -> Scenario: ...

    def verify(self, sub: SubEvent, cand: Candidate, ctx: GroundingContext) -> Verdict: ...


@runtime_checkable
class Generator(Protocol):
    """Audio generation fallback (the paper invokes an audio generation model).

    generate returns a 16 kHz mono waveform, or None when it cannot make the caption."""

    name: str

    def generate(self, caption: str, duration: float, rng: np.random.Generator) -> np.ndarray | None: ...


# --------------------------------------------------------------------------- acoustic verifier


@dataclass
class AcousticVerifier:
    """Offline verifier over the four criteria (Appendix), from measurements and text similarity.

    - identity: same class as planned, or caption similarity to the query >= `identity_threshold`;
    - cleanliness: reject clipped (> `max_clip_ratio`) or near-silent (< `min_rms_db`) clips;
      reprocess clips that are mostly silence (TFJP cuts it);
    - duration fit: at least `min_seconds`; a foreground clip must fit the plan's allotment and
      the stream's remaining foreground budget, or fit once TFJP has cut its silence (reprocess);
    - continuity: not a second cut of a recording already in the stream (reject); a clip that
      starts or ends mid-sound is reprocessed (TFJP tapers its boundaries).
    """

    identity_threshold: float = 0.5
    max_clip_ratio: float = 0.01
    min_rms_db: float = -55.0
    max_silence_ratio: float = 0.5
    max_edge_db: float = -6.0
    min_seconds: float = 0.3
    slack: float = 1.25  # a foreground clip may overrun its planned allotment by 25 %

    def verify(self, sub: SubEvent, cand: Candidate, ctx: GroundingContext) -> Verdict:
        s = cand.stats or measure(cand.waveform)
        reasons: list[str] = []
        reprocess = False
        # identity
        if sub.cls and cand.cls:
            identity = sub.cls == cand.cls
        else:
            want = sub.query or sub.description
            identity = ctx.catalog.similarity(want, cand.caption) >= self.identity_threshold
        if not identity:
            reasons.append(f"identity: {cand.caption!r} is not {sub.cls or sub.query or sub.description!r}")
        # cleanliness
        clean = s["clip_ratio"] <= self.max_clip_ratio and s["rms_db"] >= self.min_rms_db
        if not clean:
            reasons.append(f"cleanliness: clip_ratio {s['clip_ratio']}, rms {s['rms_db']} dBFS")
        elif s["silence_ratio"] > self.max_silence_ratio:
            reprocess = True
            reasons.append(f"mostly silence ({s['silence_ratio']:.0%}): TFJP")
        # duration fit
        dur = s["duration_s"]
        fit = dur >= self.min_seconds
        if fit and sub.role == "foreground":
            limit = min(ctx.remaining_s, (sub.duration or ctx.remaining_s) * self.slack)
            if dur > limit:
                if dur * (1.0 - s["silence_ratio"]) <= limit:
                    reprocess = True
                    reasons.append(f"{dur:.1f} s > {limit:.1f} s until TFJP cuts its silence")
                else:
                    fit = False
        if not fit:
            reasons.append(f"duration_fit: {dur:.1f} s for a {sub.role} slot of {sub.duration or ctx.remaining_s:.1f} s")
        # continuity
        continuity = not (cand.row is not None and cand.row.group and cand.row.group in ctx.used_groups)
        if not continuity:
            reasons.append("continuity: another cut of a recording already in the stream")
        elif s["edge_db"] > self.max_edge_db:
            reprocess = True
            reasons.append(f"abrupt boundary (edge {s['edge_db']} dB): TFJP")
        crit = {"identity": identity, "cleanliness": clean, "duration_fit": fit, "continuity": continuity}
        verdict = "reject" if not all(crit.values()) else ("reprocess" if reprocess else "accept")
        return Verdict(verdict, crit, "; ".join(reasons) or "fits")


# --------------------------------------------------------------------------- scenario templates


@dataclass(frozen=True)
class ScenarioTemplate:
    """An offline scenario: keywords (class names or caption words) per role.

    synthetic: (caption, respond) events no catalog is expected to hold; they go to the generator."""

    name: str
    setting: str
    foreground: tuple[str, ...]
    background: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()
    synthetic: tuple[tuple[str, bool], ...] = ()

    def text(self) -> str:
        return f"{self.setting}. Sounds: {', '.join(dict.fromkeys(self.foreground + self.background + self.ambient))}"


TEMPLATES: tuple[ScenarioTemplate, ...] = (
    ScenarioTemplate(
        "home", "an evening at home in the living room",
        ("door knock", "knock", "glass break", "phone ring", "smoke alarm", "sneeze", "cough", "laugh",
         "keys drop", "keychain", "drawer", "toilet flush", "clap", "dog bark", "page turn"),
        ("washing machine", "household appliance", "air conditioner", "tick tock", "people talking", "speech"),
        ("rain", "air conditioner", "clock tick"),
        (("doorbell ding dong", True),)),
    ScenarioTemplate(
        "office", "a working day in an open-plan office",
        ("door knock", "knock", "phone ring", "keyboard typing", "page turn", "flip page", "clear throat",
         "cough", "sneeze", "laugh", "drawer", "keys drop", "keychain", "smoke alarm", "glass break"),
        ("keyboard typing", "people talking", "speech", "air conditioner"),
        ("air conditioner", "clock tick"),
        (("desk telephone ringing", True),)),
    ScenarioTemplate(
        "commute", "travelling to work by car, train and on foot",
        ("car horn", "siren", "train", "helicopter", "phone ring", "cough", "sneeze", "people talking", "speech"),
        ("car engine", "engine idling", "train", "people talking"),
        ("rain", "car engine", "engine idling", "train noise"),
        (("train station announcement chime", False),)),
    ScenarioTemplate(
        "street", "walking along a busy city street",
        ("car horn", "siren", "dog bark", "helicopter", "glass break", "chainsaw", "people talking", "speech"),
        ("car engine", "engine idling", "helicopter", "people talking", "dog bark"),
        ("rain", "car engine", "engine idling", "air conditioner"),
        (("car horn honking", True),)),
    ScenarioTemplate(
        "kitchen", "cooking dinner in a home kitchen",
        ("glass break", "smoke alarm", "alarm clock", "keys drop", "keychain", "drawer", "door knock",
         "phone ring", "cough", "sneeze", "laugh"),
        ("washing machine", "household appliance", "dishwasher", "fire in the stove", "fire crackling", "people talking"),
        ("air conditioner", "clock tick", "rain"),
        (("oven timer beeping", True), ("microwave beeping", False))),
    ScenarioTemplate(
        "nursery", "a quiet afternoon in a baby's nursery",
        ("baby cry", "baby crying", "door knock", "sneeze", "cough", "laugh", "clap", "smoke alarm",
         "glass break", "alarm clock"),
        ("tick tock", "clock tick", "people talking", "household appliance", "washing machine"),
        ("rain", "air conditioner", "clock tick"),
        (("baby monitor beeping", True),)),
    ScenarioTemplate(
        "countryside", "a morning on a farm in the countryside",
        ("rooster", "dog bark", "chainsaw", "helicopter", "thunder", "laugh", "people talking"),
        ("fire crackling", "rain", "dog bark", "engine idling"),
        ("rain", "sea waves", "waves"),
        ()),
    ScenarioTemplate(
        "seaside", "a windy day at the beach",
        ("dog bark", "helicopter", "laugh", "people talking", "thunder", "siren", "sneeze", "phone ring"),
        ("people talking", "helicopter"),
        ("sea waves", "waves", "rain"),
        (("lifeguard whistle", True),)),
)


def matches(row: CatalogRow, keywords: Sequence[str]) -> bool:
    """Whole-word keyword match on a row's class and caption."""
    return mentions(f"{row.label} {row.caption}", keywords)


def _class_decision(rows: Sequence[CatalogRow]) -> str | None:
    ds = [r.decision for r in rows if r.decision]
    return max(set(ds), key=ds.count) if ds else None


# --------------------------------------------------------------------------- offline curator


@dataclass
class OfflineCurator:
    """No-network curator: template planner, caption refiner, acoustic verifier.

    temperature: softmax temperature over template similarities (cosine units); lower = greedier.
    p_synthetic: chance that a plan includes one of the template's generator-only events.
    """

    templates: Sequence[ScenarioTemplate] = TEMPLATES
    verifier: AcousticVerifier = field(default_factory=AcousticVerifier)
    temperature: float = 0.05
    p_background: float = 0.7
    p_ambient: float = 0.8
    p_synthetic: float = 0.25
    max_foreground: int = 10
    planner: str = "offline-template"
    _emb: dict = field(default_factory=dict, init=False, repr=False)

    def pools(self, t: ScenarioTemplate, catalog: Catalog) -> dict[str, dict[str, list[CatalogRow]]]:
        """role -> class -> catalog rows matching the template's keywords for that role."""
        out: dict[str, dict[str, list[CatalogRow]]] = {}
        for role, kws in (("foreground", t.foreground), ("background", t.background), ("ambient", t.ambient)):
            out[role] = {c: rows for c, rows in catalog.classes().items() if matches(rows[0], kws)}
        return out

    def choose_template(self, bag: list[CatalogRow], catalog: Catalog, rng: np.random.Generator) -> ScenarioTemplate:
        """Softmax over cosine(mean bag embedding, template text) among templates the catalog can fill."""
        viable = [t for t in self.templates if self._viable(t, catalog)]
        if not viable:
            raise CurationError("no scenario template matches at least 3 classes of this catalog")
        key = (id(catalog), catalog.embedder.name if catalog.embedder else "")
        if key not in self._emb:
            self._emb[key] = catalog.embed([t.text() for t in self.templates])
        temb = self._emb[key][[self.templates.index(t) for t in viable]]
        pos = {r.id: i for i, r in enumerate(catalog.rows)}
        idx = [pos[r.id] for r in bag]
        b = catalog.embeddings[idx].mean(axis=0)
        b /= np.linalg.norm(b) + 1e-12
        sim = temb @ b
        p = np.exp((sim - sim.max()) / max(self.temperature, 1e-6))
        return viable[int(rng.choice(len(viable), p=p / p.sum()))]

    def _viable(self, t: ScenarioTemplate, catalog: Catalog) -> bool:
        pools = self.pools(t, catalog)
        return len(pools["foreground"]) >= 2 and len(set().union(*(p.keys() for p in pools.values()))) >= MIN_EVENTS

    def plan(self, bag: list[CatalogRow], catalog: Catalog, rng: np.random.Generator, max_seconds: float) -> Scenario:
        t = self.choose_template(bag, catalog, rng)
        pools = self.pools(t, catalog)
        fg = pools["foreground"]
        decision = {c: _class_decision(rows) for c, rows in fg.items()}
        # Order foreground classes: the bag's own annotations that fit the template first (the
        # paper plans "from randomly matched annotations"), then the rest at random; one or two
        # RESPOND events per stream, the rest IGNORE, shuffled.
        in_bag = [r.cls or r.caption for r in bag if (r.cls or r.caption) in fg]
        rest = [c for c in rng.permutation(sorted(fg)).tolist() if c not in in_bag]
        order = list(dict.fromkeys(in_bag + rest))
        respond = [c for c in order if decision[c] == "RESPOND"]
        ignore = [c for c in order if decision[c] != "RESPOND"]
        n_resp = min(len(respond), int(rng.integers(1, 3)))
        picks = respond[:n_resp] + ignore
        events: list[SubEvent] = []
        budget = float(max_seconds)
        if t.synthetic and rng.random() < self.p_synthetic:
            cap, resp = t.synthetic[int(rng.integers(len(t.synthetic)))]
            d = min(3.0, budget)
            events.append(SubEvent(description=cap, role="foreground", duration=d, respond=resp))
            budget -= d
        for c in picks:
            if len(events) >= self.max_foreground or budget < 1.0:
                break
            fits = [r for r in fg[c] if 0 < r.duration <= budget]
            if not fits:
                continue
            est = float(np.median([r.duration for r in fits]))
            row = next((r for r in bag if (r.cls or r.caption) == c), None) or fits[int(rng.integers(len(fits)))]
            events.append(SubEvent(description=f"{row.label} ({row.category or 'sound'})", role="foreground", cls=c,
                                   query=row.caption, duration=min(budget, est * 1.5), respond=decision[c] == "RESPOND"))
            budget -= est
        order_idx = rng.permutation(len(events)).tolist()  # RESPOND events anywhere in the stream
        events = [events[i] for i in order_idx]
        used = {e.cls for e in events}
        for role, p in (("background", self.p_background), ("ambient", self.p_ambient)):
            choices = [c for c in pools[role] if c not in used]
            if choices and (rng.random() < p or len(events) < MIN_EVENTS):
                c = choices[int(rng.integers(len(choices)))]
                row = pools[role][c][0]
                events.append(SubEvent(description=f"{row.label} in the {role}", role=role, cls=c,
                                       query=row.caption, duration=max_seconds, respond=False))
                used.add(c)
        if len(events) < MIN_EVENTS:  # a tiny catalog: fill with any template class left
            spare = [(role, c) for role in ("background", "ambient") for c in pools[role] if c not in used]
            for role, c in spare[: MIN_EVENTS - len(events)]:
                events.append(SubEvent(description=f"{c} in the {role}", role=role, cls=c,
                                       query=pools[role][c][0].caption, duration=max_seconds, respond=False))
        if not MIN_EVENTS <= len(events) <= MAX_EVENTS:
            raise CurationError(f"template {t.name!r} yields {len(events)} events on this catalog")
        return Scenario(title=t.name, setting=t.setting, events=events[:MAX_EVENTS],
                        planner=f"{self.planner}:{t.name}", bag=[r.caption for r in bag])

    def refine(self, scenario: Scenario, catalog: Catalog, rng: np.random.Generator) -> Scenario:
        """Query = the class's own caption (a row of the bag when it had one); fallback = a clean-recording caption."""
        for e in scenario.events:
            e.query = e.query or e.description
            e.fallback_caption = e.fallback_caption or f"{e.query}, close-up, clean isolated recording"
        return scenario

    def verify(self, sub: SubEvent, cand: Candidate, ctx: GroundingContext) -> Verdict:
        return self.verifier.verify(sub, cand, ctx)


# --------------------------------------------------------------------------- LLM curator

PLANNER_PROMPT = """ROLE: scenario planner for streaming audio data.
You turn a bag of randomly matched sound annotations into ONE coherent, real-world scenario
(a place and a situation) heard by an always-on audio assistant. The scenario must stay consistent
with commonsense: sounds that could not co-occur in the same place and moment are left out, and
you may add sounds the annotations do not mention when the scene needs them.
Plan between {min_events} and {max_events} sub-events in listening order. Each has a role:
- "foreground": a distinct event heard in turn (these are concatenated, so their durations add up
  and must not exceed max_seconds in total);
- "background": a secondary sound mixed under the foreground (6 dB quieter);
- "ambient": a steady bed for the whole scene (12 dB quieter).
Prefer sound classes from `available_sound_classes` (they can be retrieved); others are synthesised.
Mark "respond": true only for events an attentive assistant should speak up about (safety, someone
at the door, an alarm, a crying baby); everything else is false.
Answer with ONE JSON object, no prose:
{{"title": str, "setting": str, "events": [{{"description": str, "role": "foreground"|"background"|"ambient",
  "class": str|null, "duration_s": number, "respond": bool}}]}}"""

REFINER_PROMPT = """ROLE: event refiner for streaming audio data.
For every sub-event of the scenario, write
- "query": a short text query (3-8 words) that retrieves a matching clip from a sound-effects
  catalog indexed by captions such as "glass break" or "dog bark";
- "fallback_caption": a caption for a text-to-audio generation model in case retrieval fails,
  describing the sound itself (source, action, acoustic character), clean and isolated.
Answer with ONE JSON object, no prose, one entry per sub-event, same indices:
{"events": [{"index": int, "query": str, "fallback_caption": str}]}"""

VERIFIER_PROMPT = """ROLE: clip verifier for streaming audio data.
Judge whether a candidate clip (retrieved from a catalog or synthesised) can realise a planned
sub-event. You cannot hear it: use its caption, class and the measurements taken of the waveform
(duration_s, clip_ratio = share of clipped samples, rms_db, silence_ratio, dynamic_db = p90-p10
frame level, edge_db = boundary level relative to the clip).
Check four criteria:
- identity: the clip is the planned sound;
- cleanliness: not clipped, not near-silent, no unrelated sounds;
- duration_fit: a foreground clip fits remaining_foreground_s (and roughly its planned duration);
- continuity: it fits after the previous event and does not repeat a recording already used.
Verdicts: "accept" (use as is), "reprocess" (right sound but needs silence trimming, denoising or
boundary smoothing; it is routed through TFJP and then used), "reject" (wrong or unusable).
Answer with ONE JSON object, no prose:
{"verdict": "accept"|"reprocess"|"reject", "criteria": {"identity": bool, "cleanliness": bool,
  "duration_fit": bool, "continuity": bool}, "reason": str}"""


def _validate_plan(obj: dict) -> dict:
    evs = obj.get("events")
    if not isinstance(evs, list) or not MIN_EVENTS <= len(evs) <= MAX_EVENTS:
        raise ValueError(f"'events' must be a list of {MIN_EVENTS}-{MAX_EVENTS} sub-events")
    for i, e in enumerate(evs):
        if not isinstance(e, dict) or not str(e.get("description", "")).strip():
            raise ValueError(f"events[{i}] needs a description")
        e["role"] = str(e.get("role", "")).strip().lower()
        if e.get("role") not in ROLES:
            raise ValueError(f"events[{i}].role must be one of {ROLES}")
    if not any(e["role"] == "foreground" for e in evs):
        raise ValueError("a scenario needs at least one foreground event")
    return obj


def _validate_verdict(obj: dict) -> dict:
    v = str(obj.get("verdict", "")).strip().lower()
    if v not in VERDICTS:
        raise ValueError(f"'verdict' must be one of {VERDICTS}")
    obj["verdict"] = v
    return obj


@dataclass
class LLMCurator:
    """Planner / refiner / verifier driven by an OpenAI-compatible endpoint (JSON mode, T = 0.7).

    client: a `curator_client.LLMClient` (default: from SOUNDFLOW_LLM_* environment variables).
    max_classes: how many catalog classes the planner is shown.
    """

    client: LLMClient | None = None
    max_classes: int = 200

    def __post_init__(self) -> None:
        if self.client is None:
            self.client = LLMClient()

    @property
    def planner(self) -> str:
        return f"llm:{self.client.model}"

    def plan(self, bag: list[CatalogRow], catalog: Catalog, rng: np.random.Generator, max_seconds: float) -> Scenario:
        classes = []
        for c, rows in list(catalog.classes().items())[: self.max_classes]:
            classes.append({"class": c, "caption": rows[0].caption, "category": rows[0].category,
                            "decision": _class_decision(rows),
                            "median_duration_s": round(float(np.median([r.duration for r in rows])), 1)})
        user = {"annotations": [r.caption for r in bag], "available_sound_classes": classes,
                "max_seconds": max_seconds, "min_events": MIN_EVENTS, "max_events": MAX_EVENTS}
        system = PLANNER_PROMPT.format(min_events=MIN_EVENTS, max_events=MAX_EVENTS)
        obj = self.client.chat_json(system, user, validate=_validate_plan)
        known = set(catalog.classes())
        events = []
        for e in obj["events"]:
            cls = e.get("class") or ""
            d = e.get("duration_s")
            events.append(SubEvent(
                description=str(e["description"]).strip(), role=e["role"],
                cls=cls if cls in known else "",
                duration=float(d) if isinstance(d, (int, float)) and d > 0 else None,
                respond=bool(e["respond"]) if isinstance(e.get("respond"), bool) else None))
        return Scenario(title=str(obj.get("title", "")), setting=str(obj.get("setting", "")), events=events,
                        planner=self.planner, bag=[r.caption for r in bag])

    def refine(self, scenario: Scenario, catalog: Catalog, rng: np.random.Generator) -> Scenario:
        n = len(scenario.events)

        def check(obj: dict) -> dict:
            evs = obj.get("events")
            if not isinstance(evs, list):
                raise ValueError("'events' must be a list")
            got = {}
            for e in evs:
                i = int(e["index"])
                if not (0 <= i < n) or not str(e.get("query", "")).strip():
                    raise ValueError(f"bad entry {e!r}")
                got[i] = e
            if len(got) != n:
                raise ValueError(f"expected one entry per sub-event (indices 0..{n - 1}), got {sorted(got)}")
            return {"events": got}

        user = {"scenario": {"title": scenario.title, "setting": scenario.setting},
                "events": [{"index": i, "description": e.description, "role": e.role, "class": e.cls or None}
                           for i, e in enumerate(scenario.events)]}
        got = self.client.chat_json(REFINER_PROMPT, user, validate=check)["events"]
        for i, e in enumerate(scenario.events):
            e.query = str(got[i]["query"]).strip()
            e.fallback_caption = str(got[i].get("fallback_caption") or e.description).strip()
        return scenario

    def verify(self, sub: SubEvent, cand: Candidate, ctx: GroundingContext) -> Verdict:
        user = {"sub_event": {"description": sub.description, "role": sub.role, "class": sub.cls or None,
                              "query": sub.query, "planned_duration_s": sub.duration},
                "candidate": {**cand.describe(),
                              "repeats_used_recording": bool(cand.row and cand.row.group and cand.row.group in ctx.used_groups)},
                "context": {"scenario": ctx.scenario.title, "setting": ctx.scenario.setting,
                            "previous_event": ctx.previous, "remaining_foreground_s": round(ctx.remaining_s, 2)}}
        obj = self.client.chat_json(VERIFIER_PROMPT, user, validate=_validate_verdict)
        crit = obj.get("criteria") if isinstance(obj.get("criteria"), dict) else {}
        return Verdict(obj["verdict"], {k: bool(crit.get(k, True)) for k in CRITERIA}, str(obj.get("reason", "")))


def default_curator() -> Curator:
    """`LLMCurator` when SOUNDFLOW_LLM_BASE_URL is set, else `OfflineCurator`."""
    client = LLMClient.from_env()
    return LLMCurator(client) if client is not None else OfflineCurator()


# --------------------------------------------------------------------------- grounding + loop


def ground(
    sub: SubEvent,
    ctx: GroundingContext,
    curator: Curator,
    generator: Generator | None,
    rng: np.random.Generator,
    top_k: int = TOP_K,
    tfjp_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[Candidate | None, dict]:
    """Stage (iii) for one sub-event: retrieve top-k, verify, reprocess through TFJP or reject;
    generate when nothing passes. Returns (candidate with its final waveform, or None; record)."""
    tfjp_fn = tfjp_fn or TFJPConfig()
    fg = sub.role == "foreground"
    budget = ctx.remaining_s if fg else ctx.max_seconds
    rec: dict = {"tried": []}
    if fg and budget < MIN_FG_SECONDS:  # the stream is full: do not spend retrieval or LLM calls
        rec["reason"] = f"no foreground time left ({budget:.2f} s of {ctx.max_seconds:g} s)"
        return None, rec

    def judge(c: Candidate) -> Candidate | None:
        c.stats = measure(c.waveform)
        v = curator.verify(sub, c, ctx)
        entry = {"origin": c.origin, "clip_id": c.row.id if c.row else None, "caption": c.caption,
                 "score": None if c.score is None else round(c.score, 4), "verdict": v.verdict,
                 "criteria": v.criteria, "reason": v.reason}
        rec["tried"].append(entry)
        if v.verdict == "reject":
            return None
        if v.verdict == "reprocess":  # Appendix: "reprocess (route back through TFJP)", then accept
            c.waveform = tfjp_fn(c.waveform)
            entry["reprocessed_s"] = round(len(c.waveform) / SAMPLE_RATE, 3)
            if len(c.waveform) < int(0.1 * SAMPLE_RATE):
                entry["verdict"], entry["reason"] = "reject", entry["reason"] + "; nothing left after TFJP"
                return None
        rec["verdict"], rec["reprocessed"] = v.verdict, v.verdict == "reprocess"
        return c

    # Retrieval: top-k by caption similarity among unused clips that are not absurdly long.
    def allowed(r: CatalogRow) -> bool:
        return r.id not in ctx.used_ids and (not fg or r.duration <= 2.0 * budget + 1.0)

    chosen = None
    if sub.query or sub.description:
        for row, score in ctx.catalog.search(sub.query or sub.description, k=top_k, filter=allowed, rng=rng):
            try:
                wave = ctx.catalog.load_audio(row)
            except (AudioError, OSError) as e:
                rec["tried"].append({"origin": "retrieved", "clip_id": row.id, "verdict": "reject", "reason": f"unreadable: {e}"})
                continue
            chosen = judge(Candidate(wave, row.caption, "retrieved", row.cls, row.category, row.decision, row, score))
            if chosen is not None:
                break
    # Generation fallback (§3.2: "when no retrieved clip is sufficiently appropriate").
    if chosen is None and generator is not None:
        caption = sub.fallback_caption or sub.query or sub.description
        wave = generator.generate(caption, min(sub.duration or 4.0, budget), rng)
        if wave is None:
            rec["tried"].append({"origin": "generated", "caption": caption, "verdict": "reject",
                                 "reason": f"generator {generator.name} cannot make it"})
        else:
            kind = getattr(generator, "kind", lambda _c: None)(caption) or ""
            cand = Candidate(np.asarray(wave, np.float32), caption, "generated", sub.cls or kind, "",
                             None if sub.respond is None else ("RESPOND" if sub.respond else "IGNORE"))
            chosen = judge(cand)
    if chosen is None:
        return None, rec
    # Hard budget guard whatever the verifier said: foreground seconds never exceed max_seconds.
    limit = budget if fg else ctx.max_seconds
    if len(chosen.waveform) > int(round(limit * SAMPLE_RATE)):
        if fg and limit < MIN_FG_SECONDS:
            rec["tried"][-1]["reason"] += "; no foreground time left"
            return None, rec
        rec["cropped_from_s"] = round(len(chosen.waveform) / SAMPLE_RATE, 3)
        chosen.waveform = crop(chosen.waveform, limit, None if fg else rng, fade_s=0.02)
    return chosen, rec


def curate_stream(
    catalog: Catalog,
    rng: np.random.Generator,
    curator: Curator | None = None,
    generator: Generator | None = None,
    max_seconds: float = 24.0,
    respond_reply: Callable[[str, str, str], str | None] | None = None,
    *,
    bag_size: int = 8,
    top_k: int = TOP_K,
    tfjp_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[list[Event], dict]:
    """Plan -> refine -> ground -> verify one stream; returns (events for `compose.compose`, provenance).

    curator: default `default_curator()` (LLM when SOUNDFLOW_LLM_BASE_URL is set, else offline);
    generator: default `ToneGenerator()`; respond_reply(cls, caption, category): reply text for a
    RESPOND-decision foreground event (default `default_reply`); IGNORE events carry none.
    Foreground clips total at most max_seconds; background/ambient clips are at most that long.
    """
    curator = curator if curator is not None else default_curator()
    generator = generator if generator is not None else ToneGenerator()
    respond_reply = respond_reply or default_reply
    bag = catalog.sample(rng, bag_size)
    scenario = curator.plan(bag, catalog, rng, max_seconds)  # (i)
    scenario = curator.refine(scenario, catalog, rng)  # (ii)
    ctx = GroundingContext(catalog, scenario, float(max_seconds), float(max_seconds))
    events: list[Event] = []
    records: list[dict] = []
    for i, sub in enumerate(scenario.events):  # (iii)
        cand, rec = ground(sub, ctx, curator, generator, rng, top_k, tfjp_fn)
        base = {"sub_event": i, "description": sub.description, "role": sub.role, "query": sub.query,
                "fallback_caption": sub.fallback_caption, "planned_class": sub.cls or None}
        if cand is None:
            records.append({**base, "grounded": False, **rec})
            continue
        decision = cand.decision or (None if sub.respond is None else ("RESPOND" if sub.respond else "IGNORE"))
        reply = None
        if sub.role == "foreground" and decision == "RESPOND":
            reply = respond_reply(cand.cls or sub.cls, cand.caption, cand.category)
        prov = {**base, "grounded": True, "origin": cand.origin, "caption": cand.caption, "class": cand.cls or None,
                "category": cand.category or None, "decision": decision, "seconds": round(len(cand.waveform) / SAMPLE_RATE, 3),
                **rec}
        if cand.row is not None:
            prov.update(clip_id=cand.row.id, audio=cand.row.audio, license=cand.row.license,
                        source=cand.row.source, score=round(cand.score or 0.0, 4))
            ctx.used_ids.add(cand.row.id)
            if cand.row.group:
                ctx.used_groups.add(cand.row.group)
        else:
            prov.update(synthetic=True, generator=generator.name)
        records.append(prov)
        events.append(Event(cand.waveform, role=sub.role, response=reply, provenance=prov))
        if sub.role == "foreground":
            ctx.remaining_s -= len(cand.waveform) / SAMPLE_RATE
            ctx.previous = cand.caption
    fg_s = sum(len(e.waveform) for e in events if e.role == "foreground") / SAMPLE_RATE
    provenance = {
        "planner": scenario.planner,
        "scenario": {"title": scenario.title, "setting": scenario.setting},
        "bag": scenario.bag,
        "plan": [e.to_json() for e in scenario.events],
        "events": [r for r in records if r["grounded"]],
        "dropped": [r for r in records if not r["grounded"]],
        "max_seconds": max_seconds,
        "foreground_seconds": round(fg_s, 3),
    }
    if not events:
        raise CurationError(f"no sub-event of scenario {scenario.title!r} could be grounded: {json.dumps(provenance['dropped'])[:500]}")
    return events, provenance
