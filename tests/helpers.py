"""Test doubles shared by several test modules (imported as `from helpers import ...`)."""

from __future__ import annotations

import queue

from soundflow.engine import EngineOptions


class QueueSession:
    """A fake engine session whose events come from a queue: tests (or subclasses, from `feed`
    or `close`) put events on `q`; `None` ends the session as the real engine reports an end
    (`get_event` → None from then on, `finished`). `n` counts the samples fed."""

    def __init__(self):
        self.q, self.n, self.finished = queue.Queue(), 0, False

    def feed(self, pcm):
        self.n += len(pcm)

    def set_instruction(self, text):
        pass

    def close(self):
        self.q.put(None)

    def get_event(self, timeout=None):
        if self.finished:
            return None
        try:
            ev = self.q.get(timeout=timeout)
        except queue.Empty:
            return None
        if ev is None:
            self.finished = True
        return ev

    def crash(self, message: str) -> None:
        """Decide chunk 0, then fail as the real engine reports a crash: an error event, then the end."""
        self.q.put({"type": "decision", "chunk": 0, "t": 0.4, "decision": "silent", "p_response": 0.1,
                    "latency_ms": 1.0})
        self.q.put({"type": "error", "message": message})
        self.q.put(None)


class QueueEngine:
    """A fake engine (what the server needs: `.options` and `.session(instruction=)`) whose
    sessions are `session_class()` instances, a `QueueSession` subclass."""

    options = EngineOptions()

    def __init__(self, session_class: type[QueueSession] = QueueSession):
        self.session_class = session_class

    def session(self, instruction=None):
        return self.session_class()
