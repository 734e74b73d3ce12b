"""``cai constitution infer``: propose, cluster, test and select principles, then report on a held-out split.

Steps (each model call goes through the JSONL cache in the output folder, so a rerun resumes):

1. read the pairs, shuffle them (seeded) and split them into train, validation and test;
2. the proposer suggests a principle per training pair; suggestions are clustered by meaning and deduplicated;
3. each candidate is tested on the training split (labeler, both orders); a candidate is kept when it votes for the
   human label more often than against it and votes on enough pairs (relevance);
4. kept candidates are added greedily while they raise the validation agreement of the whole constitution;
5. on the test split, the constitution-prompted labeler (mean over its principles' questions), the labeler with no
   constitution (one plain "which is better" question) and a coin are compared, with 95% intervals.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Callable

from cai.backends.base import Backend
from cai.backends.registry import BackendPool
from cai.backends.spec import ModelSpec
from cai.constitution.infer.cache import CachedModel, CallCache
from cai.constitution.infer.config import InferConfig
from cai.constitution.infer.data import Pair, read_pairs, write_pairs_jsonl
from cai.constitution.infer.propose import cluster, propose
from cai.constitution.infer.report import render_markdown
from cai.constitution.infer.synthetic import make_pairs
from cai.constitution.infer.templates import make_principle, preference_question, principle_text, slug
from cai.constitution.infer.vote import PLAIN_QUESTION, agreement, combined, greedy_select, pair_scores, preference_matrix, votes
from cai.constitution.infer.yamlout import write_constitution
from cai.constitution.schema import Constitution
from cai.data.io import atomic_write_text, write_json
from cai.errors import ModelError
from cai.evaluate.stats import bootstrap_ci, mean, wilson


def split(pairs: list[Pair], cfg: InferConfig) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Seeded shuffle, then train / validation / test; each split gets at least one pair."""
    rows = list(pairs)
    random.Random(f"{cfg.seed}:split").shuffle(rows)
    if cfg.max_pairs:
        rows = rows[: cfg.max_pairs]
    n = len(rows)
    n_train = max(1, min(n - 2, round(n * cfg.train_fraction)))
    n_val = max(1, min(n - n_train - 1, round(n * cfg.val_fraction)))
    return rows[:n_train], rows[n_train:n_train + n_val], rows[n_train + n_val:]


def _interval(scores: list[float], cfg: InferConfig) -> list[float] | None:
    """Paired bootstrap interval of a mean (used for the difference of two labelers)."""
    ci = bootstrap_ci(scores, mean, n=cfg.bootstrap, seed=cfg.seed)
    return None if ci is None else [ci[0], ci[1]]


def _rate_interval(scores: list[float]) -> list[float]:
    """Wilson interval of an agreement rate; a tie counts as half an agreement."""
    lo, hi = wilson(sum(scores), len(scores))  # type: ignore[arg-type]  # a half-count is a valid proportion
    return [lo, hi]


def _heldout(const_p: list[float | None] | None, plain_p: list[float | None], cfg: InferConfig) -> dict:
    """Agreement with the labels on the test split: constitution (when there is one), no constitution, a coin."""
    n = len(plain_p)
    plain_s = pair_scores(plain_p)
    half = 1.96 * math.sqrt(0.25 / n)
    h: dict = {"n": n, "constitution": None,
               "no_constitution": {"agreement": agreement(plain_p), "ci95": _rate_interval(plain_s)},
               "chance": {"agreement": 0.5, "ci95": [max(0.0, 0.5 - half), min(1.0, 0.5 + half)]}, "difference": None}
    if const_p is not None:
        const_s = pair_scores(const_p)
        diffs = [a - b for a, b in zip(const_s, plain_s)]
        h["constitution"] = {"agreement": agreement(const_p), "ci95": _rate_interval(const_s)}
        h["difference"] = {"value": mean(diffs), "ci95": _interval(diffs, cfg)}
    return h


def _load_pairs(cfg: InferConfig, out: Path) -> list[Pair]:
    if cfg.input == "synthetic":
        pairs = make_pairs(cfg.synthetic_pairs, seed=cfg.seed)
        write_pairs_jsonl(out / "input.jsonl", pairs)
        return pairs
    return read_pairs(cfg.input, cfg.format)


