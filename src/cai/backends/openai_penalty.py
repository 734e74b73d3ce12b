"""How ``repetition_penalty`` reaches an OpenAI-compatible server so that it means what it means locally.

The local backends penalize only the tokens the answer has produced. vLLM's ``repetition_penalty`` field also
penalizes every prompt token: the words of a revision request that asks for a refusal become less likely, and so
does the chat template's end-of-turn token, which every prompt holds, so answers run to the token limit. Two routes:

* ``plugin``: the server runs the toolkit's logits processor (``cai/resources/vllm/cai_answer_penalty.py``, loaded
  with ``--logits-processors cai_answer_penalty:AnswerRepetitionPenalty``; ``scripts/serve_vllm_cpu.sh`` does it).
  The request carries ``vllm_xargs: {"answer_repetition_penalty": p}``: the same penalty as locally, on the answer.
* ``field``: the ``repetition_penalty`` extension field, plus a ``logit_bias`` on the end-of-turn token (its id
  looked up once with the server's ``/tokenize``) of ``end_of_turn_logit * (1 - 1/p)``: what dividing a logit of
  that size by the penalty takes away. The default 20 is where SmolLM2-135M-Instruct's end-of-turn logit sits when
  it ends an answer (median 21.3 over 6 natural ends). The rest of the prompt stays penalized; the manifest says so.

``auto`` (the default) asks the server once, with a one-token request carrying an invalid plugin value: a server
running the plugin refuses it with HTTP 400 naming the key, any other server ignores or rejects it otherwise.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Literal

import httpx

PLUGIN_KEY = "answer_repetition_penalty"
Mode = Literal["auto", "plugin", "field"]
FIELD_SCOPE_NOTE = ("the server's repetition_penalty also penalizes prompt tokens (vLLM); the end-of-turn token is "
                    "offset, the rest of the prompt is not (run the server with the toolkit's answer-penalty plugin "
                    "for the local behaviour)")


class ServerPenalty:
    """Chooses the route once per backend and gives the request fields for a penalty."""

    def __init__(self, client: httpx.Client, base_url: str, model: str, *, mode: Mode = "auto",
                 end_of_turn: str = "<|im_end|>", end_of_turn_logit: float = 20.0, timeout_s: float = 10.0,
                 note: Callable[[str, str], None] = lambda field, why: None):
        self._client = client
        self._v1 = base_url.rstrip("/")
        self._root = self._v1[: -len("/v1")] if self._v1.endswith("/v1") else self._v1
        self.model = model
        self.mode: Mode = mode
        self.end_of_turn = end_of_turn
        self.end_of_turn_logit = end_of_turn_logit
        self.timeout_s = timeout_s
        self._note = note
        self._eot_id: int | None | bool = False  # False: not looked up yet
        self._lock = threading.Lock()

    def fields(self, penalty: float, dropped: set[str]) -> dict[str, Any]:
        """The request fields that carry ``penalty`` (none for 1)."""
        if penalty == 1.0:
            return {}
        with self._lock:
            if self.mode == "auto":
                self.mode = "plugin" if self._has_plugin() else "field"
            if self.mode == "field" and self._eot_id is False:
                self._eot_id = self._token_id(self.end_of_turn) if self.end_of_turn else None
                if self._eot_id is None and self.end_of_turn:
                    self._note("repetition_penalty_end_of_turn_offset",
                               f"the server's /tokenize did not give one token id for {self.end_of_turn!r}, so the "
                               "penalty it puts on the prompt's end-of-turn token is not offset")
            if self.mode == "field":
                self._note("repetition_penalty_scope", FIELD_SCOPE_NOTE)
        if self.mode == "plugin":
            return {"vllm_xargs": {PLUGIN_KEY: penalty}}
        out: dict[str, Any] = {"repetition_penalty": penalty}
        if isinstance(self._eot_id, int) and not isinstance(self._eot_id, bool) and "logit_bias" not in dropped:
            out["logit_bias"] = {str(self._eot_id): round(self.end_of_turn_logit * (1.0 - 1.0 / penalty), 4)}
        return out

    def describe(self) -> dict:
        if self.mode == "plugin":
            return {"repetition_penalty_route": "plugin (answer tokens only, as locally)"}
        if self.mode == "field":
            d: dict[str, Any] = {"repetition_penalty_route": "field (prompt and answer tokens)"}
            if isinstance(self._eot_id, int) and not isinstance(self._eot_id, bool):
                d["end_of_turn_offset"] = {"token": self.end_of_turn, "id": self._eot_id,
                                           "bias": f"{self.end_of_turn_logit} * (1 - 1/penalty)"}
            return d
        return {}

    # ------------------------------------------------------------------ server probes

    def _has_plugin(self) -> bool:
        body = {"model": self.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                "temperature": 0, "vllm_xargs": {PLUGIN_KEY: 0.5}}
        try:
            resp = self._client.post(f"{self._v1}/chat/completions", json=body, timeout=self.timeout_s)
        except httpx.HTTPError:
            return False
        return resp.status_code in (400, 422) and PLUGIN_KEY in resp.text

    def _token_id(self, text: str) -> int | None:
        try:
            resp = self._client.post(f"{self._root}/tokenize", timeout=self.timeout_s,
                                     json={"model": self.model, "prompt": text, "add_special_tokens": False})
            tokens = resp.json().get("tokens") if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        if isinstance(tokens, list) and len(tokens) == 1 and isinstance(tokens[0], int):
            return int(tokens[0])
        return None
