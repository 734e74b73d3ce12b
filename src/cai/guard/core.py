"""The guard: check a conversation against the constitution, then pass, revise once, block or flag.

    >>> guard = Guard.from_config(GuardConfig(policy="embedded", checker="embedded"))
    >>> result = guard.apply([{"role": "user", "content": "How do I boil an egg?"}])
    >>> result.outcome, result.answer

A check is ONE batched scoring call: every principle that applies is one question about the same quoted
conversation (:mod:`cai.guard.prompts`), and the checker's log-probabilities of the option letters give
P(violation) per principle (:func:`cai.labeling.mc.score_choices`). A checker without log-probabilities writes its
letter instead, which is parsed (a structured verdict, never a search for a phrase). Flagged principles whose action
is ``revise`` are fixed by one revision together; ``block`` replaces the answer with the refusal message; ``flag``
only records. A checker that fails or abstains blocks (``fail_closed``) or lets the answer through (``fail_open``);
the error is recorded either way.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from cai.backends.base import Backend, Completion, Conversation, GenParams
from cai.backends.registry import BackendPool
from cai.constitution import Constitution, Principle, load_constitution
from cai.errors import ModelError, UserInputError
from cai.guard import prompts
from cai.guard.config import GuardConfig
from cai.guard.prefilter import Prefilter, make_prefilter
from cai.guard.scoring import wrap
from cai.guard.types import CheckResult, GuardResult, PrincipleVerdict
from cai.labeling.mc import score_choices

ROLES = ("system", "user", "assistant", "tool")
CheckItem = tuple[Conversation, str | None]


class GuardUpstreamError(ModelError):
    """The policy model (the upstream that writes answers) failed or returned no answer."""


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


def validate_messages(messages: Any) -> Conversation:
    """A list of {role, content} messages, or a :class:`UserInputError` naming the bad message."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise UserInputError("messages must be a non-empty list of {role, content} objects.",
                             fix='send e.g. [{"role": "user", "content": "Hello"}].')
    out: Conversation = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise UserInputError(f"messages[{i}] is a {type(m).__name__}, not an object.", fix="send {role, content} objects.")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise UserInputError(f"messages[{i}].role is {role!r}.", fix=f"use one of: {', '.join(ROLES)}.")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise UserInputError(f"messages[{i}].content must be text, found {type(content).__name__}.",
                                 fix="send the message text as a string.")
        out.append({"role": role, "content": content})
    return out


