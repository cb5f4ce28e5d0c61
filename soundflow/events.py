"""The engine's events: small typed records, and their one JSON form (`to_dict`).

`engine.Session` emits these as the dicts `to_dict` returns; `soundflow serve` sends them as
they are and `soundflow listen --jsonl` prints them, so `to_dict` is the contract of
docs/server-protocol.md ("Server → client"): the keys, their order and the rounding
(t to the millisecond, p_response to 4 places, times in ms to 2).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """Exactly one per chunk, in chunk order."""

    chunk: int
    t: float  # seconds of audio heard when the chunk ends
    respond: bool
    p_response: float
    latency_ms: float  # chunk's last sample available → decision
    input_ms: float  # chunk's last sample available → encoded (the input pipeline)
    drained: bool = False  # heard while the decoder was busy, decided silent in a FIFO batch
    barge_in: bool = False  # its audio cut the reply before it

    def to_dict(self) -> dict:
        d = {"type": "decision", "chunk": self.chunk, "t": round(self.t, 3),
             "decision": "response" if self.respond else "silent", "p_response": round(float(self.p_response), 4),
             "latency_ms": round(self.latency_ms, 2), "input_ms": round(self.input_ms, 2)}
        if self.drained:
            d["drained"] = True
        if self.barge_in:
            d["barge_in"] = True
        return d


@dataclass(frozen=True)
class Token:
    """A piece of a reply being generated (whole characters)."""

    chunk: int
    text: str

    def to_dict(self) -> dict:
        return {"type": "token", "chunk": self.chunk, "text": self.text}


@dataclass(frozen=True)
class Response:
    """A complete reply; `cut` says why it ended early ("instruction", "audio", "aborted")."""

    chunk: int
    t: float
    text: str
    cut: str | None = None

    def to_dict(self) -> dict:
        d = {"type": "response", "chunk": self.chunk, "t": round(self.t, 3), "text": self.text}
        if self.cut:
            d["cut"] = self.cut
        return d


@dataclass(frozen=True)
class Error:
    """The session failed and is over."""

    message: str

    def to_dict(self) -> dict:
        return {"type": "error", "message": self.message}


Event = Decision | Token | Response | Error
