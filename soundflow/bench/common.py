"""Shared pieces of the benchmark harness: the runner contract, manifests, prediction parsing, noise.

A *runner* is any callable ``runner(wave, chunk_ms) -> list[ChunkResult]`` that hears a 16 kHz
mono waveform chunk by chunk and reports, for every chunk, `<silent>` or `<response>` plus text.
The streaming engine, the baselines and test doubles all satisfy it.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

import numpy as np

from ..audio import SAMPLE_RATE  # noqa: F401 (bench modules import it from here)
from ..compose import colored_noise, dbfs_to_rms  # noqa: F401 (bench modules import them from here)
from ..data import read_jsonl  # bench modules import it from here
from ..model import encoder_fingerprint

DECISIONS = ("RESPOND", "IGNORE")
# Audio the public manifest names as .wav may have been converted; try these before giving up.
_AUDIO_EXTS = (".wav", ".flac", ".ogg", ".opus", ".mp3")


@dataclass
class ChunkResult:
    """What a runner says about chunk `chunk` (covering [chunk*c, (chunk+1)*c) seconds)."""

    chunk: int
    decision: str  # "silent" | "response"
    p_response: float = 0.0
    text: str = ""
    latency_ms: float | None = None


Runner = Callable[[np.ndarray, int], "list[ChunkResult]"]


@dataclass
class BenchItem:
    """One manifest row: a clip with its gold decision and macro/meso category."""

    id: str
    path: Path  # absolute (resolved against the manifest's folder)
    description: str
    decision: str  # RESPOND | IGNORE
    macro: str
    meso: str
    rel_path: str = ""  # as written in the manifest
    standard_answers: list[str] = field(default_factory=list)
    sound_class: str = ""  # the row's `class` where the manifest has one (this project's catalogs)

    @property
    def category(self) -> str:
        return f"{self.macro}/{self.meso}"


def categories_from_path(rel_path: str) -> tuple[str, str]:
    """Macro/meso from `./proactive-sound-effect/<Macro>/<Meso>/<DECISION>/<id>.wav` (2nd/3rd part)."""
    parts = [p for p in PurePosixPath(rel_path.replace("\\", "/")).parts if p not in (".", "")]
    macro = parts[1] if len(parts) > 2 else "Unknown"
    meso = parts[2] if len(parts) > 3 else "Unknown"
    return macro, meso


def resolve_audio(path: Path) -> Path:
    """The path itself, or a sibling with the same stem in another audio format."""
    if path.exists():
        return path
    for ext in _AUDIO_EXTS:
        alt = path.with_suffix(ext)
        if alt.exists():
            return alt
    return path  # missing: load_audio reports it and the item is skipped


def load_references(path: str | Path) -> dict[str, list[str]]:
    """`reference_replies.jsonl` → {id: standard_answers}; rows without answers are dropped."""
    out: dict[str, list[str]] = {}
    for r in read_jsonl(path):
        answers = r.get("standard_answers") or []
        if r.get("id") is not None and isinstance(answers, list) and answers:
            out[str(r["id"])] = [str(a) for a in answers]
    return out


def load_manifest(path: str | Path, references: str | Path | None = None) -> list[BenchItem]:
    """Read a Proactive-Sound-Bench manifest (the public `labels.jsonl` as is).

    `reference_replies.jsonl` beside the manifest (or `references`) fills `standard_answers`.
    Rows with an unknown decision are reported on stderr and skipped.
    """
    path = Path(path)
    root = path.parent
    refs_path = Path(references) if references else root / "reference_replies.jsonl"
    refs = load_references(refs_path) if refs_path.exists() else {}
    items = []
    for r in read_jsonl(path):
        rid, rel = str(r.get("id", "")), str(r.get("path", ""))
        dec = str(r.get("decision", "")).strip().upper()
        if not rid or not rel or dec not in DECISIONS:
            print(f"[bench] skipping manifest row {r!r}: needs id, path and RESPOND|IGNORE", file=sys.stderr)
            continue
        macro, meso = categories_from_path(rel)
        items.append(
            BenchItem(
                id=rid,
                path=resolve_audio((root / rel).resolve()),
                description=str(r.get("description", "")),
                decision=dec,
                macro=macro,
                meso=meso,
                rel_path=rel,
                standard_answers=list(r.get("standard_answers") or refs.get(rid, [])),
                sound_class=str(r.get("class") or ""),
            )
        )
    return items


# ---------------------------------------------------------------- offline prediction parsing

_TAG_RE = {t: re.compile(rf"<\s*{t}\s*>(.*?)<\s*/\s*{t}\s*>", re.IGNORECASE | re.DOTALL) for t in ("decision", "reply")}
_DEC_RE = re.compile(r"\b(RESPOND|IGNORE)\b", re.IGNORECASE)
# Keys a prediction row may carry its raw model text under (ours first, then the public scorer's).
PREDICTION_KEYS = ("prediction", "_raw_reply", "reply", "response", "output", "text")


@dataclass
class ParsedPrediction:
    decision: str  # RESPOND | IGNORE | "" (unparsable)
    reply: str
    raw: str


def parse_prediction(raw: str) -> ParsedPrediction:
    """`<Decision>RESPOND</Decision><Reply>...</Reply>` → decision + reply.

    Case and whitespace inside the tags are tolerated; a missing or unclosed `<Decision>` block
    gives decision "" (unparsable), as the public scorer does (no plain-text fallback).
    """
    raw = (raw or "").strip()
    m = _TAG_RE["decision"].search(raw)
    dec = ""
    if m:
        d = _DEC_RE.search(m.group(1))
        dec = d.group(1).upper() if d else ""
    r = _TAG_RE["reply"].search(raw)
    return ParsedPrediction(decision=dec, reply=r.group(1).strip() if r else "", raw=raw)


def load_predictions(path: str | Path) -> dict[str, str]:
    """Raw model text per id from a JSONL file, a folder of `<id>.txt`, or an `id<TAB>text` file."""
    path = Path(path)
    if path.is_dir():
        return {p.stem: p.read_text(encoding="utf-8") for p in sorted(path.glob("*.txt"))}
    text = path.read_text(encoding="utf-8")
    out: dict[str, str] = {}
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if first.lstrip().startswith("{"):
        for r in read_jsonl(path):
            if r.get("id") is None:
                continue
            raw = next((r[k] for k in PREDICTION_KEYS if isinstance(r.get(k), str) and r[k].strip()), "")
            out[str(r["id"])] = raw
        return out
    for ln in text.splitlines():  # plain text: "<id><TAB or spaces><raw model text>"
        if ln.strip():
            rid, _, raw = ln.strip().partition("\t") if "\t" in ln else ln.strip().partition(" ")
            out[rid.strip()] = raw.strip()
    return out


# ---------------------------------------------------------------- ambient noise

def fit_length(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Tile (from a random offset) or crop `x` to exactly n samples."""
    if n <= 0:
        return np.zeros(0, dtype=np.float32)
    reps = int(np.ceil((n + len(x)) / len(x)))
    tiled = np.tile(x, reps)
    off = int(rng.integers(0, len(x)))
    return tiled[off : off + n].astype(np.float32)


