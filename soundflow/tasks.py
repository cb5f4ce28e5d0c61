"""Task recipes for the seven capability families of StreamAudio-2M, plus the Stage-4 mix-ins.

Every recipe is a function (rng, resources) -> `StreamSample` (waveform in `wave`, timeline,
instruction, per-event provenance), at most `resources.max_chunks` chunks (60 x 400 ms = 24 s,
paper L_max). Paper Appendix "Dataset Curation Pipeline": "tasks differ only in which positions
of T carry a non-empty response"; all of them go through `compose.compose` (foreground concat
with fades, two noise tracks at SNR ~ U(5, 20) dB).

| family        | audio                                        | replies at                               |
|---------------|----------------------------------------------|------------------------------------------|
| asr           | FSDD digits, Asterisk prompts (real speech)  | the end of every word group / recording  |
|               | or TTS word groups of dictation sentences    |                                          |
| translation   | TTS source sentences (parallel manifest)     | each sentence end: its translation       |
| chat          | TTS user turns (template exchanges)          | each user-turn end: the reply            |
| understanding | catalog event clips (+ a spoken question)    | after the question / each event          |
| music         | music excerpts                               | when the music stops / after a question  |
| proactive     | catalog events (curate_stream or direct)     | RESPOND events only, IGNORE stay silent  |
| agent         | catalog events + spoken commands             | a JSON tool call when one is called for  |

Spoken instructions (the paper's A^ins, its "audio instruction" setting): with P = recipe key
`instruction_audio` (`Resources.instruction_audio`, default 0), an instructed stream's
instruction is rendered by the stream's own TTS speaker — through the ASR gate like any other
speech (a rendering that keeps failing drops the instance) — and carried as audio heard before
the stream (`StreamSample.instruction_wave`, text `instruction` empty) instead of as text. Only
instructions a user would say qualify (`speakable`: at most 24 words, no markup — the agent
family's tool list stays text); without TTS there is nothing to speak them with.

Stage-4 mix-ins (Bernoulli, paper hyper-parameter table): history review p = 0.3 (a spoken
question answerable only from a turn >= 3 turns back; needs TTS), silence p = 0.4 (a stretch of
IGNORE clips or bare noise with no reply), proactive p = 0.3 (a RESPOND event and its reply
inserted into another task's stream).

`Dropped` (from the ASR gate) propagates out of a recipe: the builder discards the instance.
Each recipe exists twice: `steps_<family>` (in `TASK_STEPS`) is a generator that yields the ASR
gate's requests (`asr_gate.GateRequest`) and receives the verdicts, so the builder can gate the units
of many instances together in full 30 s Whisper windows; `task_<family>` (in `TASKS`) drives it,
gating each request at once. Given the same verdicts both give the same sample.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import tts
from .asr_gate import AsrGate, run_steps
from .audio import SAMPLE_RATE, load_audio
from .compose import Event, compose, crop
from .data import StreamSample, read_jsonl
from .replies import proactive_reply
from .textnorm import number_to_words

RECIPES_DIR = Path(__file__).parent / "recipes"
FAMILIES = ("asr", "translation", "chat", "understanding", "music", "proactive", "agent")
MIXIN_P = {"history": 0.3, "silence": 0.4, "proactive": 0.3}  # paper: p_hr, p_sil, p_pro
MAX_EVENT_S = 6.0
# Every stream ends with this much ambient audio after its last event. Without it 57 % of streams
# ended on their last reply's chunk, often zero-padded, and the model learnt "the audio stops ->
# <response>" instead of the sound: it replied at the end of any file and stayed silent on bench
# streams, which always have an ambient tail (measured 2026-12-01, BENCHMARKS.md).
STREAM_TAIL_S = (0.8, 2.4)
# Streams composed without a noise bed: the model met digital silence only in inference (lone
# FSDD digits padded with zeros were answered with event replies, 2026-12-01).
CLEAN_P = 0.1
TFJP_TYPES = ("clip", "synthetic", "music")  # provenance types TFJP re-applies to at composition
ASR_GROUP_GAP_S = 0.05  # silence between word groups of one sentence (real-time ASR family)
ASR_PAUSE_S = (0.1, 1.5)  # before each recorded word (digits, prompts): quick runs and lone words
# The ASR instruction in several wordings, `listen`'s and `bench asr`'s default among them: one
# fixed string taught the model that exact sentence, not the request.
ASR_INSTRUCTIONS = ("Transcribe the speech as you hear it.", "Transcribe what you hear.",
                    "Write down everything that is said.", "Transcribe.", "Please transcribe the audio as it comes in.")
LANGS = {"fr": "French", "es": "Spanish"}
MAX_SPOKEN_INSTRUCTION_WORDS = 24  # about 8 s of speech: a spoken instruction, not a system prompt
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
HISTORY_QUESTION = "Going back a bit, what was the {} thing in this conversation?"  # {}: an ordinal
WHAT_WAS_THAT = ("What sound did you just hear?", "What was that sound?", "What was that?")
HOW_MANY_SOUNDS = "How many different sounds have you heard so far?"
MUSIC_QUESTIONS = ("What kind of music is this?", "What's playing right now?", "Can you describe this music?")
# The instruction each family's streams carry (ASR: one of ASR_INSTRUCTIONS; translation: filled
# with a language of LANGS). Spoken ones (`instruction_audio`) are those `speakable` accepts.
INSTRUCTIONS = {
    "translation": "Interpret what you hear into {}, sentence by sentence.",
    "chat": "You are a helpful voice assistant. Answer the user each time they finish speaking.",
    "understanding": "Listen to the sounds around you and answer my questions about them.",
    "understanding_silent": "After each sound, say briefly what it was.",
    "music_stop": "Tell me when the music stops.",
    "music_describe": "Listen along and answer questions about the music.",
    "proactive": "Let me know if anything needs my attention.",
}

# ----------------------------------------------------------------------------- reply texts

TOOL_CALLS = {  # class -> tool call for the audio-agent family
    "smoke_alarm": {"tool": "call_emergency", "reason": "smoke alarm"},
    "glass_break": {"tool": "security_alert", "reason": "glass breaking"},
    "baby_cry": {"tool": "notify_caregiver", "reason": "baby crying"},
    "door_knock": {"tool": "notify_user", "reason": "someone is knocking at the door"},
    "phone_ring": {"tool": "answer_phone"},
    "alarm_clock": {"tool": "stop_alarm"},
    "siren": {"tool": "notify_user", "reason": "siren nearby"},
    "cough_multiple": {"tool": "notify_caregiver", "reason": "persistent coughing"},
}
SPOKEN_COMMANDS = [  # (what the user says, the tool call)
    ("Set a timer for five minutes.", {"tool": "set_timer", "minutes": 5}),
    ("Set a timer for ten minutes, please.", {"tool": "set_timer", "minutes": 10}),
    ("Turn on the kitchen lights.", {"tool": "smart_home", "device": "kitchen lights", "action": "on"}),
    ("Turn off the bedroom lights.", {"tool": "smart_home", "device": "bedroom lights", "action": "off"}),
    ("Call my mother.", {"tool": "call_contact", "name": "mother"}),
    ("Add eggs to my shopping list.", {"tool": "add_to_list", "list": "shopping", "item": "eggs"}),
    ("What's the weather like tomorrow?", {"tool": "get_weather", "day": "tomorrow"}),
    ("Play some relaxing music.", {"tool": "play_music", "query": "relaxing"}),
    ("Lock the front door.", {"tool": "smart_home", "device": "front door", "action": "lock"}),
]

MUSIC_NOTES = RECIPES_DIR / "music_notes.jsonl"


@dataclass(frozen=True)
class MusicNotes:
    """What we know of the music manifest's files beyond the manifest, by file id.

    descriptions: what the music family says is playing (written from the manifest's titles and
    credits only: nothing claimed beyond them); not_music: files in the music folder that are not
    music (row `"music": false`, with a `why`)."""

    descriptions: dict
    not_music: frozenset


@functools.lru_cache(maxsize=4)
def music_notes(path: str | Path = MUSIC_NOTES) -> MusicNotes:
    """The corpus facts of `recipes/music_notes.jsonl` (one row per file id)."""
    rows = read_jsonl(path)
    return MusicNotes({r["id"]: r["description"] for r in rows if r.get("description")},
                      frozenset(r["id"] for r in rows if r.get("music") is False))


def _article(caption: str) -> str:
    c = caption.strip()
    if re.match(r"^(multiple|people|light|waves|keys|tick)\b", c) or c.endswith("ing"):
        return c
    return ("an " if c[:1].lower() in "aeiou" else "a ") + c


# ----------------------------------------------------------------------------- resources


@functools.lru_cache(maxsize=160)
def _load(path: str) -> np.ndarray:
    return load_audio(path)


def expand_path(value: str, base: Path) -> Path:
    """`${VAR:-default}` / `$VAR` expansion, then relative to `base` (the recipe's folder)."""

    def sub(m: re.Match) -> str:
        name, default = m.group(1) or m.group(3), m.group(2)
        return os.environ.get(name) or (default if default is not None else "")

    s = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", sub, str(value))
    p = Path(s).expanduser()
    return p if p.is_absolute() else (base / p)


ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en")  # Debian asterisk-core-sounds-en-wav
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")  # asterisk-core-sounds-en
ASTERISK_APT = "apt-get install -y asterisk-core-sounds-en-wav asterisk-core-sounds-en"
PROMPT_MAX_S = 8.0


@functools.lru_cache(maxsize=2)
def asterisk_prompts(sounds: str = str(ASTERISK_SOUNDS), text: str = str(ASTERISK_TEXT)) -> tuple:
    """Real recorded speech for the ASR family: the Asterisk core prompts (one professional
    speaker, 8 kHz, CC-BY-SA-3.0) with their transcripts, as `speech` rows; prompts without
    words ("[beep]") or longer than PROMPT_MAX_S are left out. () when not installed."""
    import gzip

    import soundfile as sf

    root, txt = Path(sounds), Path(text)
    if not root.is_dir() or not txt.is_file():
        return ()
    rows = []
    for line in gzip.open(txt, "rt", encoding="utf-8", errors="replace"):
        key, sep, said = line.partition(":")
        said = said.strip()
        if not sep or line.startswith(";") or not said or "[" in said:
            continue
        wav = root / f"{key.strip()}.wav"
        if wav.is_file() and sf.info(str(wav)).duration <= PROMPT_MAX_S:
            rows.append({"id": f"asterisk-{key.strip()}", "path": str(wav), "text": said, "speaker": "asterisk-allison",
                         "kind": "prompt", "license": "CC-BY-SA-3.0"})
    return tuple(rows)


def read_sentences(path: str | Path) -> list[str]:
    """One sentence a line; blank lines and `#` comment lines (source, licence) skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


@dataclass
class Resources:
    """Everything a recipe draws from; cheap to build (manifests only, audio loads on demand)."""

    events: list[dict] = field(default_factory=list)  # catalog rows, "path" resolved
    noise: list[dict] = field(default_factory=list)
    music: list[dict] = field(default_factory=list)
    speech: list[dict] = field(default_factory=list)  # {"path", "text", "speaker"}
    parallel: list[dict] = field(default_factory=list)  # {"src", "tgt": {lang: text}}
    chats: list[dict] = field(default_factory=list)  # {"user", "reply"}
    catalog_path: Path | None = None
    tts_families: tuple[str, ...] = ("piper",)
    tts_weights: tuple[float, ...] | None = None
    tts_holdout: tuple[str, ...] = ()  # voice ids ("kokoro:af_heart") heard only when split == "dev"
    augment: object | None = None  # `augment.Augment`: per-speaker effects on the speech; None: dry
    event_augment: object | None = None  # `augment.Augment`: per-clip effects on event clips; None: as recorded
    reply_after_s: tuple[float, float] | None = None  # RESPOND replies after U(a, b) s of the sound; None: at its end
    sentences: list[str] = field(default_factory=list)  # dictation text (asr family)
    gate: AsrGate | None = None  # None: renderings are not checked
    bank: object | None = None  # `speechbank.SpeechBank`: speech rendered and gated ahead (recipe tts.bank)
    mixins: dict = field(default_factory=lambda: dict(MIXIN_P))
    max_chunks: int = 60
    chunk_ms: int = 400
    use_tfjp: bool = True
    use_curate: bool = False
    curate_embedder: str = "minilm"  # catalog retrieval for curation: "minilm" or "hash"
    asr_gate_unit: str = "sentence"  # real-time ASR: gate whole sentences ("group": each word group, slow)
    instruction_dropout: float = 0.5  # P(no instruction) where the replies need none (always-on use)
    instruction_audio: float = 0.0  # P(an instructed stream's instruction is spoken, before the stream)
    curator: str = "offline"  # proactive curation: "offline" (templates) or "llm" (SOUNDFLOW_LLM_BASE_URL)
    split: str | None = "train"  # catalog side by recording group; the bench holds out "dev"

    @property
    def max_seconds(self) -> float:
        return self.max_chunks * self.chunk_ms / 1000

    @classmethod
    def from_config(cls, sources: dict, base: str | Path = ".", **kw) -> "Resources":
        """sources: {"events", "noise", "music", "speech", "parallel", "chats"} manifest paths
        (each optional; `parallel`/`chats` default to the samples shipped in soundflow/recipes)."""
        base = Path(base)

        def rows(key, default=None):
            v = sources.get(key, default)
            if not v:
                return [], None
            p = expand_path(v, base)
            out = read_jsonl(p)
            for r in out:
                if "audio" in r:
                    r["path"] = str((p.parent / r["audio"]).resolve())
            return out, p

        events, cat = rows("events")
        if events:
            from .catalog import held_out_ids

            out = held_out_ids(cat, kw.get("split", cls.split))
            events = [r for r in events if r["id"] not in out]
        noise, _ = rows("noise")
        if noise:  # `bench ambient` plays the other half (catalog.NOISE_DEV_FRACTION)
            from .catalog import noise_rows_of

            noise = noise_rows_of(noise, kw.get("split", cls.split))
        music, _ = rows("music")
        speech, _ = rows("speech")
        if sources.get("prompts", "asterisk" if speech else "") == "asterisk":  # real prompts beside FSDD
            prompts = asterisk_prompts()
            if not prompts:
                print(f"soundflow: Asterisk prompts not installed ({ASTERISK_APT}); the asr family uses the "
                      "speech manifest only", file=sys.stderr)
            speech = speech + [dict(r) for r in prompts]
        parallel, _ = rows("parallel", str(RECIPES_DIR / "parallel_en_fr_es.jsonl"))
        chats, _ = rows("chats", str(RECIPES_DIR / "chat_en.jsonl"))
        sents = sources.get("sentences", str(RECIPES_DIR / "sentences_en.txt"))
        kw.setdefault("sentences", read_sentences(expand_path(sents, base)) if sents else [])
        music = [m for m in music if m["id"] not in music_notes().not_music]
        missing = [f for f in kw.get("tts_families", ()) if f in tts.FAMILIES and f not in tts.available_families()]
        if missing:  # the build goes on with the other families, saying so
            from .kokoro import SETUP_COMMAND

            how = {"kokoro": f"`{SETUP_COMMAND}`", "espeak": "apt-get install -y espeak-ng", "piper": "pip install -e ."}
            print("soundflow: TTS families not installed, skipped: " + ", ".join(f"{f} ({how[f]})" for f in missing),
                  file=sys.stderr)
        return cls(events=events, noise=noise, music=music, speech=speech, parallel=parallel, chats=chats,
                   catalog_path=cat, **kw)

    def audio(self, row: dict) -> np.ndarray:
        return _load(row["path"])

    def speaker(self, rng: np.random.Generator) -> tts.Speaker | None:
        """A speaker with a voice drawn once for this dialogue, or None when TTS is off."""
        if not self.tts_families:
            return None
        allow = None
        if self.tts_holdout:  # never the same voice on both sides of the split
            held = set(self.tts_holdout)
            allow = held.__contains__ if self.split == "dev" else (lambda v: v not in held)
        if self.bank is not None:  # a voice the bank speaks with
            banked, side = set(self.bank.voices()), allow
            allow = banked.__contains__ if side is None else (lambda v: v in banked and side(v))
        voice = tts.draw_voice(rng, self.tts_families, self.tts_weights, allow=allow)
        effects = self.augment.draw(rng) if self.augment is not None else None
        return tts.Speaker(voice, rng, self.gate, effects=effects, bank=self.bank)

    def by_decision(self, decision: str) -> list[dict]:
        return [r for r in self.events if r.get("decision") == decision]


# ----------------------------------------------------------------------------- building blocks


@dataclass
class Turn:
    """Consecutive events forming one turn; `memo` says what it was (for history-review questions)."""

    events: list[Event]
    memo: str | None = None

    @property
    def seconds(self) -> float:
        return sum(len(e.waveform) for e in self.events if e.role == "foreground") / SAMPLE_RATE


def _silence(seconds: float, response: str | None = None, **prov) -> Event:
    return Event(np.zeros(int(round(seconds * SAMPLE_RATE)), np.float32), response=response,
                 provenance={"type": "pause", "seconds": round(seconds, 3), **prov})


@functools.lru_cache(maxsize=160)
def _load_tfjp(path: str) -> np.ndarray:
    """A clip after TFJP (deterministic), once per process: clips recur across instances. Shared:
    callers crop and copy, never write into it."""
    from .tfjp import tfjp

    return tfjp(_load(path))


def _event_clip(row: dict, res: Resources, rng: np.random.Generator, max_s: float = MAX_EVENT_S) -> tuple[np.ndarray, dict]:
    """A random excerpt of a catalog clip, with the recipe's `event_augment` effects drawn for it;
    returns (clip, provenance extras)."""
    x = _load_tfjp(row["path"]) if res.use_tfjp else res.audio(row)
    x = crop(x, float(rng.uniform(min(2.0, max_s), max_s)), rng).astype(np.float32)
    if res.event_augment is None:
        return x, {}
    fx = res.event_augment.draw(rng)
    return fx.apply(x), {"augment": fx.to_json()}


def _reply_after(res: Resources, rng: np.random.Generator) -> float | None:
    """d_i of a RESPOND event (Alg. 3): None, the reply follows the whole clip; with the recipe's
    `reply_after_s`, it follows this many seconds of the sound (or the clip, if shorter)."""
    return None if res.reply_after_s is None else float(rng.uniform(*res.reply_after_s))


def _event_prov(row: dict, **extra) -> dict:
    return {"type": "clip", "id": row["id"], "class": row.get("class", ""), "caption": row.get("caption", ""),
            "decision": row.get("decision"), "license": row.get("license", ""), **extra}


def _pick(rows: list, rng: np.random.Generator):
    if not rows:
        raise ValueError("recipe needs a source that is empty or not configured")
    return rows[int(rng.integers(len(rows)))]


def _say(speaker: tts.Speaker, texts: list[str], turns_prov: dict | None = None, units: list[int] | None = None,
         join_gap_s: float = 0.0):
    """Generator (use `yield from`): render and gate `texts`, yielding the gate's requests;
    returns (waves, spoken texts, provenance per text)."""
    waves, spoken, info = yield from speaker.say_steps(texts, units=units, join_gap_s=join_gap_s)
    return waves, spoken, [{"type": "tts", "text": t, **i, **(turns_prov or {})} for t, i in zip(texts, info)]


@dataclass
class Mix:
    history: bool = False
    silence: bool = False
    proactive: bool = False

    @property
    def reserve(self) -> float:  # seconds kept free for the mix-ins
        return 4.0 * self.history + 5.0 * self.silence + 5.0 * self.proactive


def draw_mix(rng: np.random.Generator, res: Resources, task: str) -> Mix:
    """Stage-4 Bernoulli draws (always drawn, so the rng advances the same way for every task)."""
    u = rng.random(3)
    p = res.mixins
    return Mix(history=bool(u[0] < p.get("history", 0)) and bool(res.tts_families),
               silence=bool(u[1] < p.get("silence", 0)),
               proactive=bool(u[2] < p.get("proactive", 0)) and task not in ("proactive",) and bool(res.by_decision("RESPOND")))


def _apply_mixins(turns: list[Turn], mix: Mix, rng: np.random.Generator, res: Resources,
                  speaker: tts.Speaker | None, budget: float, task: str = ""):
    """Generator (`yield from`): returns (turns, applied mix-in names)."""
    applied = []
    used = sum(t.seconds for t in turns)
    if mix.proactive and used + 2.0 <= budget:
        # In an agent stream the inserted event is answered the agent's way: with its tool call.
        pool = [r for r in res.events if r.get("class") in TOOL_CALLS] if task == "agent" else res.by_decision("RESPOND")
        row = _pick(pool, rng)
        clip, fx = _event_clip(row, res, rng, min(4.0, budget - used))
        reply = json.dumps(TOOL_CALLS[row["class"]]) if task == "agent" else \
            proactive_reply(row.get("class", ""), row.get("caption", ""), row.get("category", ""))
        ev = Event(clip, response=reply, duration=_reply_after(res, rng), reply_from=0.0,
                   provenance=_event_prov(row, mixin="proactive", **fx))
        gap = float(rng.uniform(0.4, 1.0))
        turns.insert(int(rng.integers(0, len(turns) + 1)), Turn([_silence(gap), ev], _article(row.get("caption", "a sound"))))
        used += len(clip) / SAMPLE_RATE + gap
        applied.append("proactive")
    if mix.silence and used + 1.5 <= budget:
        seconds = float(rng.uniform(1.5, min(5.0, budget - used)))
        ignore = res.by_decision("IGNORE")
        if ignore and rng.random() < 0.5:
            row = _pick(ignore, rng)
            clip, fx = _event_clip(row, res, rng, seconds)
            ev = Event(clip, provenance=_event_prov(row, mixin="silence", **fx))
        else:
            ev = _silence(seconds, mixin="silence")  # bare noise tracks
        turns.insert(int(rng.integers(1, len(turns) + 1)) if turns else 0, Turn([ev]))
        used += len(ev.waveform) / SAMPLE_RATE
        applied.append("silence")
    memos = [i for i, t in enumerate(turns) if t.memo]
    if mix.history and speaker is not None and len(memos) >= 3:
        k = int(rng.integers(0, len(memos) - 2))  # >= 3 memo'd turns back from the question
        q = HISTORY_QUESTION.format(ORDINALS[min(k, 7)])
        waves, spoken, prov = yield from _say(speaker, [q])
        if used + len(waves[0]) / SAMPLE_RATE + 0.4 <= budget:
            answer = f"The {ORDINALS[min(k, 7)]} thing was {turns[memos[k]].memo}."
            prov[0].update(mixin="history", asks_turn=memos[k], turns_back=len(memos) - k)
            turns.append(Turn([_silence(0.4), Event(waves[0], response=answer, provenance=prov[0])]))
            applied.append("history")
    return turns, applied


def speakable(instruction: str) -> bool:
    """An instruction a user would say aloud: plain words and punctuation, at most
    MAX_SPOKEN_INSTRUCTION_WORDS words (JSON, brackets, tool lists stay text)."""
    words = instruction.split()
    return 0 < len(words) <= MAX_SPOKEN_INSTRUCTION_WORDS and re.fullmatch(r"[\w\s.,;:'!?\-]+", instruction) is not None


def _speak_instruction(instruction: str, rng: np.random.Generator, res: Resources, speaker: tts.Speaker | None):
    """Generator (`yield from`): (waveform, provenance) of the spoken instruction, or (None, None)
    when this stream keeps it as text. Draws from `rng` only when `res.instruction_audio` > 0
    (recipes without the key build the same corpus as before)."""
    if res.instruction_audio <= 0 or speaker is None or not speakable(instruction):
        return None, None
    if not rng.random() < res.instruction_audio:
        return None, None
    waves, spoken, prov = yield from _say(speaker, [instruction])
    wave = waves[0].astype(np.float32)
    return wave, {**prov[0], "type": "instruction_audio", "seconds": round(len(wave) / SAMPLE_RATE, 3)}


def _noise_tracks(rng: np.random.Generator, res: Resources) -> tuple[np.ndarray | None, np.ndarray | None, list[dict]]:
    ev = [r for r in res.noise if r.get("kind") != "ambient"]
    amb = [r for r in res.noise if r.get("kind") == "ambient"] or ev
    out, prov = [], []
    for pool in (ev, amb):
        if not pool:
            out.append(None)
            continue
        row = _pick(pool, rng)
        out.append(res.audio(row))
        prov.append({"type": "noise", "id": row["id"], "kind": row.get("kind", "")})
    return out[0], out[1], prov


def finish(task: str, turns: list[Turn], instruction: str, rng: np.random.Generator, res: Resources,
           mix: Mix, speaker: tts.Speaker | None, extra: dict | None = None, optional_instruction: bool = False):
    """Generator (`yield from`): mix-ins, compose with two noise tracks, enforce L_max; returns
    one `StreamSample` (wave in memory).

    optional_instruction: the replies follow from the audio alone (a sound that needs attention,
    a spoken question or turn), so with P = `res.instruction_dropout` the stream carries no
    instruction — as `listen` and `serve` run always-on. TFJP is re-applied to every clip at
    composition (Alg. 3 line 3), not to pauses or synthesised speech (core_locate could cut words
    the transcript names)."""
    turns, applied = yield from _apply_mixins(turns, mix, rng, res, speaker, res.max_seconds, task)
    turns = [*turns, Turn([_silence(float(rng.uniform(*STREAM_TAIL_S)))])]  # never end on a reply (see STREAM_TAIL_S)
    dropped = bool(rng.random() < res.instruction_dropout) if optional_instruction else False
    if dropped:
        instruction = ""
    spoken, spoken_prov = (yield from _speak_instruction(instruction, rng, res, speaker)) if instruction else (None, None)
    if spoken is not None:
        instruction = ""  # heard, not read: the words stay in the provenance record
    events = [e for t in turns for e in t.events]
    for e in events:
        e.preprocess = e.provenance.get("type") in TFJP_TYPES
    n_ev, n_amb, noise_prov = _noise_tracks(rng, res)
    if rng.random() < CLEAN_P:  # no noise bed: files (and `bench asr`'s pads) hold digital silence
        n_ev, n_amb, noise_prov = None, None, []
    tfjp_fn = None
    if res.use_tfjp:
        from .tfjp import tfjp as tfjp_fn
    y, timeline, info = compose(events, n_ev, n_amb, rng, chunk_ms=res.chunk_ms, tfjp=tfjp_fn)
    max_n = int(res.max_chunks * res.chunk_ms * SAMPLE_RATE // 1000)
    if len(y) > max_n:  # never expected (planning keeps to the budget), but L_max is a hard limit
        y = y[:max_n]
    n_chunks = -(-len(y) // (res.chunk_ms * SAMPLE_RATE // 1000))
    merged: dict[int, dict] = {}  # Alg. 2 emits at most one response per chunk: join same-chunk replies
    for t in timeline:
        if t["chunk"] >= n_chunks:
            continue
        m = merged.setdefault(t["chunk"], {"chunk": t["chunk"], "text": ""})
        m["text"] = (m["text"] + " " + t["text"]) if m["text"] else t["text"]
        if "from" in t:  # a joined reply may come from the earliest window start among its parts
            m["from"] = min(m.get("from", t["chunk"]), t["from"])
    timeline = [merged[k] for k in sorted(merged)]
    prov = [{k: v for k, v in rec.items() if k != "index"} for rec in info["events"]]
    prov += [{**p, **({"snr_db": round(info[k]["snr_db"], 2)} if k in info else {})}
             for p, k in zip(noise_prov, ("noise_event", "noise_ambient"))]
    if spoken_prov is not None:
        prov.append(spoken_prov)
    prov.append({"type": "meta", "mixins": applied, "peak_scale": round(info["peak_scale"], 4),
                 **({"instruction_dropped": True} if dropped else {}),
                 **({"voice": speaker.voice.to_json()} if speaker is not None else {}), **(extra or {})})
    return StreamSample(id="", task=task, sample_rate=SAMPLE_RATE, chunk_ms=res.chunk_ms, instruction=instruction,
                        timeline=timeline, events=prov, wave=y.astype(np.float32), instruction_wave=spoken)


def _begin(rng: np.random.Generator, res: Resources, task: str, need_speaker: bool = False):
    mix = draw_mix(rng, res, task)
    speaker = res.speaker(rng)
    if need_speaker and speaker is None:
        raise ValueError(f"task {task!r} needs TTS (recipe tts.families is empty)")
    return mix, speaker, res.max_seconds - mix.reserve - STREAM_TAIL_S[1]


# ----------------------------------------------------------------------------- the seven families


def dictation_pool(res: Resources) -> list[str]:
    """The sentences the real-time ASR family dictates (TTS path)."""
    return [p["src"] for p in res.parallel] + [c["user"] for c in res.chats] + res.sentences


def word_groups(sentence: str, rng: np.random.Generator) -> list[str]:
    """A dictated sentence in the 2-5-word groups whose text the model writes as each one ends."""
    words, groups, i = sentence.split(), [], 0
    while i < len(words):
        n = int(rng.integers(2, 6))
        groups.append(" ".join(words[i : i + n]))
        i += n
    return groups


def spoken_prompts(res: Resources, tasks: Iterable[str] = FAMILIES) -> list[str]:
    """Every fixed text the TTS speaker of `tasks`' streams can say, besides dictation sentences
    (`dictation_pool`): user turns, questions, commands, the history question of the mix-in and,
    when the recipe speaks instructions (`instruction_audio`), the instructions. What a speech
    bank (speechbank.py) renders for each voice."""
    tasks = set(tasks)
    said, instructions = [], []
    if "translation" in tasks:
        said += [p["src"] for p in res.parallel]
        instructions += [INSTRUCTIONS["translation"].format(v) for v in LANGS.values()]
    if "chat" in tasks:
        said += [c["user"] for c in res.chats]
        instructions.append(INSTRUCTIONS["chat"])
    if "understanding" in tasks:
        said += [*WHAT_WAS_THAT, HOW_MANY_SOUNDS]
        instructions += [INSTRUCTIONS["understanding"], INSTRUCTIONS["understanding_silent"]]
    if "music" in tasks:
        said += list(MUSIC_QUESTIONS)
        instructions += [INSTRUCTIONS["music_stop"], INSTRUCTIONS["music_describe"]]
    if "agent" in tasks:
        said += [text for text, _ in SPOKEN_COMMANDS]
    if "asr" in tasks:
        instructions += list(ASR_INSTRUCTIONS)
    if "proactive" in tasks:
        instructions.append(INSTRUCTIONS["proactive"])
    if res.mixins.get("history", 0) > 0:
        said += [HISTORY_QUESTION.format(o) for o in ORDINALS]
    if res.instruction_audio > 0:
        said += [t for t in instructions if speakable(t)]
    return list(dict.fromkeys(said))  # in order, once


def steps_asr(rng: np.random.Generator, res: Resources):
    """Real-time ASR: each word group's (or digit's) text at the chunk where its audio ends."""
    mix, speaker, budget = _begin(rng, res, "asr")
    turns: list[Turn] = []
    use_digits = res.speech and (speaker is None or rng.random() < 0.3)
    if use_digits:  # real speech (FSDD digits, Asterisk prompts): one speaker, 1-12 recordings
        spk = _pick(sorted({r.get("speaker", "") for r in res.speech}), rng)
        rows = [r for r in res.speech if r.get("speaker", "") == spk]
        used = 0.0
        # Isolated words with long pauses too, not only quick runs: a model trained on 4-12 digits
        # 0.1-0.5 s apart answered a lone digit after 1 s of quiet with an event reply ("The car is
        # going to break down.": 0 of 40 FSDD digits right, 2026-12-01).
        for _ in range(int(rng.integers(1, 13))):
            row = _pick(rows, rng)
            w = res.audio(row)
            gap = float(rng.uniform(*ASR_PAUSE_S))
            if used + len(w) / SAMPLE_RATE + gap > budget:
                break
            turns.append(Turn([_silence(gap), Event(w, response=row["text"],
                                                    provenance={"type": "speech", "id": row["id"], "text": row["text"],
                                                                "speaker": row.get("speaker", "")})],
                              memo=f'"{row["text"]}"' if row.get("kind") == "prompt" else f'the digit {row["text"]}'))
            used += len(w) / SAMPLE_RATE + gap
        sub = "digits"
    else:
        if speaker is None:
            raise ValueError("asr without FSDD speech needs TTS")
        banked = speaker.bank.dictation(speaker.voice) if speaker.bank is not None else []
        if banked:  # sentences this voice said for the speech bank, already in word groups and gated
            picked = [banked[int(i)] for i in rng.choice(len(banked), size=min(3, len(banked)), replace=False)]
            owner = [si for si, e in enumerate(picked) for _ in e.texts]
            waves, spoken, info = speaker.banked(picked)
            prov = [{"type": "tts", "text": t, **i} for t, i in zip([t for e in picked for t in e.texts], info)]
        else:
            pool = dictation_pool(res)
            sents = [pool[int(i)] for i in rng.choice(len(pool), size=min(3, len(pool)), replace=False)]
            groups, owner = [], []
            for si, s in enumerate(sents):
                g = word_groups(s, rng)
                groups += g
                owner += [si] * len(g)
            # Each group is rendered alone (its end is then exact, for the reply chunk) but the ASR gate
            # checks each sentence as one unit: its groups joined by the same 50 ms gaps the stream has.
            by_sentence = res.asr_gate_unit != "group"
            waves, spoken, prov = yield from _say(speaker, groups, units=owner if by_sentence else None,
                                                  join_gap_s=ASR_GROUP_GAP_S if by_sentence else 0.0)
        used = 0.0
        for w, sp, pr, si in zip(waves, spoken, prov, owner):
            gap = 0.25 if turns and owner[len(turns) - 1] != si else ASR_GROUP_GAP_S
            if used + len(w) / SAMPLE_RATE + gap > budget:
                break
            turns.append(Turn([_silence(gap), Event(w, response=sp, provenance=pr)], memo=f'"{sp}"'))
            used += len(w) / SAMPLE_RATE + gap
        sub = "sentences"
    if not turns:
        raise ValueError("asr: nothing fits the budget")
    instruction = ASR_INSTRUCTIONS[int(rng.integers(len(ASR_INSTRUCTIONS)))]
    return (yield from finish("asr", turns, instruction, rng, res, mix, speaker, {"subtask": sub}))


def steps_translation(rng: np.random.Generator, res: Resources):
    """Simultaneous interpretation: each source sentence's translation at the chunk where it ends."""
    mix, speaker, budget = _begin(rng, res, "translation", need_speaker=True)
    lang = _pick(sorted(LANGS), rng)
    pairs = [res.parallel[int(i)] for i in rng.choice(len(res.parallel), size=min(4, len(res.parallel)), replace=False)]
    waves, spoken, prov = yield from _say(speaker, [p["src"] for p in pairs])
    turns, used = [], 0.0
    for w, p, pr in zip(waves, pairs, prov):
        gap = float(rng.uniform(0.3, 0.9))
        if used + len(w) / SAMPLE_RATE + gap > budget:
            break
        tgt = p["tgt"][lang] if isinstance(p["tgt"], dict) else p["tgt"]
        turns.append(Turn([_silence(gap), Event(w, response=tgt, provenance={**pr, "lang": lang})], memo=f'"{p["src"]}"'))
        used += len(w) / SAMPLE_RATE + gap
    if not turns:
        raise ValueError("translation: nothing fits the budget")
    return (yield from finish("translation", turns, INSTRUCTIONS["translation"].format(LANGS[lang]),
                              rng, res, mix, speaker, {"lang": lang}))


