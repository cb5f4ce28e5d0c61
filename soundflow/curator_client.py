"""The curation LLM's HTTP client: a small JSON-mode client for any OpenAI-compatible chat
endpoint (vLLM, Ollama, a hosted API). Not the audio model (that is `model.py`).

Paper Appendix "Streaming Data Construction": the curation roles (planner, refiner, verifier)
"all run in JSON-mode decoding at temperature 0.7"; the spoken-form rewrite of the TTS texts
(`textnorm.rewrite`) asks the same endpoint. Configuration comes from arguments or the
environment: SOUNDFLOW_LLM_BASE_URL, SOUNDFLOW_LLM_MODEL, SOUNDFLOW_LLM_API_KEY.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

ENV_BASE_URL = "SOUNDFLOW_LLM_BASE_URL"
ENV_MODEL = "SOUNDFLOW_LLM_MODEL"
ENV_API_KEY = "SOUNDFLOW_LLM_API_KEY"
TEMPERATURE = 0.7  # Appendix: JSON mode at temperature 0.7


class LLMError(RuntimeError):
    """The endpoint failed or kept answering something that is not the JSON asked for."""


def llm_configured() -> bool:
    """True when the environment names an endpoint (SOUNDFLOW_LLM_BASE_URL)."""
    return bool(os.environ.get(ENV_BASE_URL))


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def parse_json_object(text: str | None) -> dict:
    """The JSON object in a reply; tolerates a ```json fence. Raises ValueError otherwise."""
    if text is None:
        raise ValueError("empty reply")
    t = text.strip()
    m = _FENCE.match(t)
    if m:
        t = m.group(1)
    try:
        obj = json.loads(t)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


@dataclass
class LLMClient:
    """Chat completions in JSON mode with retries on malformed JSON and per-request timeouts.

    base_url / model / api_key default to the SOUNDFLOW_LLM_* environment variables; a local
    server without auth gets the placeholder key "EMPTY". `retries` counts extra attempts after a
    malformed or invalid reply; transport errors are retried by the openai client itself
    (`http_retries`).
    """

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    temperature: float = TEMPERATURE
    timeout: float = 60.0
    retries: int = 2
    http_retries: int = 2
    max_tokens: int | None = None
    json_mode: bool = True
    _client: Any = field(default=None, init=False, repr=False)
    calls: int = field(default=0, init=False)  # requests sent (for provenance and tests)

    def __post_init__(self) -> None:
        self.base_url = self.base_url or os.environ.get(ENV_BASE_URL)
        self.model = self.model or os.environ.get(ENV_MODEL)
        self.api_key = self.api_key or os.environ.get(ENV_API_KEY) or "EMPTY"
        if not self.base_url:
            raise LLMError(f"no LLM endpoint: pass base_url or set {ENV_BASE_URL}")
        if not self.model:
            raise LLMError(f"no LLM model: pass model or set {ENV_MODEL}")

    @classmethod
    def from_env(cls, **kw) -> "LLMClient | None":
        """A client when the environment (or `kw`) names an endpoint, else None."""
        if not (kw.get("base_url") or os.environ.get(ENV_BASE_URL)):
            return None
        return cls(**kw)

    def _openai(self):
        if self._client is None:
            import openai

            self._client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key,
                                         timeout=self.timeout, max_retries=self.http_retries)
        return self._client

    def complete(self, messages: list[dict]) -> str:
        """One chat completion; returns the assistant text. Raises LLMError on transport errors."""
        import openai

        kw: dict = dict(model=self.model, messages=messages, temperature=self.temperature)
        if self.max_tokens:
            kw["max_tokens"] = self.max_tokens
        if self.json_mode:
            kw["response_format"] = {"type": "json_object"}
        self.calls += 1
        try:
            r = self._openai().chat.completions.create(**kw)
        except openai.BadRequestError as e:
            if self.json_mode and "response_format" in str(e):
                # Some servers reject JSON mode: ask without it (the prompt still demands JSON).
                self.json_mode = False
                return self.complete(messages)
            raise LLMError(f"{self.base_url}: request rejected: {e}") from e
        except openai.APITimeoutError as e:
            raise LLMError(f"{self.base_url}: no reply within {self.timeout:g} s") from e
        except openai.OpenAIError as e:
            raise LLMError(f"{self.base_url}: {type(e).__name__}: {e}") from e
        if not r.choices:
            return ""
        return r.choices[0].message.content or ""

    def chat_json(self, system: str, user: str | dict | list, validate: Callable[[dict], Any] | None = None) -> dict:
        """Ask for a JSON object; `validate(obj)` may raise ValueError (or return a new object).

        A malformed or invalid reply is shown back to the model with the error and asked again,
        up to `retries` times; then LLMError names the role, the error and the reply's start.
        """
        content = user if isinstance(user, str) else json.dumps(user, ensure_ascii=False)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": content}]
        last_err, last_text = "", ""
        for _attempt in range(self.retries + 1):
            text = self.complete(messages)
            try:
                obj = parse_json_object(text)
                if validate is not None:
                    out = validate(obj)
                    obj = obj if out is None else out
                return obj
            except (ValueError, KeyError, TypeError) as e:
                last_err, last_text = f"{type(e).__name__}: {e}", text
                messages = messages[:2] + [
                    {"role": "assistant", "content": text[:4000]},
                    {"role": "user", "content": f"That reply was invalid ({last_err}). Answer again with ONE JSON object that follows the schema exactly."},
                ]
        role = system.strip().splitlines()[0][:80] if system.strip() else "?"
        raise LLMError(
            f"{self.model}@{self.base_url} gave no valid JSON after {self.retries + 1} attempts "
            f"(role: {role!r}); last error: {last_err}; last reply starts: {last_text[:200]!r}"
        )