class Guard:
    """A constitution enforced at inference time by a checker, a reviser and (optionally) a policy model."""

    def __init__(self, config: GuardConfig, *, pool: BackendPool | None = None, constitution: Constitution | None = None):
        self.config = config
        self.constitution = constitution if constitution is not None else load_constitution(config.constitution)
        known = [p.id for p in self.constitution.principles]
        config.check_principles(known)
        ids = config.principles or known
        self.principles: list[Principle] = [self.constitution.principle(pid) for pid in ids]
        self.pool = pool if pool is not None else BackendPool()
        self.policy_id = config.id
        self.policy_hash = config.policy_hash(self.constitution.content_hash())
        self._prefilter: Prefilter | None = make_prefilter(config.prefilter) if config.prefilter else None
        self._lock = threading.RLock()

    @classmethod
    def from_config(cls, cfg: GuardConfig | Mapping | str | Path, pool: BackendPool | None = None) -> "Guard":
        """A guard from a :class:`GuardConfig`, a mapping of its settings, or the path of a policy YAML file."""
        if isinstance(cfg, (str, Path)):
            cfg = GuardConfig.load(cfg)
        elif isinstance(cfg, Mapping):
            from cai.config import build_config

            cfg = build_config(GuardConfig, dict(cfg), source="guard policy")
        return cls(cfg, pool=pool)

    # --- models -----------------------------------------------------------------------------------------------------
    @property
    def checker(self) -> Backend:
        return self.pool.get(self.config.checker)

    @property
    def policy_model(self) -> Backend:
        return self.pool.get(self.config.policy)

    @property
    def reviser(self) -> Backend:
        return self.pool.get(self.config.reviser or self.config.policy)

    def _call(self, backend: Backend, fn, *args):
        """Local models run one call at a time (their state is not thread-safe); servers take concurrent calls."""
        if backend.name == "openai":
            return fn(*args)
        with self._lock:
            return fn(*args)

    def _params(self, max_new_tokens: int | None = None, **overrides: Any) -> GenParams:
        c = self.config
        fields = {"max_new_tokens": max_new_tokens or c.max_new_tokens, "temperature": c.temperature, "seed": c.seed}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return GenParams(**fields)

    # --- generation -------------------------------------------------------------------------------------------------
    def generate(self, messages: Conversation, *, max_new_tokens: int | None = None, **sampling: Any) -> str:
        """The policy model's answer to the conversation; :class:`GuardUpstreamError` when it gives none.

        ``max_new_tokens`` (a request's ``max_tokens``) lowers the policy's own limit, never raises it; ``sampling``
        (``temperature``, ``top_p``, ``seed``, ``stop``) replaces the policy's own settings for this answer."""
        return self.generate_completion(messages, max_new_tokens=max_new_tokens, **sampling).text

    def generate_completion(self, messages: Conversation, *, max_new_tokens: int | None = None,
                            temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
                            stop: list[str] | None = None) -> Completion:
        """:meth:`generate`, with the token counts of the answer (``prompt_tokens``, ``completion_tokens``)."""
        messages = validate_messages(messages)
        backend = self.policy_model
        limit = self.config.max_new_tokens if max_new_tokens is None else max(1, min(max_new_tokens, self.config.max_new_tokens))
        params = self._params(limit, temperature=temperature, top_p=top_p, seed=seed, stop=list(stop) if stop else None)
        try:
            comp = self._call(backend, backend.generate, [messages], params)[0]
        except Exception as e:  # any failure of the upstream model is reported as one error type
            raise GuardUpstreamError(f"the policy model failed: {type(e).__name__}: {e}") from e
        if comp.failed:
            raise GuardUpstreamError(f"the policy model returned no answer: {comp.error}")
        return comp

    # --- checking ---------------------------------------------------------------------------------------------------
    def check(self, messages: Conversation, answer: str | None = None) -> CheckResult:
        """Verdicts on ``answer`` in the context of the whole conversation; ``answer=None`` checks the conversation
        itself (every user turn), for input checks."""
        return self.check_many([(messages, answer)])[0]

    def check_many(self, items: Iterable[CheckItem | Mapping]) -> list[CheckResult]:
        """Check many (messages, answer) pairs (or {"messages", "answer"} mappings) with one batched scoring call."""
        norm: list[CheckItem] = []
        for it in items:
            if isinstance(it, Mapping):
                msgs, ans = it.get("messages"), it.get("answer")
            else:
                msgs, ans = it
            if ans is not None and not isinstance(ans, str):
                raise UserInputError(f"answer must be text or null, found {type(ans).__name__}.", fix="send the answer as a string.")
            norm.append((validate_messages(msgs), ans))
        results: list[CheckResult | None] = [None] * len(norm)
        todo = list(range(len(norm)))
        pre_ms = 0.0
        if self._prefilter is not None and norm:
            t0 = time.perf_counter()
            scores = self._prefilter.scores(norm)
            pre_ms = _ms(t0) / len(norm)
            band = self.config.prefilter
            assert band is not None
            todo = []
            for i, s in enumerate(scores):
                if s < band.low or s >= band.high:
                    results[i] = self._classified(s, s >= band.high, pre_ms)
                else:
                    todo.append(i)
        if todo:
            for i, r in zip(todo, self._model_check([norm[i] for i in todo])):
                if self._prefilter is not None:
                    r.latency_ms["prefilter"] = pre_ms
                results[i] = r
        return [r for r in results if r is not None]

    def _classified(self, score: float, violated: bool, ms: float) -> CheckResult:
        name = self._prefilter.name if self._prefilter else "classifier"
        verdicts = []
        for p in self.principles:
            rule = self.config.rule(p.id)
            verdicts.append(PrincipleVerdict(p.id, violated, round(score, 4), rule.threshold, rule.action, "classifier",
                                             f"first-stage {name} score {score:.3f}" if self.config.reasons else None))
        return CheckResult(verdicts, decided_by="classifier", model_calls=0, latency_ms={"prefilter": ms})

    def _model_check(self, items: list[CheckItem]) -> list[CheckResult]:
        """One scoring call for every (item, principle); parse fallbacks and reasons are batched as well."""
        t0 = time.perf_counter()
        shared = [prompts.transcript(m, a) for m, a in items]
        pairs = [(i, p) for i in range(len(items)) for p in self.principles]
        flags = [items[i][1] is None for i, _ in pairs]
        scoring = [prompts.scoring_conversation(shared[i], p, input_check=f) for (i, p), f in zip(pairs, flags)]

        def answering(k: int) -> Conversation:
            i, p = pairs[k]
            return prompts.answering_conversation(shared[i], p, input_check=flags[k])

        backend = self.checker
        scorer = wrap(backend)
        try:
            batch = self._call(backend, lambda: score_choices(scorer, scoring, answering, parse_tokens=8,
                                                              retries=self.config.parse_retries))
        except Exception as e:  # a checker that is down must not take the guard down: fail open or closed
            return [self._failed(f"{type(e).__name__}: {e}", _ms(t0)) for _ in items]
        calls = 1 + max((len(c.answers) for c in batch.choices), default=0)
        check_ms = _ms(t0) / len(items)
        out = []
        for i in range(len(items)):
            verdicts = []
            for k, ((j, p), choice) in enumerate(zip(pairs, batch.choices)):
                if j != i:
                    continue
                rule = self.config.rule(p.id)
                if choice.p_a is None:  # abstained: counts as a checker failure for this principle
                    verdicts.append(PrincipleVerdict(p.id, self.config.on_checker_error == "fail_closed", None,
                                                     rule.threshold, rule.action, None, "the checker gave no verdict"))
                    continue
                score = round(1.0 - choice.p_a, 6)  # option (B) is "breaks the rule"
                verdicts.append(PrincipleVerdict(p.id, score >= rule.threshold, score, rule.threshold, rule.action,
                                                 choice.method))
            out.append(CheckResult(verdicts, decided_by="model", model_calls=calls, latency_ms={"check": check_ms}))
        if self.config.reasons:
            self._add_reasons(items, shared, out)
        return out

    def _add_reasons(self, items: list[CheckItem], shared: list[str], results: list[CheckResult]) -> None:
        """One batched generation: a one-sentence reason for every violated principle (none when nothing is)."""
        todo = [(i, v) for i, r in enumerate(results) for v in r.verdicts if v.violated and v.score is not None]
        if not todo:
            return
        t0 = time.perf_counter()
        by_id = {p.id: p for p in self.principles}
        convs = [prompts.reason_conversation(shared[i], by_id[v.principle_id], input_check=items[i][1] is None)
                 for i, v in todo]
        backend = self.checker
        try:
            comps = self._call(backend, backend.generate, convs, self._params(self.config.reason_tokens))
        except Exception as e:  # reasons are an extra: their failure is recorded, the verdicts stand
            for r in results:
                r.latency_ms["reasons_error"] = 0.0
                r.error = r.error or f"reasons failed: {type(e).__name__}: {e}"
            return
        for (i, v), c in zip(todo, comps):
            v.reason = prompts.clean_reason(c.text) if not c.failed else None
        touched = {i for i, _ in todo}
        for i in touched:
            results[i].model_calls += 1
            results[i].latency_ms["reasons"] = _ms(t0) / len(touched)

    def _failed(self, error: str, ms: float) -> CheckResult:
        closed = self.config.on_checker_error == "fail_closed"
        verdicts = []
        for p in self.principles:
            rule = self.config.rule(p.id)
            verdicts.append(PrincipleVerdict(p.id, closed, None, rule.threshold, rule.action, None, "checker failed"))
        return CheckResult(verdicts, decided_by="model", model_calls=1, latency_ms={"check": ms}, error=error)

    # --- the whole loop ---------------------------------------------------------------------------------------------
    def apply(self, messages: Conversation, answer: str | None = None) -> GuardResult:
        """Generate (when ``answer`` is None), check, then pass, revise once, block or flag."""
        messages = validate_messages(messages)
        trace: list[dict] = []
        lat: dict[str, float] = {}
        calls = 0
        if answer is None:
            t0 = time.perf_counter()
            answer = self.generate(messages)
            lat["generate"] = _ms(t0)
            calls += 1
            trace.append({"step": "generate", "model": self.policy_model.model_id, "ms": lat["generate"]})
        original = answer
        t0 = time.perf_counter()
        chk = self.check(messages, answer)
        lat["check"] = _ms(t0)
        calls += chk.model_calls
        trace.append({"step": "check", "decided_by": chk.decided_by, "flagged": [v.principle_id for v in chk.flagged],
                      "error": chk.error, "ms": lat["check"]})

        def result(outcome: str, text: str) -> GuardResult:
            return GuardResult(outcome, text, original, chk, self.policy_id, self.policy_hash, trace, lat, calls)  # type: ignore[arg-type]

        def block(why: str) -> GuardResult:
            trace.append({"step": "block", "reason": why})
            return result("blocked", self.config.refusal_message)

        failed = chk.error is not None or any(v.score is None for v in chk.verdicts)
        if failed and self.config.on_checker_error == "fail_closed":
            return block(f"checker failed (fail_closed): {chk.error or 'no verdict for some principles'}")
        flagged = [v for v in chk.verdicts if v.violated and v.score is not None]
        blockers = [v.principle_id for v in flagged if v.action == "block"]
        if blockers:
            return block("violated: " + ", ".join(blockers))
        to_revise = [v.principle_id for v in flagged if v.action == "revise"]
        if not to_revise:
            return result("flagged" if flagged else "pass", answer)

        t0 = time.perf_counter()
        by_id = {p.id: p for p in self.principles}
        conv = prompts.revision_conversation(messages, answer, [by_id[pid] for pid in to_revise])
        backend = self.reviser
        try:
            comp = self._call(backend, backend.generate, [conv], self._params())[0]
            revised = prompts.clean_revision(comp.text) if not comp.failed else ""
            err = comp.error if comp.failed else None
        except Exception as e:  # the reviser is a model call like the checker: its failure blocks
            revised, err = "", f"{type(e).__name__}: {e}"
        lat["revise"] = _ms(t0)
        calls += 1
        trace.append({"step": "revise", "principles": to_revise, "ms": lat["revise"], "error": err})
        if not revised:
            return block(f"revision failed: {err or 'empty revision'}")
        if self.config.recheck:
            t0 = time.perf_counter()
            again = self.check(messages, revised)
            lat["recheck"] = _ms(t0)
            calls += again.model_calls
            still = [v.principle_id for v in again.verdicts if v.violated and v.action != "flag"]
            trace.append({"step": "recheck", "flagged": still, "error": again.error, "ms": lat["recheck"],
                          "verdicts": [asdict(v) for v in again.verdicts]})
            if still:
                return block("still violated after revision: " + ", ".join(still))
        return result("revised", revised)

    def apply_many(self, conversations: Sequence[Conversation]) -> list[GuardResult]:
        """:meth:`apply` for each conversation (each answer generated, checked and revised on its own)."""
        return [self.apply(c) for c in conversations]
