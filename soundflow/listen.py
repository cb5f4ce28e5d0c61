"""`soundflow listen AUDIO`: run the streaming engine on a file (or raw PCM on stdin).

Plain output is a timeline: one line per reply (time, P(response), text) and a compact line
every 10 s of audio (silent chunks as dots, responses as `R`). `--jsonl` prints one JSON object
per event (`decision` and `response`; the schema of the server's events in docs/server-protocol.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from .audio import CHUNK_MS, SAMPLE_RATE, AudioError, iter_audio_file, iter_chunks, iter_microphone, iter_pcm_stream

_TRAINED_HINT = ("note: model {name!r} is an untrained backend (random adapter, no streaming training): "
                 "its decisions and replies are not meaningful; pass a checkpoint folder with --model")


def _load(model):
    """(AudioLM, display name, trained?) from a name / checkpoint folder / AudioLM instance."""
    from .loading import load_model
    from .model import AudioLM

    if isinstance(model, AudioLM):
        return model, model.cfg.backend, model.info.trained
    m = load_model(str(model))
    return m, str(model), m.info.trained


@contextlib.contextmanager
def _stdout_is_data(jsonl: bool):
    """With `--jsonl`, stdout carries JSON lines only: what libraries print or log there while the
    stream runs goes to stderr (deepspeed, pulled in by accelerate, logs its accelerator choice to
    stdout the first time a process asks for one). Yields the stream the JSON lines go to."""
    out = sys.stdout
    if not jsonl:
        yield out
        return
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    moved = [(h, h.stream) for lg in loggers for h in lg.handlers
             if isinstance(h, logging.StreamHandler) and h.stream in (out, sys.__stdout__)]
    for h, _ in moved:
        h.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # a logger made meanwhile binds stderr too
            yield out
    finally:
        for h, stream in moved:
            h.setStream(stream)


def _fmt_t(t: float) -> str:
    m, s = divmod(t, 60)
    return f"{int(m):02d}:{s:04.1f}"


class _Timeline:
    """Readable plain-text output."""

    def __init__(self, chunk_ms: int, every_s: float = 10.0, out=None):
        self.out = out or sys.stdout
        self.per_line = max(1, int(round(every_s * 1000 / chunk_ms)))
        self.marks: list[str] = []
        self.p: list[float] = []
        self.lat: list[float] = []
        self.start_t = 0.0
        self.chunk_s = chunk_ms / 1000

    def decision(self, ev: dict) -> None:
        if not self.marks:
            self.start_t = ev["t"] - self.chunk_s
        self.marks.append("R" if ev["decision"] == "response" else ("·" if ev.get("drained") else "."))
        self.p.append(ev.get("p_response", 0.0))
        self.lat.append(ev.get("latency_ms", 0.0))
        if len(self.marks) >= self.per_line:
            self.flush(ev["t"])

    def flush(self, t_end: float | None = None) -> None:
        if not self.marks:
            return
        t_end = t_end if t_end is not None else self.start_t + len(self.marks) * self.chunk_s
        print(f"{_fmt_t(self.start_t)}–{_fmt_t(t_end)}  {''.join(self.marks):<{self.per_line}}  "
              f"P max {max(self.p):.2f}  latency p50 {float(np.median(self.lat)):.0f} ms", file=self.out, flush=True)
        self.marks, self.p, self.lat = [], [], []

    def response(self, ev: dict, p: float | None) -> None:
        self.flush()
        ptxt = f"P={p:.2f} " if p is not None else ""
        print(f"{_fmt_t(ev['t'])}  ▶ {ptxt}{ev['text']!r}{'  (cut: ' + ev['cut'] + ')' if ev.get('cut') else ''}",
              file=self.out, flush=True)


def _plot(path: str, wave: np.ndarray, decisions: list[dict], responses: list[dict], chunk_ms: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a0, a1) = plt.subplots(2, 1, figsize=(12, 5), sharex=True, gridspec_kw={"height_ratios": [1, 1]})
    if len(wave):
        step = max(1, len(wave) // 20000)
        t = np.arange(0, len(wave), step) / SAMPLE_RATE
        a0.plot(t, wave[::step], lw=0.4, color="0.3")
    a0.set_ylabel("waveform")
    ts = [d["t"] - chunk_ms / 2000 for d in decisions]
    a1.step(ts, [d.get("p_response", 0.0) for d in decisions], where="mid", lw=1, label="P(<response>)")
    a1.set_ylim(-0.02, 1.02)
    a1.set_ylabel("P(response)")
    a1.set_xlabel("time (s)")
    for r in responses:
        for ax in (a0, a1):
            ax.axvline(r["t"], color="tab:red", lw=0.8, alpha=0.7)
        text = "".join(ch if ch.isprintable() else "?" for ch in r["text"])
        text = text if len(text) <= 40 else text[:37] + "..."
        a0.annotate(text, (r["t"], 1.0), xycoords=("data", "axes fraction"), rotation=30, fontsize=7,
                    color="tab:red", va="bottom", ha="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def listen(audio, model="mini", instruction: str | None = None, chunk_ms: int = CHUNK_MS, realtime: bool = False,
           jsonl: bool = False, plot: str | None = None, threshold: float | None = None, mode: str = "fifo",
           max_reply_tokens: int = 48, tokens: bool = False, quant: str | None = "auto",
           device: str | None = None, instruction_audio=None) -> int:
    """Stream `audio` (a path, `-` for raw 16 kHz s16le PCM on stdin, `mic` for the microphone,
    or a float32 array)
    through the engine and print the timeline (or JSON lines). Returns an exit code.

    `model`: a backend name, a checkpoint folder, or an AudioLM. `instruction_audio`: a spoken
    instruction (a path, or a 16 kHz float32 array) heard before the stream — the paper's
    audio-instruction setting; with `instruction` too, the text comes first. `tokens`: also print token
    events in JSON lines. `quant="int8"`: optimise the model in place first (see optimize.py);
    `device`: "cpu" (default), "cuda", "auto"."""
    from .engine import Engine, EngineOptions

    try:
        if isinstance(audio, np.ndarray):
            wave = audio.astype(np.float32)
            chunks = iter_chunks(wave, chunk_ms)
        elif str(audio) == "-":
            wave = None
            chunks = iter_pcm_stream(sys.stdin.buffer, chunk_ms)
        elif str(audio) == "mic" and not Path("mic").exists():  # live microphone, paced by the device
            wave = None
            chunks = iter_microphone(chunk_ms)
        else:  # read block by block: a 2-hour file does not have to fit in memory
            wave = None
            chunks = iter_audio_file(audio, chunk_ms)
        spoken = None
        if instruction_audio is not None:
            from .audio import check_pcm, load_audio

            spoken = (check_pcm(instruction_audio, "instruction audio") if isinstance(instruction_audio, np.ndarray)
                      else load_audio(instruction_audio))
    except AudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m, name, trained = _load(model)
    from .optimize import apply_precision

    apply_precision(m, quant, device)
    if not trained:
        print(_TRAINED_HINT.format(name=name), file=sys.stderr, flush=True)

    keep_audio = plot is not None and wave is None
    heard: list[np.ndarray] = []
    bad: list[AudioError] = []

    def source():
        try:
            for c in chunks:
                if keep_audio:
                    heard.append(c)
                yield c
        except AudioError as e:  # the file turned bad part-way (corrupt block, huge samples)
            bad.append(e)

    if threshold is None:  # a calibrated checkpoint carries its own (see calibrate.py)
        from .calibrate import default_threshold

        threshold = default_threshold(m)
    engine = Engine(m, EngineOptions(mode=mode, threshold=threshold, chunk_ms=chunk_ms, instruction=instruction,
                                     max_reply_tokens=max_reply_tokens))
    try:
        sess = engine.session(instruction_audio=spoken)
    except ValueError as e:  # an instruction over max_instruction_tokens (text and audio together)
        print(f"error: {e}", file=sys.stderr)
        return 2
    timeline = None if jsonl else _Timeline(chunk_ms)
    decisions: list[dict] = []
    responses: list[dict] = []
    last_p: dict[int, float] = {}
    t0 = time.perf_counter()
    rc = 0
    with _stdout_is_data(jsonl) as out:
        for ev in sess.run(source(), realtime=realtime):
            typ = ev["type"]
            if typ == "decision":
                decisions.append(ev)
                last_p[ev["chunk"]] = ev.get("p_response", 0.0)
            elif typ == "response":
                responses.append(ev)
            elif typ == "error":
                rc = 1
                print(f"error: {ev['message']}", file=sys.stderr, flush=True)
            if jsonl:
                if typ != "token" or tokens:
                    print(json.dumps(ev, ensure_ascii=False), file=out, flush=True)
            elif typ == "decision":
                timeline.decision(ev)
            elif typ == "response":
                timeline.response(ev, last_p.get(ev["chunk"]))
    wall = time.perf_counter() - t0
    if bad:
        print(f"error: {bad[0]} (stopped there)", file=sys.stderr, flush=True)
        rc = 2
    if timeline is not None:
        timeline.flush()
        n = len(decisions)
        lat = [d["latency_ms"] for d in decisions]
        if n:
            print(f"— {n} chunks ({n * chunk_ms / 1000:.1f} s of audio) in {wall:.1f} s, {len(responses)} replies, "
                  f"decision latency p50 {np.percentile(lat, 50):.0f} ms / p99 {np.percentile(lat, 99):.0f} ms",
                  flush=True)
    if plot:
        w = wave if wave is not None else (np.concatenate(heard) if heard else np.zeros(0, np.float32))
        _plot(plot, w, decisions, responses, chunk_ms)
        print(f"plot written to {plot}", file=sys.stderr)
    return rc
