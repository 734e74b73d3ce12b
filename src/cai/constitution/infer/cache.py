"""A JSONL cache of model calls, so an interrupted ``infer`` or ``collect`` run resumes where it stopped.

Every request (one generation, or one two-option question) is keyed by the SHA-256 of its canonical JSON: the model's
label, the kind of call, the conversation and the sampling settings (with the request's own seed). A batch sends
only the requests not in the cache, and appends each answer to the file as soon as its batch returns, so a rerun
with the same settings makes no model call for the work already done.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from cai.backends.base import Backend, Conversation, GenParams
from cai.errors import UserInputError
from cai.labeling.mc import score_choices


def request_key(payload: dict[str, Any]) -> str:
    canon = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


class CallCache:
    """Answers by request key, read from and appended to ``path`` (one JSON object a line)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._data: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0
        if self.path.exists():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    self._data[rec["key"]] = rec["value"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    if n == len(lines):  # a last line cut by an interrupted write: drop it, ask that request again
                        self.path.write_text("".join(x + "\n" for x in lines[:-1]), encoding="utf-8")
                        continue
                    raise UserInputError(f"{self.path}:{n}: not a cache record (JSON with 'key' and 'value').",
                                         fix=f"delete {self.path} to start without a cache.") from None

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def put_many(self, items: Sequence[tuple[str, Any]]) -> None:
        if not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for key, value in items:
                self._data[key] = value
                f.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
            f.flush()


class CachedModel:
    """A backend whose generations and two-option scores go through a :class:`CallCache`.

    ``backend`` may be a function that builds it: the model is then loaded only when a request misses the cache, so
    a run resumed from a complete cache loads no model at all.
    """

    def __init__(self, backend: Backend | Callable[[], Backend], label: str, cache: CallCache, *, batch: int = 64,
                 log: Callable[[str], None] | None = None, role: str = "model"):
        self._backend = backend
        self.label = label
        self.cache = cache
        self.batch = batch
        self.log = log
        self.role = role

    @property
    def backend(self) -> Backend:
        if not isinstance(self._backend, Backend):
            self._backend = self._backend()
        return self._backend

    def generate(self, conversations: Sequence[Conversation], params: GenParams, seeds: Sequence[int]) -> list[str | None]:
        """One text per conversation (``None`` for a failed row); request ``i`` is sampled with ``seeds[i]``."""
        keys = [request_key({"kind": "generate", "model": self.label, "conv": c, "max_new_tokens": params.max_new_tokens,
                             "temperature": params.temperature, "top_p": params.top_p, "stop": params.stop,
                             "seed": int(s)}) for c, s in zip(conversations, seeds)]
        self._fill(keys, lambda todo: self._gen(conversations, params, seeds, todo))
        return [self.cache.get(k)["text"] for k in keys]

    def _gen(self, conversations, params: GenParams, seeds, todo: list[int]) -> list[Any]:
        p = GenParams(max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                      stop=list(params.stop), seeds=[int(seeds[i]) for i in todo])
        outs = self.backend.generate([conversations[i] for i in todo], p)
        return [{"text": None if o.failed else o.text} for o in outs]

    def choose(self, scoring: Sequence[Conversation], answering: Callable[[int], Conversation], *,
               parse_tokens: int = 8, retries: int = 1) -> list[float | None]:
        """P(option A) of every two-option question (``None``: the labeler abstained), via ``score_choices``."""
        keys = [request_key({"kind": "choose", "model": self.label, "conv": c, "parse_tokens": parse_tokens,
                             "retries": retries}) for c in scoring]

        def run(todo: list[int]) -> list[Any]:
            batch = score_choices(self.backend, [scoring[i] for i in todo], lambda j: answering(todo[j]),
                                  parse_tokens=parse_tokens, retries=retries, seed=lambda attempt: 1000 + attempt)
            return [{"p_a": c.p_a, "method": c.method} for c in batch.choices]

        self._fill(keys, run)
        return [self.cache.get(k)["p_a"] for k in keys]

    def _fill(self, keys: list[str], compute: Callable[[list[int]], list[Any]]) -> None:
        todo, seen = [], set()
        for i, k in enumerate(keys):
            if k in self.cache:
                self.cache.hits += 1
            elif k not in seen:
                seen.add(k)
                todo.append(i)
        self.cache.misses += len(todo)
        for start in range(0, len(todo), self.batch):
            part = todo[start:start + self.batch]
            values = compute(part)
            self.cache.put_many([(keys[i], v) for i, v in zip(part, values)])
            if self.log:
                self.log(f"{self.role}: {start + len(part)}/{len(todo)} new requests done")
