"""The report's comparison of RL-CAI routes: one row per evaluated model, with how it was trained and what it cost.

Routes, told apart by the manifest of the stage whose ``model/`` folder was evaluated:

* **reward model**: ``rl`` with ``reward: model``: pairs -> AI labels -> reward model -> RL;
* **direct RLAIF**: ``rl`` with ``reward: constitution``: the labeler rates the sampled answers during RL;
* **preference only**: ``dpo`` or ``orpo`` on the AI-labeled pairs, no reward model and no sampling during training;
* **SL-CAI** (``sft``) and the base model, as the reference points.

Each row has harmful compliance and over-refusal (with their 95% intervals, from ``eval/metrics.json``), the wall
time of the route (its own stage plus the stages it needs: pairs and label for every route that uses preference
labels, reward for the reward-model route; the seconds each stage's manifest recorded for its last session) and
the labeler's batched calls and questions (``cai label``'s for the label-based routes, the rl stage's own for direct
RLAIF). A model folder outside any stage (a path of your own) is listed with its figures only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cai.report.figures import fmt_fig
from cai.report.svg import esc

COLUMNS = ("model", "route", "harmful compliance ↓", "over-refusal, benign ↓", "over-refusal, benign-risky ↓",
           "route wall time (s)", "labeler calls / questions")


def _json(path: Path) -> dict[str, Any] | None:
    try:
        v = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return v if isinstance(v, dict) else None


def _seconds(m: dict[str, Any] | None) -> float | None:
    if not m:
        return None
    for block, key in (("training", "seconds_this_session"), ("timing", "seconds_this_session"), ("timing", "seconds")):
        v = (m.get(block) or {}).get(key)
        if isinstance(v, (int, float)):
            return float(v)
    return None


def _label_cost(m: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """(batched calls, questions) of the label stage's labeler: questions = comparisons x 2 orders x principles."""
    if not m:
        return None, None
    cfg = m.get("config") or {}
    n = (m.get("labels") or {}).get("n")
    calls = ((m.get("accounting") or {}).get("labeler") or {}).get("calls")
    if not calls and isinstance(n, int):
        # a backend that does not count scoring calls: one batched scoring call per shard (plus one reasoning call
        # per shard in cot mode), as cai label makes them
        shards = math.ceil(n / int(cfg.get("shard_size") or 32))
        calls = shards * (2 if cfg.get("mode") == "cot" else 1)
    return calls, (int(n) * 2 * int(cfg.get("ensemble", 1)) if isinstance(n, int) else None)


def _route(model_path: str) -> dict[str, Any]:
    """What the evaluated folder is: its stage, route, wall time and labeler cost (None where unknown)."""
    p = Path(model_path)
    out: dict[str, Any] = {"route": "base / other", "seconds": None, "calls": None, "questions": None}
    if p.name != "model" or not (p.parent / "manifest.json").exists():
        return out
    stage, run = p.parent.name, p.parent.parent
    m = _json(p.parent / "manifest.json") or {}
    own = _seconds(m)
    needs: tuple[str, ...] = ()
    if stage == "rl":
        direct = (m.get("reward") or {}).get("source") == "constitution"
        if direct:
            tot = m["reward"].get("labeler_totals_this_session") or {}
            out.update(route=f"direct RLAIF ({m.get('algorithm')})", calls=tot.get("calls"), questions=tot.get("requests"))
        else:
            out["route"] = f"reward model ({m.get('algorithm')})"
            needs = ("pairs", "label", "reward")
    elif stage in ("dpo", "orpo"):
        out["route"] = f"preference only ({stage})"
        needs = ("pairs", "label")
    elif stage == "sft":
        out["route"] = "SL-CAI (sft)"
    else:
        out["route"] = stage
    parts = [own] + [_seconds(_json(run / s / "manifest.json")) for s in needs]
    out["seconds"] = round(sum(x for x in parts if x is not None), 1) if own is not None else None
    if "label" in needs:
        out["calls"], out["questions"] = _label_cost(_json(run / "label" / "manifest.json"))
    return out


def route_rows(data: dict) -> list[dict[str, Any]]:
    """One row per evaluated model (empty without an eval stage)."""
    metrics = data.get("eval")
    if not isinstance(metrics, dict) or not metrics.get("models"):
        return []
    specs = (data["stages"].get("eval", {}).get("manifest") or {}).get("models") or {}
    rows = []
    for name, mm in metrics["models"].items():
        spec = specs.get(name)
        path = spec.get("model") if isinstance(spec, dict) else spec if isinstance(spec, str) else None
        info = _route(str(path)) if path else {"route": "base / other", "seconds": None, "calls": None, "questions": None}
        rows.append({"model": name, **info, "harmful_compliance": mm.get("harmful_compliance"),
                     "over_refusal_benign": mm.get("over_refusal_benign"),
                     "over_refusal_benign_risky": mm.get("over_refusal_benign_risky")})
    return rows


def _cost(r: dict[str, Any]) -> str:
    if r["calls"] is None and r["questions"] is None:
        return "–"
    return f"{r['calls'] if r['calls'] is not None else '?'} / {r['questions'] if r['questions'] is not None else '?'}"


def _cells(r: dict[str, Any]) -> list[str]:
    return [str(r["model"]), r["route"], fmt_fig(r["harmful_compliance"]), fmt_fig(r["over_refusal_benign"]),
            fmt_fig(r["over_refusal_benign_risky"]), "–" if r["seconds"] is None else f"{r['seconds']:.1f}", _cost(r)]


def summary_lines(data: dict) -> list[str]:
    """The Markdown table (no lines when fewer than two models were evaluated)."""
    rows = route_rows(data)
    if len(rows) < 2:
        return []
    out = ["## Routes compared", "",
           "Route wall time: the stage's own seconds plus pairs, label (and reward) where the route needs them; "
           "labeler calls / questions: batched calls / questions asked.", "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in rows]
    return out + [""]


def section_routes(data: dict) -> str:
    """The HTML section ('' when fewer than two models were evaluated)."""
    rows = route_rows(data)
    if len(rows) < 2:
        return '<p class="notrun">not run — fewer than two evaluated models.</p>'
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in _cells(r)) + "</tr>" for r in rows)
    return ('<p>Route wall time: the stage\'s own seconds plus pairs, label (and reward) where the route needs them; '
            'labeler calls / questions: batched calls / questions asked.</p>'
            f'<div class="tw"><table class="routes"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')