def steps_chat(rng: np.random.Generator, res: Resources):
    """Voice chat: a reply at the end of each user turn, then a pause while the assistant talks."""
    mix, speaker, budget = _begin(rng, res, "chat", need_speaker=True)
    ex = [res.chats[int(i)] for i in rng.choice(len(res.chats), size=min(5, len(res.chats)), replace=False)]
    waves, spoken, prov = yield from _say(speaker, [e["user"] for e in ex])
    turns, used = [], 0.0
    for w, e, pr in zip(waves, ex, prov):
        pause = float(rng.uniform(0.8, 2.0))  # the assistant's turn: the user waits
        if used + len(w) / SAMPLE_RATE + pause > budget:
            break
        turns.append(Turn([Event(w, response=e["reply"], provenance=pr), _silence(pause)], memo=f'your question "{e["user"]}"'))
        used += len(w) / SAMPLE_RATE + pause
    if not turns:
        raise ValueError("chat: nothing fits the budget")
    return (yield from finish("chat", turns, INSTRUCTIONS["chat"],
                              rng, res, mix, speaker, optional_instruction=True))


def steps_understanding(rng: np.random.Generator, res: Resources):
    """Streaming audio understanding: questions about what was heard, answered from the captions."""
    mix, speaker, budget = _begin(rng, res, "understanding")
    spoken_q = speaker is not None and rng.random() < 0.7
    turns, used, heard = [], 0.0, []
    q_texts = []
    n = int(rng.integers(2, 5))
    for _i in range(n):
        row = _pick(res.events, rng)
        clip, fx = _event_clip(row, res, rng, min(MAX_EVENT_S, 5.0))
        if used + len(clip) / SAMPLE_RATE + (2.5 if spoken_q else 0.4) > budget:
            break
        heard.append(row)
        used += len(clip) / SAMPLE_RATE
        cap = row.get("caption", "a sound")
        if spoken_q:
            ask_count = len(heard) >= 2 and rng.random() < 0.3
            q = HOW_MANY_SOUNDS if ask_count else _pick(list(WHAT_WAS_THAT), rng)
            a = (f"{number_to_words(len(heard)).capitalize()} sounds so far." if ask_count
                 else f"That was {_article(cap)}.")
            q_texts.append(q)
            turns.append(Turn([Event(clip, provenance=_event_prov(row, **fx)), _silence(0.3)], memo=_article(cap)))
            turns[-1].qa = (q, a)  # type: ignore[attr-defined]
            used += 2.3
        else:
            ev = Event(clip, response=f"That was {_article(cap)}.", provenance=_event_prov(row, **fx))
            turns.append(Turn([ev, _silence(0.4)], memo=_article(cap)))
            used += 0.4
    if not turns:
        raise ValueError("understanding: nothing fits the budget")
    if spoken_q:
        waves, spoken, prov = yield from _say(speaker, q_texts)
        for t, w, pr in zip(turns, waves, prov):
            t.events.append(Event(w, response=t.qa[1], provenance={**pr, "question": True}))  # type: ignore[attr-defined]
        instr = INSTRUCTIONS["understanding"]
    else:
        instr = INSTRUCTIONS["understanding_silent"]
    return (yield from finish("understanding", turns, instr, rng, res, mix, speaker, {"spoken_questions": spoken_q},
                              optional_instruction=spoken_q))


