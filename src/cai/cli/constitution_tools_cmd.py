"""``cai constitution infer`` (inverse CAI) and ``cai constitution collect`` (collective CAI).

Settings come from ``--config FILE`` (flat keys, or an ``infer:`` / ``collect:`` section), then the flags, then
``--set KEY=VALUE``; every setting is a field of :class:`~cai.constitution.infer.InferConfig` or
:class:`~cai.constitution.collect.CollectConfig`.
"""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich.markup import escape

from cai.cli.common import console, handle_errors, out
from cai.config import build_config, read_yaml, set_path

_SET = "Any setting as KEY=VALUE (repeatable; applied last). The settings are listed in the README and the config class."


def _settings(cls: type, section: str, config: str | None, flags: dict[str, Any], sets: list[str] | None):
    data: dict[str, Any] = {}
    source = "command-line flags"
    if config:
        data = read_yaml(config)
        if isinstance(data.get(section), dict):
            data = data[section]
        source = config
    data.update({k: v for k, v in flags.items() if v is not None})
    for s in sets or []:
        set_path(cls, data, s)
    return build_config(cls, data, source=source)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


@handle_errors
def infer(
    input: str = typer.Argument(..., help="Preference pairs (ICAI CSV, TRL or HH-RLHF JSONL), or 'synthetic'."),
    out_dir: Optional[str] = typer.Option(None, "--out", help="Output folder (default: runs/infer)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="auto, icai, trl or hh (default: auto)."),
    proposer: Optional[str] = typer.Option(None, "--proposer", help="Model that proposes principles (default: embedded)."),
    labeler: Optional[str] = typer.Option(None, "--labeler", help="Model that tests principles (default: embedded)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model for both roles not given by --proposer/--labeler."),
    synthetic_pairs: Optional[int] = typer.Option(None, "--synthetic-pairs", help="Pairs of the synthetic set (default: 48)."),
    max_candidates: Optional[int] = typer.Option(None, "--max-candidates", help="Candidate principles tested (default: 10)."),
    max_principles: Optional[int] = typer.Option(None, "--max-principles", help="Most principles kept (default: 5)."),
    min_relevance: Optional[float] = typer.Option(None, "--min-relevance", help="Share of training pairs a principle must vote on (default: 0.1)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML settings file (flat keys or an infer: section)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=_SET, metavar="KEY=VALUE"),
) -> None:
    """Infer a constitution from pairwise preferences and report its held-out agreement (inverse CAI)."""
    from cai.constitution.infer import InferConfig, run_infer
    from cai.progress import quiet_library_warnings

    quiet_library_warnings()

    cfg = _settings(InferConfig, "infer", config, {
        "input": input, "out": out_dir, "format": fmt, "proposer": proposer or model, "labeler": labeler or model,
        "synthetic_pairs": synthetic_pairs, "max_candidates": max_candidates, "max_principles": max_principles,
        "min_relevance": min_relevance}, sets)
    r = run_infer(cfg, log=lambda s: console.print(escape(s), highlight=False))
    h = r["heldout"]
    out.print(f"constitution: {escape(r['constitution'])} ({len(r['principles'])} principles)", highlight=False)
    for p in r["principles"]:
        acc = p["train"]["accuracy"]
        out.print(f"  {escape(p['id'])}: {escape(p['principle'])}  train accuracy {_pct(acc) if acc is not None else 'n/a'}, "
                  f"relevance {_pct(p['train']['relevance'])}", highlight=False)

    def line(name: str, d: dict) -> str:
        ci = d["ci95"]
        return f"  {name}: {_pct(d['agreement'])}" + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")

    out.print(f"held-out agreement on {h['n']} pairs (95% intervals):", highlight=False)
    out.print(line("with the constitution", h["constitution"]), highlight=False)
    out.print(line("with no constitution ", h["no_constitution"]), highlight=False)
    out.print(line("chance               ", h["chance"]), highlight=False)
    out.print(f"report: {escape(str(cfg.out))}/report.md; {r['cache']['misses']} model calls, {r['cache']['hits']} from the cache, "
              f"{r['seconds']} s", highlight=False)


@handle_errors
def collect(
    input: str = typer.Argument(..., help="Folder of a Polis export or of statements.csv + votes.csv, or 'synthetic'."),
    out_dir: Optional[str] = typer.Option(None, "--out", help="Output folder (default: runs/collect)."),
    rule: Optional[str] = typer.Option(None, "--rule", help="gac (group-aware consensus) or threshold (per group) (default: gac)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Agreement a kept statement needs (default: 0.6)."),
    rewrite: Optional[str] = typer.Option(None, "--rewrite", help="verbatim (no model) or model (default: verbatim)."),
    rewriter: Optional[str] = typer.Option(None, "--rewriter", help="Model that rewrites statements (--rewrite model) (default: embedded)."),
    min_votes: Optional[int] = typer.Option(None, "--min-votes-per-participant", help="Drop participants with fewer votes (default: 7)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML settings file (flat keys or a collect: section)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=_SET, metavar="KEY=VALUE"),
) -> None:
    """Draft a constitution from public votes: opinion groups, cross-group consensus, divisive statements (collective CAI)."""
    from cai.constitution.collect import CollectConfig, run_collect
    from cai.progress import quiet_library_warnings

    quiet_library_warnings()

    cfg = _settings(CollectConfig, "collect", config, {
        "input": input, "out": out_dir, "rule": rule, "threshold": threshold, "rewrite": rewrite, "rewriter": rewriter,
        "min_votes_per_participant": min_votes}, sets)
    r = run_collect(cfg, log=lambda s: console.print(escape(s), highlight=False))
    g = r["groups"]
    out.print(f"{g['k']} opinion groups, sizes {', '.join(map(str, g['sizes']))}; stability: "
              f"ARI mean {g['stability'].get('adjusted_rand_mean') or 0:.3f} over {g['stability'].get('seeds', 0)} seeds",
              highlight=False)
    out.print(f"{r['kept']} statement(s) kept by the {cfg.rule} rule at {cfg.threshold}; top consensus:", highlight=False)
    for x in r["consensus"][:5]:
        out.print(f"  [{escape(x['id'])}] {x['gac']:.3f}  {escape(x['text'])}", highlight=False)
    out.print("most divisive:", highlight=False)
    for x in r["divisive"][:3]:
        out.print(f"  [{escape(x['id'])}] {x['divisiveness']:.3f}  {escape(x['text'])}", highlight=False)
    out.print(f"constitution: {escape(r['constitution'])} ({len(r['principles'])} principles); report: "
              f"{escape(str(cfg.out))}/report.md", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``infer`` and ``collect`` to the ``cai constitution`` command group."""
    app.command("infer")(infer)
    app.command("collect")(collect)