def run_infer(cfg: InferConfig, *, proposer: Backend | None = None, labeler: Backend | None = None,
              embed_fn: Callable | None = None, pool: BackendPool | None = None,
              log: Callable[[str], None] = lambda s: None) -> dict:
    """Run every step and write the outputs into ``cfg.out``; returns the report as a dict."""
    t0 = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "settings.json", cfg.model_dump(mode="json"))
    pairs = _load_pairs(cfg, out)
    train, val, test = split(pairs, cfg)
    log(f"{len(pairs)} pairs: {len(train)} train, {len(val)} validation, {len(test)} test")
    pool = pool or BackendPool()
    cache = CallCache(out / "cache.jsonl")
    prop = CachedModel(proposer or (lambda: pool.get(cfg.proposer)), ModelSpec.model_validate(cfg.proposer).label(), cache,
                       batch=cfg.batch_size, log=log, role="proposer")
    lab = CachedModel(labeler or (lambda: pool.get(cfg.labeler)), ModelSpec.model_validate(cfg.labeler).label(), cache,
                      batch=cfg.batch_size, log=log, role="labeler")
    if embed_fn is None:
        from cai.embed import embed as embed_fn  # noqa: PLW0127 - the packaged sentence model

    proposals, unusable = propose(prop, train[: cfg.propose_pairs], per_pair=cfg.proposals_per_pair,
                                  temperature=cfg.propose_temperature, max_new_tokens=cfg.propose_tokens, seed=cfg.seed)
    clusters = cluster(proposals, embed_fn, threshold=cfg.cluster_threshold, max_clusters=cfg.max_candidates)
    log(f"{len(proposals)} proposals ({unusable} unusable) -> {len(clusters)} candidate principles")

    questions = [preference_question(c.clause) for c in clusters]
    train_rows = preference_matrix(lab, questions, train) if clusters else []
    candidates = []
    for c, row in zip(clusters, train_rows):
        v = votes(row, train, cfg.relevance_margin)
        kept = len(v.supporting) > len(v.opposing) and v.relevance >= cfg.min_relevance
        candidates.append({"clause": c.clause, "principle": principle_text(c.clause), "proposed": c.size,
                           "wordings": c.members, "proposed_by_pairs": c.pair_ids, "kept": kept, "train": v.as_dict()})
    kept = [i for i, c in enumerate(candidates) if c["kept"]]
    log(f"{len(kept)} of {len(candidates)} candidates kept (for > against, relevance >= {cfg.min_relevance})")

    val_rows = dict(zip(map(str, kept), preference_matrix(lab, [questions[i] for i in kept], val))) if kept else {}
    order = {str(i): (-(candidates[i]["train"]["accuracy"] or 0), -candidates[i]["train"]["relevance"], i) for i in kept}
    chosen_keys, steps = greedy_select(val_rows, order, cfg.max_principles)
    fallback = False
    if kept and not chosen_keys:
        chosen_keys, fallback = [min(order, key=lambda k: order[k])], True
    chosen = [int(k) for k in chosen_keys]
    for s in steps:
        s["principle"] = candidates[int(s["principle"])]["clause"]

    report: dict = {"input": cfg.input, "pairs": len(pairs), "splits": {"train": len(train), "validation": len(val), "test": len(test)},
                    "proposer": prop.label, "labeler": lab.label, "proposals": len(proposals), "unusable_proposals": unusable,
                    "candidates": candidates, "selection_steps": steps, "selection_fallback": fallback}
    if not chosen:  # still measure the labeler with no constitution, so the report says how hard the labels are
        plain = preference_matrix(lab, [PLAIN_QUESTION], test)[0]
        report["heldout"] = _heldout(None, plain, cfg)
        report["heldout"]["pairs"] = {pr.id: {"no_constitution": x} for pr, x in zip(test, plain)}
        report.update(cache={"hits": cache.hits, "misses": cache.misses}, seconds=round(time.monotonic() - t0, 1), principles=[])
        write_json(out / "report.json", report)
        atomic_write_text(out / "report.md", render_markdown(report))
        raise ModelError(f"no candidate principle passed the test on the training split ({len(candidates)} tested; "
                         f"the labeler with no constitution agrees with {100 * agreement(plain):.1f}% of {len(test)} "
                         f"held-out labels); see {out / 'report.md'}",
                         fix="give more pairs, a stronger proposer or labeler (--proposer/--labeler), or lower --min-relevance.")

    test_rows = preference_matrix(lab, [questions[i] for i in chosen] + [PLAIN_QUESTION], test)
    report["heldout"] = _heldout(combined(test_rows[:-1]), test_rows[-1], cfg)
    report["heldout"]["pairs"] = {pr.id: {"constitution": c, "no_constitution": x}  # p(preferred answer) per test pair
                                  for pr, c, x in zip(test, combined(test_rows[:-1]), test_rows[-1])}
    report["heldout"]["validation_agreement"] = agreement(combined([val_rows[k] for k in chosen_keys]))
    taken: set[str] = set()
    principles, notes, listed = [], {}, []
    for i, row in zip(chosen, test_rows):
        c = candidates[i]
        pid = slug(c["clause"], taken)
        principles.append(make_principle(pid, c["clause"], tags=["inferred"]))
        tv = votes(row, test, cfg.relevance_margin).as_dict()
        tr = c["train"]
        listed.append({"id": pid, "principle": c["principle"], "train": tr, "test": tv})
        acc = "n/a" if tr["accuracy"] is None else f"{tr['accuracy']:.2f}"
        notes[pid] = [f"{c['principle']}",
                      f"training split: accuracy {acc} ({tr['for']} for, {tr['against']} against), relevance {tr['relevance']:.2f}",
                      f"supporting pairs: {', '.join(tr['supporting_pairs'][:12]) or '-'}{' ...' if len(tr['supporting_pairs']) > 12 else ''}",
                      f"opposing pairs: {', '.join(tr['opposing_pairs'][:12]) or '-'}{' ...' if len(tr['opposing_pairs']) > 12 else ''}"]
    report["principles"] = listed
    const = Constitution(name=cfg.name, version="0.1", description=f"Inferred from {len(pairs)} preference pairs "
                         f"({cfg.input}) by cai constitution infer.", principles=principles)
    h = report["heldout"]
    header = [f"Inferred by `cai constitution infer` from {cfg.input} ({len(pairs)} pairs); proposer {prop.label}, labeler {lab.label}.",
              f"Held-out agreement ({len(test)} pairs): constitution {h['constitution']['agreement']:.3f}, "
              f"no constitution {h['no_constitution']['agreement']:.3f}, chance 0.5. Details: report.md."]
    write_constitution(out / "constitution.yaml", const, notes, header)
    report.update(cache={"hits": cache.hits, "misses": cache.misses}, seconds=round(time.monotonic() - t0, 1),
                  constitution=str(out / "constitution.yaml"))
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    return report