def steps_music(rng: np.random.Generator, res: Resources):
    """Following music: say when the music stops, or what is playing when asked."""
    mix, speaker, budget = _begin(rng, res, "music")
    row = _pick(res.music, rng)
    desc = music_notes().descriptions.get(row["id"], "a piece of music")
    longest = min(12.0, budget - 4.0)  # room for the stop / question turn after it
    if longest < 2.0:
        raise ValueError(f"music needs a stream of at least {2.0 + 4.0 + STREAM_TAIL_S[1] + mix.reserve:.1f} s")
    x = crop(res.audio(row), float(rng.uniform(min(5.0, longest), longest)), rng)
    fade = min(len(x) // 4, int(0.3 * SAMPLE_RATE))
    x = x.copy()
    x[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
    prov = {"type": "music", "id": row["id"], "description": desc}
    turns = [Turn([Event(x, provenance=prov)], memo=desc)]
    sub = "stop" if speaker is None or rng.random() < 0.5 else "describe"
    if sub == "stop":
        # The model can only know the music stopped after hearing ~1 s without it.
        turns.append(Turn([_silence(float(rng.uniform(1.0, 1.6)), response="The music has stopped.")]))
        instr = INSTRUCTIONS["music_stop"]
    else:
        waves, spoken, pr = yield from _say(speaker, [_pick(list(MUSIC_QUESTIONS), rng)])
        turns.append(Turn([_silence(0.3), Event(waves[0], response=f"It sounds like {desc}.", provenance=pr[0])]))
        instr = INSTRUCTIONS["music_describe"]
    return (yield from finish("music", turns, instr, rng, res, mix, speaker, {"subtask": sub},
                              optional_instruction=sub == "describe"))


@functools.lru_cache(maxsize=4)
def _catalog(path: str, embedder: str = "minilm", split: str | None = "train"):
    """The event catalog for curation, one per process (its text embeddings are cached on disk).
    embedder: "minilm" (the shared MiniLM, as the paper's retrieval) or "hash" (`HashEmbedder`:
    instant, no weights; tests and smoke builds). split: the side of the recording-group split
    whose clips may be drawn (None / "all": every row)."""
    from .catalog import Catalog, HashEmbedder, held_out_ids

    cat = Catalog.load(path, embedder=HashEmbedder() if embedder == "hash" else None)
    out = held_out_ids(path, split)
    cat.rows = [r for r in cat.rows if r.id not in out]
    return cat


def _curator(name: str):
    """The recipe's `curator`: "offline" templates, or "llm" — an OpenAI-compatible endpoint named
    by SOUNDFLOW_LLM_BASE_URL / SOUNDFLOW_LLM_MODEL (an error when it is not set)."""
    from .curate import LLMCurator, OfflineCurator
    from .curator_client import LLMClient

    if name == "offline":
        return OfflineCurator()
    if name == "llm":
        client = LLMClient.from_env()
        if client is None:
            raise ValueError("recipe curator: llm needs SOUNDFLOW_LLM_BASE_URL (an OpenAI-compatible endpoint)")
        return LLMCurator(client)
    raise ValueError(f"recipe curator must be 'offline' or 'llm', not {name!r}")


def proactive_events(rng: np.random.Generator, res: Resources, budget: float) -> tuple[list[Turn], dict]:
    """The proactive family's events: `curate.curate_stream` (plan → refine → ground → verify,
    the `OfflineCurator`) when `res.use_curate`, else catalog rows drawn directly (RESPOND rows
    get a reply, IGNORE rows none).

    Curated foreground events are laid out with a short pause before each (as the direct path);
    curation gets the budget minus those pauses, so the stream still fits L_max. Background and
    ambient sub-events are mixed under the foreground by `compose`. A scenario that cannot be
    grounded raises ValueError (the builder draws again)."""
    if res.use_curate and res.catalog_path is not None:
        from .curate import CurationError, curate_stream

        tfjp_fn = None
        if res.use_tfjp:
            from .tfjp import tfjp as tfjp_fn
        gaps = [float(g) for g in rng.uniform(0.2, 1.2, size=6)]
        try:
            events, prov = curate_stream(_catalog(str(res.catalog_path), res.curate_embedder, res.split), rng,
                                         _curator(res.curator),
                                         max_seconds=max(1.0, budget - sum(gaps)), respond_reply=proactive_reply,
                                         tfjp_fn=tfjp_fn)
        except CurationError as e:
            raise ValueError(str(e)) from e
        turns, k = [], 0
        for e in events:
            e.provenance.setdefault("type", "clip" if "clip_id" in e.provenance else "synthetic")
            if "clip_id" in e.provenance:
                e.provenance.setdefault("id", e.provenance["clip_id"])
            if e.role == "foreground":
                pre = [_silence(gaps[k])] if k < len(gaps) else []
                k += 1
                turns.append(Turn(pre + [e], memo=_article(e.provenance.get("caption") or "a sound")))
            else:
                turns.append(Turn([e]))
        return turns, {"curation": "curate_stream", "scenario": prov.get("scenario"), "planner": prov.get("planner"),
                       "ungrounded": len(prov.get("dropped", []))}
    turns, used = [], 0.0
    respond, ignore = res.by_decision("RESPOND"), res.by_decision("IGNORE")
    for _ in range(int(rng.integers(2, 6))):
        row = _pick(respond if rng.random() < 0.45 else ignore, rng)
        clip, fx = _event_clip(row, res, rng)
        gap = float(rng.uniform(0.2, 1.5))
        if used + len(clip) / SAMPLE_RATE + gap > budget:
            break
        needs_reply = row.get("decision") == "RESPOND"
        reply = proactive_reply(row.get("class", ""), row.get("caption", ""), row.get("category", "")) if needs_reply else None
        ev = Event(clip, response=reply, duration=_reply_after(res, rng) if needs_reply else None,
                   reply_from=0.0 if needs_reply else None, provenance=_event_prov(row, **fx))
        turns.append(Turn([_silence(gap), ev],
                          memo=_article(row.get("caption", "a sound"))))
        used += len(clip) / SAMPLE_RATE + gap
    return turns, {"curation": "direct"}


def steps_proactive(rng: np.random.Generator, res: Resources):
    """Proactive response: reply only at RESPOND events, silence through IGNORE events."""
    mix, speaker, budget = _begin(rng, res, "proactive")
    turns, extra = proactive_events(rng, res, budget)
    if not turns:
        raise ValueError("proactive: nothing fits the budget")
    return (yield from finish("proactive", turns, INSTRUCTIONS["proactive"], rng, res, mix, speaker, extra,
                              optional_instruction=True))


def steps_agent(rng: np.random.Generator, res: Resources):
    """Audio agent: a JSON tool call as the reply when a sound or a spoken command calls for one."""
    mix, speaker, budget = _begin(rng, res, "agent")
    tool_rows = [r for r in res.events if r.get("class") in TOOL_CALLS]
    ignore = res.by_decision("IGNORE")
    plan = []  # ("sound", row) | ("say", (text, call))
    for _ in range(int(rng.integers(2, 5))):
        u = rng.random()
        if speaker is not None and u < 0.35:
            plan.append(("say", SPOKEN_COMMANDS[int(rng.integers(len(SPOKEN_COMMANDS)))]))
        else:
            plan.append(("sound", _pick(tool_rows if u < 0.7 else ignore, rng)))
    said = [p[1][0] for p in plan if p[0] == "say"]
    rendered = (yield from _say(speaker, said)) if said else ([], [], [])
    waves, provs = iter(rendered[0]), iter(rendered[2])
    turns, used = [], 0.0
    for kind, what in plan:
        gap = float(rng.uniform(0.3, 1.2))
        if kind == "say":
            w = next(waves)
            ev = Event(w, response=json.dumps(what[1]), provenance=next(provs))
            memo = f'your request "{what[0]}"'
        else:
            row = what
            w, fx = _event_clip(row, res, rng, 5.0)
            call = TOOL_CALLS.get(row.get("class", ""))
            ev = Event(w, response=json.dumps(call) if call else None, duration=_reply_after(res, rng) if call else None,
                       reply_from=0.0 if call else None, provenance=_event_prov(row, **fx))
            memo = _article(row.get("caption", "a sound"))
        if used + len(w) / SAMPLE_RATE + gap > budget:
            break
        turns.append(Turn([_silence(gap), ev], memo=memo))
        used += len(w) / SAMPLE_RATE + gap
    if not turns:
        raise ValueError("agent: nothing fits the budget")
    tools = sorted({c["tool"] for c in TOOL_CALLS.values()} | {c["tool"] for _, c in SPOKEN_COMMANDS})
    instr = ("You are a home assistant with tools (" + ", ".join(tools) + "). When a sound or a request "
             'calls for a tool, reply with one JSON object {"tool": ..., ...}; otherwise stay silent.')
    return (yield from finish("agent", turns, instr, rng, res, mix, speaker))


# Each family as a generator of `asr_gate.GateRequest`s (the builder gates many instances' units
# together, in full 30 s Whisper windows) and as a plain function (gating each request at once).
TASK_STEPS: dict[str, Callable] = {
    "asr": steps_asr,
    "translation": steps_translation,
    "chat": steps_chat,
    "understanding": steps_understanding,
    "music": steps_music,
    "proactive": steps_proactive,
    "agent": steps_agent,
}


def _sync(steps: Callable) -> Callable[[np.random.Generator, Resources], StreamSample]:
    def task(rng: np.random.Generator, res: Resources) -> StreamSample:
        return run_steps(steps(rng, res), res.gate)

    task.__name__ = task.__qualname__ = steps.__name__.replace("steps_", "task_")
    task.__doc__ = steps.__doc__
    return task


task_asr = _sync(steps_asr)
task_translation = _sync(steps_translation)
task_chat = _sync(steps_chat)
task_understanding = _sync(steps_understanding)
task_music = _sync(steps_music)
task_proactive = _sync(steps_proactive)
task_agent = _sync(steps_agent)

TASKS: dict[str, Callable[[np.random.Generator, Resources], StreamSample]] = {
    "asr": task_asr,
    "translation": task_translation,
    "chat": task_chat,
    "understanding": task_understanding,
    "music": task_music,
    "proactive": task_proactive,
    "agent": task_agent,
}
