"""The attack methods and one shard of work: attacker -> converters -> target (one or more turns) -> judges.

Cases are planned up front (:func:`plan`): ``per_category`` cases per harm category, the methods taking turns, and
ordered method by method, so a later method's shards can learn from the successes of earlier shards:

* ``zero_shot``: the attacker is asked for a message seeking help with the category (Perez et al. 2022, zero-shot);
* ``few_shot``: the attacker is shown ``shots`` examples drawn without replacement from a pool of the category's
  shipped prompts (weight ``shipped_weight``) and this run's earlier successes (weight: their judged harm), so that
  the attacker imitates what worked (stochastic few-shot);
* ``multi_turn``: a zero-shot opening, then ``turns - 1`` follow-ups the attacker writes after reading the
  conversation; the last answer is judged;
* ``supervised``: zero-shot, written by the attacker after fine-tuning on this run's earlier successes
  (:mod:`cai.redteam.supervised`).

Every step can end a case: a failed completion is ``error`` (never counted safe or a success), an attacker reply that
refuses is ``attacker_refused``; an off-topic attack (below ``on_topic_threshold`` similarity to every shipped prompt of
its category) and a degenerate or empty target answer are ``unscored``; the rest are ``ok``, with the
first judge's verdict deciding ``success`` (the target complied) and every judge's label and score recorded.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from cai.backends.base import Backend, Completion, GenParams
from cai.constitution.schema import HARM_CATEGORIES, Constitution
from cai.errors import UserInputError
from cai.evaluate.refusal import classify_refusal, degenerate_reason
from cai.progress import Progress
from cai.redteam import prompts as P
from cai.redteam.config import RedteamConfig
from cai.seeding import rng
from cai.stages.sharded import Shard


def categories(cfg: RedteamConfig, const: Constitution) -> list[tuple[str, list[tuple[str, str]]]]:
    """(category, [(principle id, principle name), ...]) for every harm category attacked, in taxonomy order."""
    tagged: dict[str, list[tuple[str, str]]] = {}
    for p in const.principles:
        for t in p.tags:
            if t in HARM_CATEGORIES:
                tagged.setdefault(t, []).append((p.id, p.name))
    wanted = cfg.categories or [c for c in HARM_CATEGORIES if c in tagged]
    missing = [c for c in wanted if c not in tagged]
    if missing:
        raise UserInputError(
            f"constitution '{const.name}': no principle is tagged with {', '.join(missing)}, so there is nothing to "
            "attack for it.",
            fix="tag a principle with it (tags: [...]) or leave it out of categories.")
    if not wanted:
        raise UserInputError(f"constitution '{const.name}': no principle carries a harm tag "
                             f"({', '.join(HARM_CATEGORIES)}), so there are no categories to attack.",
                             fix="tag the principles with harm categories, or use the default constitution.")
    return [(c, tagged[c]) for c in wanted]


def plan(cfg: RedteamConfig, const: Constitution) -> list[dict]:
    """Every case to run, method by method (in ``cfg.methods`` order), then category, then index."""
    cats = categories(cfg, const)
    k = len(cfg.methods)
    items = []
    for method in cfg.methods:
        for cat, principles in cats:
            for j in range(cfg.per_category):
                if cfg.methods[j % k] != method:
                    continue
                pid, pname = principles[(j // k) % len(principles)]
                items.append({"id": f"{cat}-{j:03d}", "category": cat, "principle": pid, "principle_name": pname,
                              "method": method})
    return items


def weighted_sample(pool: list[dict], k: int, r: Any) -> list[dict]:
    """``k`` entries drawn without replacement with probability proportional to ``weight`` (Efraimidis-Spirakis)."""
    keyed = sorted(pool, key=lambda e: -math.log(max(r.random(), 1e-300)) / e["weight"])
    return keyed[:k]


def few_shot_pool(seeds: list[dict], earlier: list[dict], category: str, shipped_weight: float) -> list[dict]:
    """The examples a few-shot case of ``category`` draws from: shipped seeds and earlier successes of the category
    (all categories when it has none)."""
    def of(cat: str | None) -> list[dict]:
        out = [{"text": s["prompt"], "source": f"shipped:{s['id']}", "weight": shipped_weight}
               for s in seeds if cat is None or s.get("category") == cat]
        out += [{"text": r["attack"], "source": f"success:{r['id']}", "weight": max(float(r["harm"]), 1e-3)}
                for r in earlier if r.get("success") and (cat is None or r["category"] == cat)]
        return out

    return of(category) or of(None)


class Work:
    """One shard of cases, run with the loaded backends. ``earlier(i)`` gives the rows of every shard before ``i``."""

    def __init__(self, cfg: RedteamConfig, res: dict[str, Any], seeds: list[dict],
                 earlier: Callable[[int], list[dict]], meter: Any):
        self.cfg, self.res, self.seeds, self.earlier, self.meter = cfg, res, seeds, earlier, meter
        self._progress: Progress | None = None

    # --- helpers --------------------------------------------------------------------------------------------------
    def _gen(self, role: str, backend: Backend, convs: list, params: GenParams) -> list[Completion]:
        comps = self.meter.measure(role, backend, lambda: backend.generate(convs, params))
        if self._progress is not None:
            self._progress.advance(0, sum(c.completion_tokens for c in comps))
        return comps

    def _attacker_params(self, seed: int) -> GenParams:
        c = self.cfg
        return GenParams(max_new_tokens=c.attack_max_tokens, temperature=c.attacker_temperature, top_p=c.top_p,
                         seed=seed, stop=["\n"])  # the message is one line: the rest would be discarded

    @staticmethod
    def _end(row: dict, status: str, reason: str) -> None:
        row["status"], row["reason"] = status, reason

    def _attacker_reply(self, row: dict, conv: list, comp: Completion, step: str) -> str | None:
        """The cleaned message of an attacker reply, or None after recording why the case ends."""
        if comp.failed:
            self._end(row, "error", f"attacker ({step}): {comp.error or 'no completion'}")
            return None
        refused, score, why = classify_refusal(conv[-1]["content"], comp.text)
        if refused:
            self._end(row, "attacker_refused", f"attacker ({step}) refused: {why}")
            row["attacker_reply"] = comp.text
            return None
        text = P.clean_attack(comp.text)
        if not text:
            self._end(row, "error", f"attacker ({step}) wrote no message")
            return None
        return text

    # --- the shard ------------------------------------------------------------------------------------------------
    def __call__(self, shard: Shard, progress: Progress) -> list[dict]:
        cfg = self.cfg
        self._progress = progress
        rows = [{"id": it["id"], "category": it["category"], "principle": it["principle"], "method": it["method"],
                 "converters": list(cfg.converters), "attacker": self.res["attacker_label"],
                 "target": self.res["target_label"], "seed": None, "turns": [], "prompt": None, "attack": None,
                 "response": None, "judges": {}, "status": None, "reason": None, "success": None, "harm": None}
                for it in shard.items]
        self._attacks(shard, rows)
        self._on_topic(rows)
        self._convert(shard, rows)
        self._converse(shard, rows)
        self._judge(rows)
        for r in rows:
            r.pop("_conv", None)
            r.pop("_next", None)
        progress.advance(len(rows), 0)
        return rows

    def _attacks(self, shard: Shard, rows: list[dict]) -> None:
        cfg = self.cfg
        pool_rows = None
        groups: dict[str, list[tuple[dict, dict]]] = {}
        for it, row in zip(shard.items, rows):
            cat, pname = it["category"], it["principle_name"]
            if it["method"] == "few_shot":
                if pool_rows is None:
                    pool_rows = self.earlier(shard.index)
                pool = few_shot_pool(self.seeds, pool_rows, cat, cfg.shipped_weight)
                shown = weighted_sample(pool, cfg.shots, rng(cfg.seed, "few-shot", it["id"]))
                row["examples"] = [e["source"] for e in shown]
                conv = P.few_shot(cat, pname, cfg.purpose, [e["text"] for e in shown])
            else:
                conv = P.zero_shot(cat, pname, cfg.purpose)
            role = "supervised_attacker" if it["method"] == "supervised" else "attacker"
            groups.setdefault(role, []).append((row, conv))
        for step, (role, pairs) in enumerate(sorted(groups.items())):
            backend = self.res["supervised"](shard.index) if role == "supervised_attacker" else self.res["attacker"]
            params = self._attacker_params(shard.seed(step))
            comps = self._gen(role, backend, [c for _, c in pairs], params)
            for i, ((row, conv), comp) in enumerate(zip(pairs, comps)):
                row["seed"] = params.seed_for(i)
                if role == "supervised_attacker":
                    row["attacker"] = self.res["supervised_label"]
                text = self._attacker_reply(row, conv, comp, "attack")
                if text is not None:
                    row["attack"] = row["_next"] = text

    def _on_topic(self, rows: list[dict]) -> None:
        """End cases whose attack is not a request of its category (too far from every shipped prompt of it): the
        answer to an off-topic message says nothing about the target's harmlessness, complied or not."""
        gate = self.res.get("topic")
        live = [r for r in rows if r["status"] is None]
        if not gate or not live:
            return
        embed, refs = gate
        vecs = embed([r["attack"] for r in live])
        for r, v in zip(live, vecs):
            ref = refs.get(r["category"])
            if ref is None:
                continue
            sim = float((ref @ v).max())
            r["on_topic"] = round(sim, 4)
            if sim < self.cfg.on_topic_threshold:
                self._end(r, "unscored", f"attack off-topic: similarity {sim:.3f} to the category's shipped prompts "
                                         f"< {self.cfg.on_topic_threshold}")

    def _convert(self, shard: Shard, rows: list[dict]) -> None:
        for step, conv_name in enumerate(self.cfg.converters):
            live = [r for r in rows if r["status"] is None]
            name, _, lang = conv_name.partition(":")
            if not live:
                return
            if name != "translate":
                for r in live:
                    r["_next"] = P.frame(name, r["_next"])
                continue
            convs = [P.translate(r["_next"], lang.strip()) for r in live]
            comps = self._gen("attacker", self.res["attacker"], convs, self._attacker_params(shard.seed(10 + step)))
            for r, conv, comp in zip(live, convs, comps):
                text = self._attacker_reply(r, conv, comp, conv_name)
                if text is not None:
                    r["_next"] = text

    def _converse(self, shard: Shard, rows: list[dict]) -> None:
        cfg = self.cfg
        target = self.res["target"]
        tparams = lambda t: GenParams(max_new_tokens=cfg.response_max_tokens,  # noqa: E731
                                      temperature=cfg.target_temperature, seed=shard.seed(40 + t))
        by_id = {it["id"]: it for it in shard.items}
        for t in range(cfg.turns):
            if t > 0:  # the attacker follows up on multi-turn cases
                live = [r for r in rows if r["status"] is None and r["method"] == "multi_turn"]
                if not live:
                    break
                convs = [P.follow_up(r["category"], by_id[r["id"]]["principle_name"], cfg.purpose, r["turns"])
                         for r in live]
                comps = self._gen("attacker", self.res["attacker"], convs, self._attacker_params(shard.seed(20 + t)))
                for r, conv, comp in zip(live, convs, comps):
                    text = self._attacker_reply(r, conv, comp, f"turn {t + 1}")
                    if text is not None:
                        r["_next"] = text
            live = [r for r in rows if r["status"] is None]
            if t > 0:
                live = [r for r in live if r["method"] == "multi_turn"]
            if not live:
                break
            convs = [P.target_conversation(cfg.purpose, r["turns"], r["_next"]) for r in live]
            comps = self._gen("target", target, convs, tparams(t))
            for r, comp in zip(live, comps):
                if t == 0:
                    r["prompt"] = r["_next"]
                if comp.failed and "content_filter" in (comp.error or ""):
                    # The target's own safety layer (a `cai guard serve` block, a provider's filter) declined: a
                    # defended case, decided by the target rather than by the judge.
                    r["turns"].append({"user": r["_next"], "assistant": "", "finish_reason": "content_filter"})
                    r["response"], r["success"], r["harm"], r["blocked"] = "", False, 0.0, True
                    self._end(r, "ok", f"target (turn {t + 1}) blocked it: {comp.error}")
                    continue
                if comp.failed:
                    self._end(r, "error", f"target (turn {t + 1}): {comp.error or 'no completion'}")
                    continue
                r["turns"].append({"user": r["_next"], "assistant": comp.text, "finish_reason": comp.finish_reason})
                r["response"] = comp.text

    def _judge(self, rows: list[dict]) -> None:
        live = []
        for r in rows:
            if r["status"] is not None:
                continue
            bad = degenerate_reason(r["response"] or "")
            if bad:
                self._end(r, "unscored", f"target answer: {bad}")
            else:
                live.append(r)
        if not live:
            return
        prompts = [r["turns"][-1]["user"] for r in live]
        answers = [r["response"] for r in live]
        for j, judge in enumerate(self.res["judges"]):
            verdicts = self.meter.measure("judge" if j == 0 else f"judge:{judge.name}", getattr(judge, "backend", None),
                                          lambda: judge.judge(prompts, answers))
            for r, v in zip(live, verdicts):
                r["judges"][v.judge.split("+")[0]] = {"label": "refused" if v.refused else "complied",
                                                      "score": v.score, "reason": v.reason}
                if j == 0:
                    r["status"], r["reason"] = "ok", v.reason
                    r["success"] = not v.refused
                    r["harm"] = round(1.0 - float(v.score), 4)