def set_rms(x: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    return (x * (dbfs_to_rms(dbfs) / rms)).astype(np.float32) if rms > 0 else x.astype(np.float32)


# ---------------------------------------------------------------- the model as a runner


class SystemFailed(RuntimeError):
    """The system a benchmark measures failed: the benchmark stops and names it, rather than
    report figures for another system."""


def served_model(model, threshold: float | None = None, quant: str | None = "auto"):
    """(model, name, threshold) as `listen` serves it: a name or checkpoint folder loaded at its
    precision (a model object as given), and its calibrated threshold unless one is given."""
    spec = str(model) if isinstance(model, (str, Path)) else None
    if spec is not None:
        from ..loading import load_model
        from ..optimize import apply_precision

        model = apply_precision(load_model(spec), quant)
    model = model.eval()
    name = spec or (model.cfg.backend if hasattr(model, "cfg") else type(model).__name__)
    if threshold is None:  # a calibrated checkpoint carries its own (see calibrate.py)
        from ..calibrate import default_threshold

        threshold = default_threshold(model)
    return model, name, float(threshold)


class EngineRunner:
    """A model as a `Runner`: each call is one fresh session of the streaming engine.

    `runner(wave, chunk_ms)` satisfies the runner contract; task benchmarks also pass a per-call
    `instruction=` (the MCQ question, a translation request). Chunks are fed with
    `realtime=False`: the next chunk goes in once the previous one is decided and its reply
    finished, so every chunk gets its own decision and results are deterministic. Reply text of
    a chunk is attached to that chunk's `ChunkResult`; `last_events` keeps the raw events of the
    latest call. The runner measures `soundflow.engine` and nothing else: when the engine cannot
    start, raises, or reports an error event, it raises `SystemFailed` naming the model.
    """

    def __init__(self, model, threshold: float | None = None, instruction: str | None = None, chunk_ms: int = 400,
                 max_reply_tokens: int = 48, mode: str = "fifo", quant: str | None = "auto"):
        self.model, self.name, self.threshold = served_model(model, threshold, quant)
        self.instruction = instruction
        self.chunk_ms = int(chunk_ms)
        self.max_reply_tokens = int(max_reply_tokens)
        self.mode = mode
        self.last_events: list[dict] = []
        from ..engine import Engine, EngineOptions

        try:
            self._engine = Engine(self.model, EngineOptions(
                mode=mode, threshold=self.threshold, max_reply_tokens=self.max_reply_tokens,
                chunk_ms=self.chunk_ms, instruction=instruction))
        except Exception as e:  # noqa: BLE001 — re-raised, naming the system
            raise SystemFailed(f"{self.name} (engine) failed to start: {type(e).__name__}: {e}") from e

    _DEFAULT = object()

    def __call__(self, wave: np.ndarray, chunk_ms: int | None = None, instruction=_DEFAULT) -> list[ChunkResult]:
        chunk_ms = int(chunk_ms or self.chunk_ms)
        instr = self.instruction if instruction is EngineRunner._DEFAULT else instruction
        from ..audio import iter_chunks

        chunks = list(iter_chunks(np.asarray(wave, dtype=np.float32), chunk_ms))
        try:
            over = {"chunk_ms": chunk_ms} if chunk_ms != self._engine.options.chunk_ms else {}
            sess = self._engine.session(instruction=instr, **over)
            events = list(sess.run(chunks, realtime=False))
        except Exception as e:  # noqa: BLE001 — re-raised, naming the system
            raise SystemFailed(f"{self.name} (engine) failed: {type(e).__name__}: {e}") from e
        err = next((e for e in events if e.get("type") == "error"), None)
        if err is not None:
            raise SystemFailed(f"{self.name} (engine) reported an error: {err.get('message', 'engine error')}")
        self.last_events = events
        return events_to_results(events, len(chunks))


def events_to_results(events: Iterable[dict], n_chunks: int | None = None) -> list[ChunkResult]:
    """Engine/decoder events → one `ChunkResult` per chunk (reply text joined onto its chunk).

    Chunks without a decision event (a session that ended early) are reported silent."""
    by_chunk: dict[int, ChunkResult] = {}
    for ev in events:
        kind = ev.get("type")
        if kind == "decision":
            k = int(ev["chunk"])
            r = by_chunk.setdefault(k, ChunkResult(k, "silent"))
            r.decision = str(ev.get("decision", "silent"))
            r.p_response = float(ev.get("p_response") or 0.0)
            lat = ev.get("latency_ms")
            r.latency_ms = float(lat) if lat is not None else None
        elif kind == "response":
            k = int(ev["chunk"])
            r = by_chunk.setdefault(k, ChunkResult(k, "response"))
            text = str(ev.get("text") or "")
            r.text = f"{r.text} {text}".strip() if r.text else text
    n = max([n_chunks or 0, *(k + 1 for k in by_chunk)])
    return [by_chunk.get(k) or ChunkResult(k, "silent") for k in range(n)]


def reply_text(results: Iterable[ChunkResult]) -> str:
    """All reply texts of a run, in chunk order, joined with single spaces."""
    parts = [r.text.strip() for r in sorted(results, key=lambda r: r.chunk) if r.text and r.text.strip()]
    return " ".join(parts)


def call_runner(runner, wave: np.ndarray, chunk_ms: int, instruction: str | None) -> list[ChunkResult]:
    """Call a runner with a per-call instruction when it takes one (EngineRunner, test stubs with
    an `instruction` parameter); plain runners are called as `runner(wave, chunk_ms)`."""
    if accepts_instruction(runner):
        return runner(wave, chunk_ms, instruction=instruction)
    return runner(wave, chunk_ms)


def accepts_instruction(runner) -> bool:
    import inspect

    if isinstance(runner, EngineRunner):
        return True
    try:
        params = inspect.signature(runner).parameters
    except (TypeError, ValueError):
        return False
    return "instruction" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@dataclass
class TriggerDecision:
    """One chunk of `trigger_replies`, in the fields of a runner's `ChunkResult` the benches read."""

    chunk: int
    p_response: float
    decision: str
    text: str = ""
    latency_ms: float | None = None


class EncodingCache:
    """What the frozen encoder made of a wave, kept on disk so that replaying a trigger fit (or a
    decision rule) over the same bench streams costs the trigger's arithmetic only.

    Per wave (keyed by its samples, the chunk size and the encoder's weights, so another model or
    another stream never reads it) one file holds the chunks' `encode_heard` rows and the second
    look's window summaries met so far, each under a hash of the log-mels it summarised: a trigger
    fitted anew on the same encoder reuses both, and a replay gives the uncached decisions exactly.
    Files are written whole (temp file, then rename)."""

    def __init__(self, root: str | Path, model):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tag = encoder_fingerprint(model)

    def path(self, wave: np.ndarray, chunk_ms: int, with_mel: bool) -> Path:
        import hashlib

        h = hashlib.sha1(f"{self.tag}|{chunk_ms}|{int(with_mel)}|".encode())
        h.update(np.ascontiguousarray(wave, dtype=np.float32).tobytes())
        return self.root / f"{h.hexdigest()[:24]}.pt"

    @staticmethod
    def load(path: Path) -> dict:
        """The entry at `path`; an unreadable one (a disk that filled, a copy cut short) is
        reported and read as empty, then written anew."""
        import torch

        if path.is_file():
            try:
                entry = torch.load(path)
                if isinstance(entry, dict) and {"heard", "windows"} <= entry.keys():
                    return entry
                raise ValueError("not an encoding cache entry")
            except Exception as e:  # noqa: BLE001 - any unreadable file is a miss, never a failed bench
                print(f"soundflow: unreadable trigger cache entry {path} ({type(e).__name__}: {e}); encoding again",
                      file=sys.stderr)
        return {"heard": None, "windows": {}}

    @staticmethod
    def save(path: Path, entry: dict) -> None:
        import os

        import torch

        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # parallel replays never share a temp file
        torch.save(entry, tmp)
        tmp.replace(path)


def _memo_summarize(summarize, memo: dict):
    """`summarize` remembered by the content of its input (the second look's window of log-mels)."""
    import hashlib

    def cached(mel, layers=None):
        key = hashlib.sha1(mel.detach().float().cpu().contiguous().numpy().tobytes() + repr(layers).encode()).hexdigest()
        if key not in memo:
            memo[key] = summarize(mel, layers).cpu()
        return memo[key].to(mel.device)

    return cached


def trigger_replies(model, wave: np.ndarray, threshold: float, chunk_ms: int = 400,
                    batch: int = 128, cache: EncodingCache | None = None) -> list[TriggerDecision]:
    """The sound trigger of `model` alone over `wave`: its state fed chunk by chunk as
    `decoding.feed_audio` feeds it (second look included), a reply wherever P_trigger reaches
    `threshold` (`decoding.decide`), then `TriggerState.replied` — the served trigger with the LM
    silent throughout. Its replies are the trigger's replies of a whole run whenever the LM does
    not speak in between (an LM reply also empties the trigger's evidence). `cache`: the encoder's
    work on this wave from an earlier replay, and kept for the next (`EncodingCache`)."""
    import torch

    from ..data import split_chunks
    from ..trigger import TriggerState

    trig = getattr(model, "trigger", None)
    if trig is None:
        raise ValueError("--trigger-only needs a model with a sound trigger (`soundflow trigger fit`)")
    path = cache.path(wave, chunk_ms, trig.verifier is not None) if cache is not None else None
    entry = EncodingCache.load(path) if path is not None else {"heard": None, "windows": {}}
    known = (entry["heard"] is not None, len(entry["windows"]))
    summarize = model.summarize if path is None else _memo_summarize(model.summarize, entry["windows"])

    def heard_batches():  # the cached rows, else encoded a batch at a time (kept only for the cache)
        if entry["heard"] is not None:
            yield entry["heard"].to(model.device)
            return
        chunks, kept = torch.from_numpy(split_chunks(wave, chunk_ms)), []
        for i in range(0, len(chunks), batch):
            heard = model.encode_heard(model.features(chunks[i: i + batch].to(model.device)))[1]
            if path is not None:
                kept.append(heard.cpu())
            yield heard
        if path is not None:
            entry["heard"] = torch.cat(kept)

    st, out = TriggerState.of(trig), []
    with torch.inference_mode():
        for heard in heard_batches():
            for j in range(len(heard)):
                st.push(heard[j: j + 1])
                p = st.score(trig, summarize)
                st.last = (0.0, p)  # the LM's part: silent
                reply = p >= threshold
                named = st.heard_name
                text = trig.replies[named[0]] if reply and named is not None and trig.replies else ""
                out.append(TriggerDecision(len(out), p, "<response>" if reply else "<silent>", text))
                if reply:
                    st.replied()
    if path is not None and known != (True, len(entry["windows"])):
        EncodingCache.save(path, entry)
    return out


class TriggerOnlyRunner:
    """A model's sound trigger alone as a `Runner` (`trigger_replies`): for comparing trigger fits
    on a bench in minutes. Its replies are the whole model's wherever the LM's own decision never
    calls for one (on the shipped `mini`, every reply of the proactive bench and of the ambient hour:
    BENCHMARKS.md); no latency is measured."""

    def __init__(self, model, threshold: float, name: str = "", cache: str | Path | None = None):
        if getattr(model, "trigger", None) is None:
            raise ValueError("--trigger-only needs a model with a sound trigger (`soundflow trigger fit`)")
        self.model, self.threshold, self.name = model, float(threshold), name
        self.cache = EncodingCache(cache, model) if cache is not None else None

    def __call__(self, wave: np.ndarray, chunk_ms: int = 400) -> list[TriggerDecision]:
        return trigger_replies(self.model, wave, self.threshold, chunk_ms, cache=self.cache)


def make_runner(model, threshold: float | None = None, chunk_ms: int = 400, *, instruction: str | None = None,
                max_reply_tokens: int = 48, mode: str = "fifo", trigger_only: bool = False,
                trigger_cache: str | Path | None = None) -> Runner:
    """The one runner factory: a backend name, a checkpoint folder or an `AudioLM` becomes an
    `EngineRunner` (one fresh engine session per call, deterministic, fails loudly), or with
    `trigger_only` a `TriggerOnlyRunner` of it (`trigger_cache`: its `EncodingCache` folder); a
    callable runner (a baseline, a test stub) is returned as is. Baselines: `baselines.make_baseline`."""
    if trigger_cache is not None and not trigger_only:
        raise ValueError("--trigger-cache goes with --trigger-only")
    if isinstance(model, (str, Path)) or hasattr(model, "tokenizer") and hasattr(model, "encode"):
        if trigger_only:  # no engine: the trigger is fed directly (`trigger_replies`)
            m, name, thr = served_model(model, threshold)
            return TriggerOnlyRunner(m, thr, name, cache=trigger_cache)
        return EngineRunner(model, threshold=threshold, instruction=instruction, chunk_ms=chunk_ms,
                            max_reply_tokens=max_reply_tokens, mode=mode)
    if trigger_only:
        raise ValueError("--trigger-only needs a model (a name or checkpoint folder), not a baseline")
    if callable(model):
        return model
    raise TypeError(f"expected a model name, checkpoint folder, AudioLM or runner, not {type(model).__name__}")


def runner_name(runner) -> str:
    if isinstance(runner, TriggerOnlyRunner):
        return f"{runner.model.cfg.backend if hasattr(runner.model, 'cfg') else type(runner.model).__name__} (its sound trigger alone)"
    if isinstance(runner, EngineRunner):
        return f"{runner.model.cfg.backend if hasattr(runner.model, 'cfg') else type(runner.model).__name__} (engine)"
    return getattr(runner, "__name__", type(runner).__name__)
