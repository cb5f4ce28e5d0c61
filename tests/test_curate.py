"""Hierarchical event curation (paper §3.2, Appendix "Streaming Data Construction").

The LLM path talks to a real HTTP server on 127.0.0.1 speaking the chat-completions protocol;
it answers deterministically by the role named in the system prompt.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundflow.audio import SAMPLE_RATE as SR
from soundflow.catalog import Catalog, HashEmbedder
from soundflow.compose import Event, compose
from soundflow.curate import (
    TEMPLATES,
    AcousticVerifier,
    Candidate,
    GroundingContext,
    LLMCurator,
    OfflineCurator,
    Scenario,
    SubEvent,
    curate_stream,
    default_curator,
    matches,
    measure,
)
from soundflow.curator_client import LLMClient, LLMError, parse_json_object
from soundflow.data import shared_data_dir
from soundflow.replies import default_reply
from soundflow.tones import ToneGenerator

EVENTS = (shared_data_dir() or Path("/nonexistent")) / "events" / "catalog.jsonl"
DAILY = "Daily Living Sounds/Daily Affairs"


# --------------------------------------------------------------------------- a small real catalog


def _noise_burst(seconds, rng, amp=0.2, lead=0.0):
    x = amp * rng.standard_normal(int(seconds * SR)) * np.hanning(int(seconds * SR))
    return np.concatenate([np.zeros(int(lead * SR)), x]).astype(np.float32)


def _tone(seconds, f, amp=0.2):
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * f * t) * np.hanning(len(t))).astype(np.float32)


def build_catalog(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []

    def add(cid, caption, cls, cat, dec, wave, group=None):
        (folder / "clips").mkdir(parents=True, exist_ok=True)
        sf.write(folder / "clips" / f"{cid}.wav", wave, SR)
        rows.append({"id": cid, "audio": f"clips/{cid}.wav", "duration": round(len(wave) / SR, 3), "caption": caption,
                     "class": cls, "category": cat, "decision": dec, "source": "test", "license": "CC0-1.0",
                     "group": group or cid})

    clipped = np.clip(_noise_burst(1.5, rng, amp=3.0), -1, 1).astype(np.float32)
    add("glass-clipped", "glass break", "glass_break", DAILY, "RESPOND", clipped)  # exact caption: ranks first
    for i in range(3):
        add(f"glass-{i}", "smashed window", "glass_break", DAILY, "RESPOND", _noise_burst(1.5, rng))
    for i in range(3):  # knocks with 1.5 s of leading silence: TFJP trims them
        add(f"knock-{i}", "knock door", "door_knock", DAILY, "RESPOND", _noise_burst(1.0, rng, lead=1.5))
    for i in range(3):
        add(f"typing-{i}", "keyboard typing", "keyboard_typing", DAILY, "IGNORE", _noise_burst(2.0, rng, 0.05))
    for i in range(2):
        add(f"page-{i}", "flip page", "page_turn", DAILY, "IGNORE", _noise_burst(1.0, rng, 0.05))
    for i in range(2):
        add(f"phone-{i}", "phone ring", "phone_ring", DAILY, "RESPOND", _tone(2.0, 440 + 10 * i))
    for i in range(2):
        add(f"dog-{i}", "dog bark", "dog_bark", "Nature & Environment/Ecological & Biological Context", "IGNORE",
            _noise_burst(1.0, rng))
    for i in range(2):
        add(f"speech-{i}", "people talking", "speech", "Human Sound Signals/Collective Ambience", "IGNORE",
            _noise_burst(4.0, rng, 0.05))
    for i in range(2):
        add(f"ac-{i}", "air conditioner", "air_conditioner", "Equipment/House Equipment States", "IGNORE",
            (0.05 * rng.standard_normal(5 * SR)).astype(np.float32))
    add("rain-0", "light rain", "rain", "Nature & Environment/Meteorological Dynamics", "IGNORE",
        (0.05 * rng.standard_normal(5 * SR)).astype(np.float32))
    p = folder / "catalog.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    d = tmp_path_factory.mktemp("db")
    return Catalog.load(build_catalog(d), embedder=HashEmbedder(), cache_dir=d / "cache")


# --------------------------------------------------------------------------- a chat-completions server

PLAN = {
    "title": "kitchen accident", "setting": "a kitchen in the evening",
    "events": [
        {"description": "a glass shatters on the tiles", "role": "foreground", "class": "glass_break", "duration_s": 2, "respond": True},
        {"description": "someone knocks at the door", "role": "foreground", "class": "door_knock", "duration_s": 3, "respond": True},
        {"description": "keyboard typing", "role": "foreground", "class": "keyboard_typing", "duration_s": 2, "respond": False},
        {"description": "the oven timer beeps", "role": "foreground", "class": None, "duration_s": 2, "respond": True},
        {"description": "a trumpet fanfare", "role": "foreground", "class": None, "duration_s": 2, "respond": False},
        {"description": "people chatting in the next room", "role": "background", "class": "speech", "duration_s": 4, "respond": False},
        {"description": "air conditioner hum", "role": "ambient", "class": "air_conditioner", "duration_s": 5, "respond": False},
    ],
}
REFINE = {"events": [
    {"index": 0, "query": "glass break", "fallback_caption": "a drinking glass shattering on tiles"},
    {"index": 1, "query": "knock door", "fallback_caption": "three knocks on a wooden door"},
    {"index": 2, "query": "keyboard typing", "fallback_caption": "typing on a laptop keyboard"},
    {"index": 3, "query": "oven timer", "fallback_caption": "oven timer beeping"},
    {"index": 4, "query": "trumpet fanfare", "fallback_caption": "a brass trumpet fanfare"},
    {"index": 5, "query": "people talking", "fallback_caption": "muffled conversation"},
    {"index": 6, "query": "air conditioner", "fallback_caption": "steady air conditioner hum"},
]}


def verdict_for(req: dict) -> dict:
    """Deterministic verifier: wrong class or unknown class retrieved -> reject; clipped -> reject;
    door knocks -> reprocess; synthesised clips and the rest -> accept."""
    sub, cand = req["sub_event"], req["candidate"]
    crit = {"identity": True, "cleanliness": True, "duration_fit": True, "continuity": True}
    if cand["origin"] == "generated":
        return {"verdict": "accept", "criteria": crit, "reason": "synthesised as asked"}
    if not sub["class"] or cand["class"] != sub["class"]:
        return {"verdict": "reject", "criteria": {**crit, "identity": False}, "reason": "wrong sound"}
    if cand["measurements"]["clip_ratio"] > 0.01:
        return {"verdict": "reject", "criteria": {**crit, "cleanliness": False}, "reason": "clipped"}
    if cand["class"] == "door_knock":
        return {"verdict": "reprocess", "criteria": crit, "reason": "leading silence"}
    return {"verdict": "accept", "criteria": crit, "reason": "fits"}


class ChatServer:
    """OpenAI chat-completions on 127.0.0.1. `bad[role]` = how many malformed replies to send first."""

    def __init__(self):
        self.requests: list[dict] = []
        self.bad: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                system = body["messages"][0]["content"]
                user = json.loads(body["messages"][1]["content"])
                role = system.splitlines()[0].removeprefix("ROLE: ").split(" for ")[0]
                if role == "slow responder":
                    time.sleep(3.0)
                if server.bad.get(role, 0) != 0:
                    server.bad[role] -= 1
                    content = '{"title": "oops", "events": [' if role != "event refiner" else '{"events": []}'
                elif role == "scenario planner":
                    content = json.dumps(PLAN)
                elif role == "event refiner":
                    content = json.dumps(REFINE)
                elif role == "clip verifier":
                    content = json.dumps(verdict_for(user))
                else:
                    content = "?"
                out = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                data = json.dumps(out).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def roles(self) -> list[str]:
        return [r["messages"][0]["content"].splitlines()[0] for r in self.requests]


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    s = ChatServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def client_for(server, **kw):
    return LLMClient(base_url=server.url, model="test-model", api_key="k", timeout=10, http_retries=0, **kw)


# --------------------------------------------------------------------------- LLM loop


def test_llm_full_loop_plan_refine_ground_verify_generate(server, catalog):
    curator = LLMCurator(client_for(server))
    events, prov = curate_stream(catalog, np.random.default_rng(0), curator, ToneGenerator(), max_seconds=24.0)
    assert prov["planner"] == "llm:test-model" and all(isinstance(e, Event) for e in events)
    assert prov["scenario"]["title"] == "kitchen accident"
    assert len(prov["plan"]) == 7 and prov["plan"][0]["query"] == "glass break"
    by = {e.provenance["sub_event"]: e for e in events}

    # glass: the clipped clip ranks first and is rejected, the next one is accepted
    glass = by[0].provenance
    assert glass["tried"][0]["clip_id"] == "glass-clipped" and glass["tried"][0]["verdict"] == "reject"
    assert glass["verdict"] == "accept" and glass["clip_id"].startswith("glass-") and glass["clip_id"] != "glass-clipped"
    assert glass["class"] == "glass_break" and glass["decision"] == "RESPOND" and glass["license"] == "CC0-1.0"
    assert by[0].response == default_reply("glass_break", "smashed window")

    # knock: reprocessed through TFJP (leading silence cut), then used
    knock = by[1].provenance
    assert knock["verdict"] == "reprocess" and knock["reprocessed"] is True
    assert len(by[1].waveform) < 2.5 * SR and knock["tried"][-1]["reprocessed_s"] < 2.5
    assert by[1].response and "door" in by[1].response.lower()

    # typing: IGNORE foreground, no reply
    assert by[2].provenance["decision"] == "IGNORE" and by[2].response is None

    # oven timer: every retrieved candidate rejected -> synthesised by the tone generator
    timer = by[3].provenance
    assert [t["verdict"] for t in timer["tried"]] == ["reject", "reject", "reject", "accept"]
    assert timer["tried"][-1]["origin"] == "generated" and timer["synthetic"] is True
    assert timer["generator"] == "tone-v1" and timer["decision"] == "RESPOND" and by[3].response

    # trumpet: rejected everywhere, the generator cannot make it -> dropped, not silently faked
    assert 4 not in by
    (drop,) = prov["dropped"]
    assert drop["sub_event"] == 4 and drop["tried"][-1]["origin"] == "generated"
    assert "cannot" in drop["tried"][-1]["reason"]

    # background / ambient: mixed in, never replied to
    assert by[5].role == "background" and by[6].role == "ambient"
    assert by[5].response is None and by[6].response is None

    # the protocol: one plan, one refinement, one verification per candidate; JSON mode at T = 0.7
    roles = server.roles()
    assert roles[0].startswith("ROLE: scenario planner") and roles[1].startswith("ROLE: event refiner")
    n_tried = sum(len(r["tried"]) for r in prov["events"] + prov["dropped"])
    n_gen_refused = 1  # the trumpet never reached the verifier
    assert roles[2:].count(roles[2]) == len(roles) - 2 == n_tried - n_gen_refused
    assert all(r["temperature"] == 0.7 and r["response_format"] == {"type": "json_object"} for r in server.requests)
    assert all(r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer k" for r in server.requests)
    plan_user = json.loads(server.requests[0]["messages"][1]["content"])
    assert len(plan_user["annotations"]) == 8 and plan_user["min_events"] == 3 and plan_user["max_events"] == 15

    # ready for compose: replies on the timeline for the RESPOND foreground events only
    fg_s = sum(len(e.waveform) for e in events if e.role == "foreground") / SR
    assert fg_s <= 24.0 and prov["foreground_seconds"] == pytest.approx(fg_s, abs=1e-3)
    y, timeline, info = compose(events, None, None, np.random.default_rng(1))
    assert len(timeline) == 3 and {t["text"] for t in timeline} == {by[i].response for i in (0, 1, 3)}


def test_malformed_json_is_retried(server, catalog):
    server.bad["scenario planner"] = 1
    client = client_for(server)
    curator = LLMCurator(client)
    sc = curator.plan(catalog.sample(np.random.default_rng(0), 8), catalog, np.random.default_rng(0), 24.0)
    assert len(sc.events) == 7 and client.calls == 2
    # the retry shows the model its bad reply and the error
    retry = server.requests[1]["messages"]
    assert retry[2]["role"] == "assistant" and "invalid" in retry[3]["content"]


def test_malformed_json_every_time_is_a_clear_error(server, catalog):
    server.bad["scenario planner"] = -1  # forever
    client = client_for(server, retries=2)
    with pytest.raises(LLMError, match=r"no valid JSON after 3 attempts.*scenario planner.*not JSON"):
        LLMCurator(client).plan(catalog.rows[:8], catalog, np.random.default_rng(0), 24.0)
    assert client.calls == 3


def test_schema_violations_are_retried_then_reported(server, catalog):
    server.bad["event refiner"] = -1  # valid JSON, but no entry per sub-event
    curator = LLMCurator(client_for(server, retries=1))
    sc = curator.plan(catalog.rows[:8], catalog, np.random.default_rng(0), 24.0)
    with pytest.raises(LLMError, match="one entry per sub-event"):
        curator.refine(sc, catalog, np.random.default_rng(0))


def test_timeouts_and_dead_endpoints_raise_llm_error(server):
    client = LLMClient(base_url="http://127.0.0.1:9/v1", model="m", timeout=1, http_retries=0)
    with pytest.raises(LLMError, match="127.0.0.1:9"):
        client.chat_json("ROLE: x", "{}")
    slow = LLMClient(base_url=server.url, model="m", timeout=0.3, http_retries=0)
    t = time.perf_counter()
    with pytest.raises(LLMError, match="no reply within 0.3 s"):
        slow.chat_json("ROLE: slow responder", "{}")
    assert time.perf_counter() - t < 2.5


def test_client_reads_env_and_default_curator_uses_it(server, monkeypatch):
    monkeypatch.delenv("SOUNDFLOW_LLM_BASE_URL", raising=False)
    assert LLMClient.from_env() is None and isinstance(default_curator(), OfflineCurator)
    with pytest.raises(LLMError, match="SOUNDFLOW_LLM_BASE_URL"):
        LLMClient()
    monkeypatch.setenv("SOUNDFLOW_LLM_BASE_URL", server.url)
    monkeypatch.setenv("SOUNDFLOW_LLM_MODEL", "env-model")
    monkeypatch.delenv("SOUNDFLOW_LLM_API_KEY", raising=False)
    cur = default_curator()
    assert isinstance(cur, LLMCurator) and cur.planner == "llm:env-model"
    assert cur.client.api_key == "EMPTY" and cur.client.temperature == 0.7
    assert cur.client.chat_json("ROLE: event refiner for tests", {"events": []}) == REFINE


def test_parse_json_object_accepts_fences_and_rejects_the_rest():
    assert parse_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    for bad in ("[1]", "{", "", None):
        with pytest.raises(ValueError):
            parse_json_object(bad)


# --------------------------------------------------------------------------- offline curator


def _template(planner: str):
    return next(t for t in TEMPLATES if planner == f"offline-template:{t.name}")


def _check_coherent(events, prov, catalog, max_seconds):
    t = _template(prov["planner"])
    assert 3 <= len(prov["plan"]) <= 15
    synth = {cap for cap, _ in t.synthetic}
    for e in events:
        p = e.provenance
        if p["origin"] == "retrieved":
            row = catalog.by_id(p["clip_id"])
            assert matches(row, {"foreground": t.foreground, "background": t.background, "ambient": t.ambient}[e.role]), (t.name, p)
        else:  # a generator-only event the template lists
            assert p["synthetic"] is True and p["description"] in synth
        assert len(e.waveform) <= max_seconds * SR
        if e.role == "foreground" and p["decision"] == "RESPOND":
            assert e.response
        else:
            assert e.response is None
    fg = sum(len(e.waveform) for e in events if e.role == "foreground") / SR
    assert 0 < fg <= max_seconds
    assert len({e.provenance.get("clip_id") for e in events if e.provenance.get("clip_id")}) == \
        sum(1 for e in events if e.provenance.get("clip_id"))  # no clip twice


def test_offline_curator_builds_coherent_scenarios(catalog):
    cur = OfflineCurator()
    names = set()
    for seed in range(8):
        events, prov = curate_stream(catalog, np.random.default_rng(seed), cur, max_seconds=12.0)
        assert prov["planner"].startswith("offline-template:")
        names.add(prov["planner"])
        _check_coherent(events, prov, catalog, 12.0)
    assert len(names) >= 2  # the bag steers the template


def test_offline_curation_is_deterministic_for_a_seed(catalog):
    a = curate_stream(catalog, np.random.default_rng(3), OfflineCurator(), max_seconds=10.0)
    b = curate_stream(catalog, np.random.default_rng(3), OfflineCurator(), max_seconds=10.0)
    assert [e.provenance.get("clip_id") for e in a[0]] == [e.provenance.get("clip_id") for e in b[0]]
    assert all(np.array_equal(x.waveform, y.waveform) for x, y in zip(a[0], b[0]))


@pytest.mark.skipif(not EVENTS.is_file(), reason="shared event catalog absent")
def test_offline_curator_on_the_real_catalog(tmp_path):
    cat = Catalog.load(EVENTS, embedder=HashEmbedder(), cache_dir=tmp_path)
    cur = OfflineCurator(p_synthetic=0.5)
    seen_synth = False
    for seed in range(10):
        events, prov = curate_stream(cat, np.random.default_rng(seed), cur, max_seconds=24.0)
        _check_coherent(events, prov, cat, 24.0)
        assert any(e.response for e in events) or not any(
            e.provenance["decision"] == "RESPOND" and e.role == "foreground" for e in events)
        seen_synth |= any(e.provenance.get("synthetic") for e in events)
        y, timeline, _ = compose(events, None, None, np.random.default_rng(seed))
        assert len(timeline) == sum(1 for e in events if e.response)
    assert seen_synth


def test_offline_generation_fallback_when_the_catalog_lacks_the_event(catalog):
    sub = SubEvent("smoke alarm going off", "foreground", query="smoke alarm",
                   fallback_caption="smoke alarm beeping", duration=4.0, respond=True)

    class OneEvent(OfflineCurator):
        def plan(self, bag, catalog, rng, max_seconds):
            return Scenario("t", "s", [sub], planner="test", bag=[])

    events, prov = curate_stream(catalog, np.random.default_rng(0), OneEvent(), max_seconds=8.0)
    (e,) = events
    assert e.provenance["synthetic"] is True and e.provenance["class"] == "smoke_alarm"
    assert [t["verdict"] for t in e.provenance["tried"][:3]] == ["reject"] * 3  # no smoke alarm in the catalog
    assert e.response == default_reply("smoke_alarm", "")


# --------------------------------------------------------------------------- verifier + generator


def _ctx(catalog, remaining=10.0, groups=()):
    return GroundingContext(catalog, Scenario("t", "s", [], "test"), 24.0, remaining, used_groups=set(groups))


def test_acoustic_verifier_criteria(catalog):
    v = AcousticVerifier()
    rng = np.random.default_rng(0)
    sub = SubEvent("glass", cls="glass_break", query="glass break", duration=3.0)
    row = catalog.by_id("glass-0")

    def cand(w, cls="glass_break", r=row):
        return Candidate(w, "glass break", cls=cls, row=r, stats=measure(w))

    clean = _noise_burst(1.5, rng)
    assert v.verify(sub, cand(clean), _ctx(catalog)).verdict == "accept"
    out = v.verify(sub, cand(clean, cls="dog_bark"), _ctx(catalog))
    assert out.verdict == "reject" and out.criteria["identity"] is False
    clipped = np.clip(_noise_burst(1.5, rng, amp=3.0), -1, 1)
    out = v.verify(sub, cand(clipped), _ctx(catalog))
    assert out.verdict == "reject" and out.criteria["cleanliness"] is False
    silent_mostly = np.concatenate([np.zeros(2 * SR, np.float32), _noise_burst(0.5, rng)])
    out = v.verify(sub, cand(silent_mostly), _ctx(catalog))
    assert out.verdict == "reprocess" and all(out.criteria.values())
    long_clip = (0.1 * rng.standard_normal(8 * SR)).astype(np.float32)
    out = v.verify(sub, cand(long_clip), _ctx(catalog))
    assert out.verdict == "reject" and out.criteria["duration_fit"] is False
    assert v.verify(sub, cand(clean), _ctx(catalog, remaining=1.0)).criteria["duration_fit"] is False
    out = v.verify(sub, cand(clean), _ctx(catalog, groups={row.group}))
    assert out.verdict == "reject" and out.criteria["continuity"] is False
    abrupt = (0.1 * rng.standard_normal(SR)).astype(np.float32)  # starts and ends mid-sound
    assert v.verify(sub, cand(abrupt), _ctx(catalog)).verdict == "reprocess"


def test_tone_generator_makes_tonal_events_and_refuses_others():
    g, rng = ToneGenerator(), np.random.default_rng(0)
    x = g.generate("a smoke alarm beeping", 4.0, rng)
    assert x is not None and x.dtype == np.float32 and 1.0 <= len(x) / SR <= 4.0 and np.abs(x).max() < 1
    spec = np.abs(np.fft.rfft(x))
    assert 2900 < np.argmax(spec) * SR / len(x) < 3300  # the T3 alarm tone
    for cap, kind in [("phone ringing", "phone_ring"), ("doorbell ding dong", "doorbell"),
                      ("oven timer beeping", "beep"), ("alarm clock", "alarm_clock"), ("police siren", "siren")]:
        assert g.kind(cap) == kind and g.generate(cap, 3.0, rng) is not None
    assert g.generate("glass shattering", 3.0, rng) is None and g.kind("a dog barking") is None


def test_replies_per_class_and_category():
    assert "glass" in default_reply("glass_break", "glass break")
    assert default_reply("unknown", "x", "Traffic/Vehicle").startswith("Watch out")
    assert "whirring" in default_reply("unknown", "whirring", "")
