"""``cai constitution collect``: filter votes, find opinion groups, rank statements by cross-group consensus, draft
a constitution from the statements that every group supports."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Callable

import numpy as np

from cai.backends.base import Backend
from cai.backends.registry import BackendPool
from cai.backends.spec import ModelSpec
from cai.constitution.collect.config import CollectConfig
from cai.constitution.collect.consensus import StatementStats, statement_stats, threshold_curve
from cai.constitution.collect.draft import rewrite
from cai.constitution.collect.groups import adjusted_rand, find_groups
from cai.constitution.collect.readers import VoteData, read_votes
from cai.constitution.collect.report import render_markdown
from cai.constitution.collect.synthetic import make_votes, write_plain
from cai.constitution.infer.cache import CachedModel, CallCache
from cai.constitution.infer.templates import make_principle, principle_text, slug
from cai.constitution.infer.yamlout import write_constitution
from cai.constitution.schema import Constitution
from cai.data.io import atomic_write_text, write_json
from cai.errors import UserInputError


def apply_filters(data: VoteData, cfg: CollectConfig) -> tuple[VoteData, list[str]]:
    """Drop moderated-out statements (and unmoderated ones unless allowed), then participants with too few votes,
    then statements with too few votes. Every step is logged."""
    log = [f"read {len(data.participants)} participants, {len(data.statements)} statements, {data.n_votes} votes"]
    keep_s = np.array([s.moderated == 1 or (s.moderated == 0 and cfg.include_unmoderated) for s in data.statements], dtype=bool)
    out_mod = sum(s.moderated == -1 for s in data.statements)
    unmod = sum(s.moderated == 0 for s in data.statements) if not cfg.include_unmoderated else 0
    log.append(f"dropped {out_mod} moderated-out statement(s)" + (f" and {unmod} not yet moderated" if unmod else ""))
    votes = data.votes[:, keep_s]
    statements = [s for s, k in zip(data.statements, keep_s) if k]
    seen = (~np.isnan(votes)).sum(1)
    keep_p = seen >= cfg.min_votes_per_participant
    log.append(f"dropped {int((~keep_p).sum())} participant(s) with fewer than {cfg.min_votes_per_participant} votes")
    votes = votes[keep_p]
    people = [p for p, k in zip(data.participants, keep_p) if k]
    per_s = (~np.isnan(votes)).sum(0)
    keep_s2 = per_s >= cfg.min_votes_per_statement
    log.append(f"dropped {int((~keep_s2).sum())} statement(s) with fewer than {cfg.min_votes_per_statement} votes")
    votes = votes[:, keep_s2]
    statements = [s for s, k in zip(statements, keep_s2) if k]
    out = VoteData(data.source, statements, people, votes, data.export_groups)
    log.append(f"kept {len(people)} participants, {len(statements)} statements, {out.n_votes} votes")
    return out, log


def _row(data: VoteData, s: StatementStats, cfg: CollectConfig) -> dict:
    st = data.statements[s.index]
    return {"id": st.id, "text": st.text, "gac": s.gac, "gac_mean": s.gac_mean, "divisiveness": s.divisiveness,
            "kept": s.kept(cfg.rule, cfg.threshold, cfg.min_group_votes),
            "groups": [{"group": g, "agrees": a, "disagrees": d, "passes": p, "agreement": sm, "agree_share": r}
                       for g, (a, d, p, sm, r) in enumerate(zip(s.agrees, s.disagrees, s.passes, s.smoothed, s.raw))]}


def _csv(rows: list[dict], k: int) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "id", "gac", "gac_mean", "divisiveness", "kept"] + [f"group{g}_{x}" for g in range(k)
                                                                           for x in ("agrees", "disagrees", "passes", "agreement")] + ["text"])
    for i, r in enumerate(rows, 1):
        w.writerow([i, r["id"], f"{r['gac']:.4f}", f"{r['gac_mean']:.4f}", f"{r['divisiveness']:.4f}", int(r["kept"])]
                   + [v for g in r["groups"] for v in (g["agrees"], g["disagrees"], g["passes"], f"{g['agreement']:.3f}")] + [r["text"]])
    return buf.getvalue()


def run_collect(cfg: CollectConfig, *, rewriter: Backend | None = None, pool: BackendPool | None = None,
                log: Callable[[str], None] = lambda s: None) -> dict:
    t0 = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "settings.json", cfg.model_dump(mode="json"))
    folder = cfg.input
    if cfg.input == "synthetic":
        folder = str(out / "input")
        write_plain(folder, make_votes(cfg.synthetic_participants, seed=cfg.seed))
    data, filter_log = apply_filters(read_votes(folder), cfg)
    for line in filter_log:
        log(line)
    if len(data.participants) < 2 * cfg.min_group_size or not data.statements:
        raise UserInputError(f"{folder}: after the filters only {len(data.participants)} participant(s) and "
                             f"{len(data.statements)} statement(s) are left, too few to find opinion groups.",
                             fix="lower --min-votes-per-participant or --min-votes-per-statement, or collect more votes.")
    g = find_groups(data.votes, max_k=cfg.max_groups, min_group=cfg.min_group_size, seed=cfg.seed,
                    stability_seeds=cfg.stability_seeds, components=cfg.components)
    log(f"{g.k} opinion group(s), sizes {g.sizes}; silhouette by k: "
        + ", ".join(f"{k}: {v:.3f}" for k, v in g.silhouette_by_k.items()))
    both = [i for i, p in enumerate(data.participants) if p in data.export_groups]
    if len(both) >= 2:  # how well our groups match the ones the export itself reports
        g.stability["export_groups"] = {"participants": len(both), "adjusted_rand": adjusted_rand(
            np.array([data.export_groups[data.participants[i]] for i in both]), g.labels[both])}
    stats = statement_stats(data.votes, g.labels, g.k)
    rows = sorted((_row(data, s, cfg) for s in stats), key=lambda r: (-r["gac"], r["id"]))
    divisive = sorted(rows, key=lambda r: (-r["divisiveness"], r["id"]))[: cfg.top]
    kept = [r for r in rows if r["kept"]]
    report: dict = {
        "input": cfg.input, "source": data.source, "filters": filter_log, "rule": cfg.rule, "threshold": cfg.threshold,
        "groups": {"k": g.k, "sizes": g.sizes, "silhouette_by_k": {str(k): v for k, v in g.silhouette_by_k.items()},
                   "variance_share": g.variance_share, "stability": g.stability},
        "consensus": rows[: cfg.top], "divisive": divisive, "kept": len(kept),
        "threshold_curve": threshold_curve(stats, cfg.min_group_votes),
    }
    atomic_write_text(out / "statements_ranked.csv", _csv(rows, g.k))
    atomic_write_text(out / "groups.csv", "participant,group\n" + "".join(f"{p},{int(l)}\n" for p, l in zip(data.participants, g.labels)))
    if not kept:
        report.update(principles=[], seconds=round(time.monotonic() - t0, 1))
        write_json(out / "report.json", report)
        atomic_write_text(out / "report.md", render_markdown(report))
        raise UserInputError(f"no statement reaches the {cfg.rule} rule at threshold {cfg.threshold} "
                             f"(see the threshold curve in {out / 'report.md'}).",
                             fix="lower --threshold, or try the other --rule.")
    chosen = kept[: cfg.max_principles]
    model = None
    if cfg.rewrite == "model":
        label = ModelSpec.model_validate(cfg.rewriter).label()
        model = CachedModel(rewriter or (lambda: (pool or BackendPool()).get(cfg.rewriter)), label,
                            CallCache(out / "cache.jsonl"))
    clauses = rewrite(model, [r["text"] for r in chosen], seed=cfg.seed)
    taken: set[str] = set()
    principles, notes, listed = [], {}, []
    for r, (clause, how) in zip(chosen, clauses):
        pid = slug(f"s {r['id']}", taken)
        principles.append(make_principle(pid, clause, tags=["collective"], name=r["text"]))
        per_group = ", ".join(f"group {x['group']}: {x['agrees']}/{x['agrees'] + x['disagrees'] + x['passes']} agree"
                              for x in r["groups"])
        notes[pid] = [f"source statement {r['id']}: {r['text']}", f"per-group agreement: {per_group}",
                      f"group-aware consensus {r['gac']:.3f} (geometric mean {r['gac_mean']:.3f}); wording: {how}"]
        listed.append({"id": pid, "principle": principle_text(clause), "wording": how, "source_statements": [r["id"]],
                       "statement": r["text"], "groups": r["groups"], "gac": r["gac"]})
    const = Constitution(name=cfg.name, version="0.1", description=f"Drafted from {len(data.statements)} public statements "
                         f"and {data.n_votes} votes by cai constitution collect ({cfg.rule} rule, threshold {cfg.threshold}).",
                         principles=principles)
    header = [f"Drafted by `cai constitution collect` from {data.source}.",
              f"{g.k} opinion groups (sizes {', '.join(map(str, g.sizes))}); kept by the {cfg.rule} rule at {cfg.threshold}. "
              "Each principle lists its source statement and per-group agreement."]
    write_constitution(out / "constitution.yaml", const, notes, header)
    report.update(principles=listed, seconds=round(time.monotonic() - t0, 1), constitution=str(out / "constitution.yaml"))
    write_json(out / "draft_sources.json", listed)
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    return report
