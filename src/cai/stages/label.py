"""RL-CAI data, step 2: an AI labeler picks the better of two answers against principles of the constitution.

Each comparison is posed as a multiple-choice question (see :mod:`cai.labeling.prompts`) in *both* orders: the first
answer as option (A), then as option (B). The labeler's probabilities of the letters A and B are normalised per order
and combined, which cancels a pure preference for a position (:mod:`cai.labeling.softlabel`). One principle is
sampled per comparison, or an ensemble of several whose labels are averaged.

Modes:

* ``logprob``: score the letter right after the question (one ``option_logprobs`` call per shard for every
  comparison, principle and order).
* ``cot``: the labeler first writes step-by-step reasoning (one ``generate`` call per shard), then the letter is
  scored after it; the final probability is clamped to a band (default [0.4, 0.6]), because such labels tend to be
  overconfident.

When the backend gives no log-probabilities (``None``), the labeler writes a short answer and the letter is parsed
(:func:`cai.labeling.parse.parse_choice`), retried with other seeds; an answer that never parses is an abstention,
recorded as such and never replaced by a default.

Outputs in ``runs/<run>/label/``: ``labels.jsonl`` (every comparison with per-principle, per-order details),
``preference.jsonl`` (TRL conversational preference format, only labels that pass ``min_confidence``) and
``manifest.json`` with label statistics (every rate a figure with k, n and a 95% interval), per-role accounting and
plain-text warnings when the labels are weak. Comparisons are labeled in fixed shards by the shared runner
(:func:`cai.stages.sharded.run_sharded`): a killed run resumes at the first shard it had not written.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cai.backends.base import Backend, GenParams
from cai.backends.registry import BackendPool
from cai.backends.spec import ModelSpec
from cai.config import parse_band
from cai.constitution import load_constitution
from cai.constitution.schema import Constitution, Principle
from cai.data.readers import read_records
from cai.errors import ConfigError, UserInputError
from cai.labeling import prompts as P
from cai.labeling import softlabel as S
from cai.labeling.mc import score_choices
from cai.manifests import Figure, RoleMeter
from cai.stages.sharded import Shard, ShardedResult, run_sharded
from cai.progress import Progress

_WS = re.compile(r"\s+")
WEAK_WARNING = "labeler is near chance/position-biased; labels are weak"


class LabelConfig(BaseModel):
    """Settings of ``cai label``; YAML keys and CLI flags use these names."""

    model_config = ConfigDict(extra="forbid")

    labeler: ModelSpec = Field(default_factory=ModelSpec, description="Model that answers the multiple-choice questions")
    pairs: str | None = Field(
        default=None,
        description="Pairs file (rows with prompt + responses list, or prompt + response_a + response_b); "
        "default: the run's pairs/pairs.jsonl",
    )
    column_map: dict[str, str] = Field(default_factory=dict, description="Our field -> your column for a user pairs file")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N rows of the pairs file")
    constitution: str = Field(default="default", description="Constitution YAML path, or 'default' for the shipped one")
    mode: Literal["logprob", "cot"] = Field(
        default="logprob", description="logprob: score the answer letter directly; cot: reason step by step first, then score"
    )
    ensemble: int = Field(default=1, ge=1, description="Distinct principles sampled per comparison; their labels are averaged")
    clamp: tuple[float, float] | None = Field(
        default=(0.4, 0.6),
        description="cot mode: clamp the final probability to [lo, hi] (the CAI paper found [0.4, 0.6] best); null for none",
    )
    min_confidence: float = Field(
        default=0.0, ge=0, le=1, description="Drop labels with confidence |p-0.5|*2 (before clamping) below this from preference.jsonl"
    )
    seed: int = Field(default=0, description="Seeds principle sampling and any generation")
    shard_size: int = Field(default=32, ge=1, description="Comparisons per shard: the unit of batching and resume")
    cot_tokens: int = Field(default=96, ge=1, description="cot mode: max new tokens of the reasoning")
    cot_temperature: float = Field(default=0.0, ge=0, description="cot mode: sampling temperature of the reasoning (0 = greedy)")
    parse_tokens: int = Field(default=24, ge=1, description="Max new tokens of a written answer (backends without log-probabilities)")
    parse_retries: int = Field(default=2, ge=0, description="Extra attempts, with other seeds, when a written answer cannot be parsed")
    parse_temperature: float = Field(default=0.7, ge=0, description="Sampling temperature of the retries (the first attempt is greedy)")

    _clamp_text = field_validator("clamp", mode="before")(parse_band)  # 'LO,HI' or none, as on the command line

    @field_validator("clamp")
    @classmethod
    def _band(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None:
            lo, hi = v
            if not (0.0 <= lo <= 0.5 <= hi <= 1.0):
                raise ValueError(f"clamp band [{lo}, {hi}] must satisfy 0 <= lo <= 0.5 <= hi <= 1")
        return v


# --- input ----------------------------------------------------------------------------------------------------------
def _norm(text: str) -> str:
    return _WS.sub(" ", str(text).strip().lower())


def pairs_path(cfg: LabelConfig, run_dir: str | Path) -> Path:
    if cfg.pairs:
        return Path(cfg.pairs)
    return Path(run_dir) / "pairs" / "pairs.jsonl"


def load_pair_rows(cfg: LabelConfig, run_dir: str | Path) -> tuple[Path, list[dict]]:
    """Read the pairs file into rows that each have ``id``, ``prompt`` and a ``responses`` list of >= 2 texts."""
    path = pairs_path(cfg, run_dir)
    if cfg.pairs is None:
        stage_dir = path.parent
        if not path.exists():
            raise UserInputError(
                f"No pairs to label: {path} does not exist.",
                fix=f"run `cai pairs --run {Path(run_dir).name}` first, or pass --pairs FILE (config: pairs: FILE).",
            )
        if not (stage_dir / "manifest.json").exists():
            raise UserInputError(
                f"{stage_dir} is unfinished (no manifest.json), so its pairs may be incomplete.",
                fix=f"rerun `cai pairs --run {Path(run_dir).name}` to finish it.",
            )
    rows = read_records(path, required=("prompt",), column_map=cfg.column_map, id_prefix="pair")
    out = []
    for i, r in enumerate(rows):
        responses = r.get("responses")
        if responses is None and "response_a" in r and "response_b" in r:
            responses = [r["response_a"], r["response_b"]]
        if responses is None:
            raise UserInputError(
                f"{path} (row {i + 1}, id {r['id']}): no answers to compare; expected a 'responses' list or "
                "'response_a' and 'response_b' columns.",
                fix="write rows like {\"prompt\": ..., \"responses\": [answer1, answer2]}, or map your columns with "
                "--column response_a=COL1 --column response_b=COL2.",
            )
        if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(x, str) for x in responses):
            raise UserInputError(
                f"{path} (row {i + 1}, id {r['id']}): 'responses' must be a list of at least two texts.",
                fix="give two or more answers per prompt.",
            )
        out.append({"id": r["id"], "prompt": str(r["prompt"]), "category": r.get("category"), "responses": responses})
    if cfg.limit is not None:
        out = out[: cfg.limit]
    return path, out


def comparisons(rows: list[dict]) -> tuple[list[dict], int]:
    """Consecutive answer pairs of every row (answers j and j+1); identical pairs are skipped and counted."""
    comps, skipped = [], 0
    for r in rows:
        resp = r["responses"]
        n = len(resp)
        for j in range(n - 1):
            if _norm(resp[j]) == _norm(resp[j + 1]):
                skipped += 1
                continue
            comps.append(
                {
                    "id": r["id"] if n == 2 else f"{r['id']}:{j}-{j + 1}",
                    "source_id": r["id"],
                    "pair": [j, j + 1],
                    "prompt": r["prompt"],
                    "category": r.get("category"),
                    "response_a": resp[j],
                    "response_b": resp[j + 1],
                }
            )
    return comps, skipped


def sample_principles(const: Constitution, rng: random.Random, k: int) -> list[Principle]:
    """``k`` distinct principles, drawn by weight without replacement."""
    pool = list(const.principles)
    out = []
    for _ in range(k):
        p = rng.choices(pool, weights=[x.weight for x in pool], k=1)[0]
        out.append(p)
        pool.remove(p)
    return out


# --- one shard --------------------------------------------------------------------------------------------------------
COT_STEP, PARSE_STEP = 1, 10  # seed steps inside a shard: the reasoning call, then the parsing attempts


def label_shard(
    shard: Shard,
    const: Constitution,
    cfg: LabelConfig,
    labeler: Backend,
    progress: Progress | None = None,
) -> list[dict]:
    """Label every comparison of one shard: all principles and both orders go to the backend in one batch per step."""
    comps = shard.items
    # One item per (comparison, principle, order). Order 0 shows response_a as (A); order 1 shows it as (B).
    items: list[dict[str, Any]] = []
    chosen_principles: list[list[Principle]] = []
    for ci, c in enumerate(comps):
        ps = sample_principles(const, random.Random(f"{cfg.seed}:{c['id']}"), cfg.ensemble)
        chosen_principles.append(ps)
        for pi, p in enumerate(ps):
            for order in (0, 1):
                a, b = (c["response_a"], c["response_b"]) if order == 0 else (c["response_b"], c["response_a"])
                items.append({"ci": ci, "pi": pi, "order": order, "q": p.preference_question, "A": a, "B": b, "prompt": c["prompt"]})
    tokens = 0
    reasoning: list[str | None] = [None] * len(items)
    reasoning_finish: list[str | None] = [None] * len(items)
    if cfg.mode == "cot":
        gens = labeler.generate(
            [P.reasoning_conversation(it["prompt"], it["q"], it["A"], it["B"], language=const.language) for it in items],
            GenParams(max_new_tokens=cfg.cot_tokens, temperature=cfg.cot_temperature, seed=shard.seed(COT_STEP)),
        )
        reasoning = [P.clean_reasoning(g.text) for g in gens]
        reasoning_finish = [g.finish_reason for g in gens]
        tokens += sum(g.completion_tokens for g in gens)

    batch = score_choices(
        labeler,
        [P.scoring_conversation(it["prompt"], it["q"], it["A"], it["B"], reasoning[k], language=const.language)
         for k, it in enumerate(items)],
        lambda k: P.answer_conversation(items[k]["prompt"], items[k]["q"], items[k]["A"], items[k]["B"], reasoning[k],
                                        language=const.language),
        parse_tokens=cfg.parse_tokens,
        retries=cfg.parse_retries,
        retry_temperature=cfg.parse_temperature,
        seed=lambda attempt: shard.seed(PARSE_STEP + attempt),
    )
    tokens += batch.completion_tokens
    p_a = [c.p_a for c in batch.choices]
    method = [c.method for c in batch.choices]
    answers = [c.answers for c in batch.choices]

    index = {(it["ci"], it["pi"], it["order"]): k for k, it in enumerate(items)}
    rows = []
    for ci, c in enumerate(comps):
        judgments = []
        for pi, p in enumerate(chosen_principles[ci]):
            k1, k2 = index[(ci, pi, 0)], index[(ci, pi, 1)]
            j: dict[str, Any] = {
                "principle_id": p.id,
                "p_a_order1": p_a[k1],
                "p_a_order2": p_a[k2],
                "method": [method[k1], method[k2]],
            }
            both = S.both_orders(p_a[k1], p_a[k2])
            if both is not None:
                f1, f2, p_first, consistent = both
                j.update(p_order1=f1, p_order2=f2, p=p_first, consistent=consistent, abstained=False)
            else:
                j.update(p_order1=None, p_order2=None, p=None, consistent=None, abstained=True)
            if answers[k1] or answers[k2]:
                j["answers"] = [answers[k1], answers[k2]]
            if cfg.mode == "cot":
                j["reasoning"] = [reasoning[k1], reasoning[k2]]
                j["reasoning_finish"] = [reasoning_finish[k1], reasoning_finish[k2]]
            judgments.append(j)
        rows.append(_finish_row(c, judgments, cfg))
    if progress:
        progress.advance(len(comps), tokens)
    return rows


def _finish_row(c: dict, judgments: list[dict], cfg: LabelConfig) -> dict:
    valid = [j for j in judgments if not j["abstained"]]
    row = {
        "id": c["id"],
        "source_id": c["source_id"],
        "pair": c["pair"],
        "prompt": c["prompt"],
        "category": c.get("category"),
        "response_a": c["response_a"],
        "response_b": c["response_b"],
        "mode": cfg.mode,
        "principle_ids": [j["principle_id"] for j in judgments],
        "judgments": judgments,
    }
    if not valid:
        row.update(
            p_order1=None, p_order2=None, p_a_unclamped=None, p_a=None, chosen=None, p_chosen=None,
            confidence=None, consistent=None, abstained=True, kept=False,
        )
        return row
    p1 = S.ensemble([j["p_order1"] for j in valid])
    p2 = S.ensemble([j["p_order2"] for j in valid])
    raw = S.ensemble([j["p"] for j in valid])
    final = S.clamp(raw, cfg.clamp) if cfg.mode == "cot" else raw
    chosen = "a" if final > 0.5 else "b" if final < 0.5 else None
    row.update(
        p_order1=p1,
        p_order2=p2,
        p_a_unclamped=raw,
        p_a=final,
        chosen=chosen,
        p_chosen=max(final, 1.0 - final),
        confidence=S.confidence(raw),
        consistent=S.is_consistent(p1, p2),
        abstained=False,
        abstained_principles=len(judgments) - len(valid),
        kept=chosen is not None and S.passes_filter(raw, cfg.min_confidence),
    )
    return row


# --- outputs -----------------------------------------------------------------------------------------------------
def preference_view(rows: list[dict]) -> list[dict]:
    """TRL conversational preference rows for labels that passed the filter; the soft label is ``score_chosen``."""
    out = []
    for r in rows:
        if not r["kept"]:
            continue
        a, b = r["response_a"], r["response_b"]
        chosen, rejected = (a, b) if r["chosen"] == "a" else (b, a)
        out.append(
            {
                "id": r["id"],
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "score_chosen": r["p_chosen"],
                "score_rejected": 1.0 - r["p_chosen"],
                "confidence": r["confidence"],
            }
        )
    return out


def label_statistics(rows: list[dict], cfg: LabelConfig, skipped_identical: int = 0, judge: str | None = None) -> dict:
    """The numbers that say whether the labels carry signal, plus plain-text warnings when they do not.

    ``judge`` names the labeler in the figures (``labeler:<model>``).
    """
    labeled = [r for r in rows if not r["abstained"]]
    n, n_lab = len(rows), len(labeled)
    orders = [p for r in labeled for j in r["judgments"] if not j["abstained"] for p in (j["p_a_order1"], j["p_a_order2"])]
    conf = [r["confidence"] for r in labeled]
    consistency = sum(bool(r["consistent"]) for r in labeled) / n_lab if n_lab else None
    mean_conf = sum(conf) / n_lab if n_lab else None
    judg = [j for r in rows for j in r["judgments"]]
    stats: dict[str, Any] = {
        "n": n,
        "labeled": n_lab,
        "abstentions": n - n_lab,
        "abstained_judgments": sum(j["abstained"] for j in judg),
        "parsed_judgments": sum("parsed" in j["method"] for j in judg),
        "skipped_identical": skipped_identical,
        "position_consistency_rate": round(consistency, 4) if consistency is not None else None,
        "mean_confidence": round(mean_conf, 4) if mean_conf is not None else None,
        "confidence_histogram": S.histogram(conf, 10),
        "confidence_histogram_edges": [round(i / 10, 1) for i in range(11)],
        "kept_after_filter": sum(r["kept"] for r in rows),
        "min_confidence": cfg.min_confidence,
        "position_bias": round(sum(S.position_gap(r["p_order1"], r["p_order2"]) for r in labeled) / n_lab, 4) if n_lab else None,
        "share_preferring_position_a": round(sum(p > 0.5 for p in orders) / len(orders), 4) if orders else None,
        "mean_p_a": round(sum(r["p_a"] for r in labeled) / n_lab, 4) if n_lab else None,
        "share_choosing_first_answer": round(sum(r["chosen"] == "a" for r in labeled) / n_lab, 4) if n_lab else None,
        # the same rates as figures (k of n with a Wilson 95% interval); the plain numbers above are kept for readers
        # of the first manifest format
        "position_consistency": Figure.rate(sum(bool(r["consistent"]) for r in labeled), n_lab, judge).as_dict(),
        "kept": Figure.rate(sum(r["kept"] for r in rows), n, judge).as_dict(),
        "preferring_position_a": Figure.rate(sum(p > 0.5 for p in orders), len(orders), judge).as_dict(),
        "choosing_first_answer": Figure.rate(sum(r["chosen"] == "a" for r in labeled), n_lab, judge).as_dict(),
    }
    if cfg.mode == "cot":
        stats["clamp"] = list(cfg.clamp) if cfg.clamp else None
        stats["confidence_basis"] = "before clamping"
    warnings = []
    if n == 0:
        warnings.append("there were no comparisons to label (every pair was missing or identical).")
    elif n_lab == 0:
        warnings.append(f"every one of the {n} comparisons was an abstention: the labeler gave no usable answer.")
    else:
        if (consistency is not None and consistency < 0.6) or (mean_conf is not None and mean_conf < 0.1):
            warnings.append(
                f"{WEAK_WARNING} (position consistency {consistency:.2f}, mean confidence {mean_conf:.3f}, "
                f"position bias {stats['position_bias']:.3f}). Use a stronger labeler or an ensemble of principles."
            )
        if (n - n_lab) / n > 0.2:
            warnings.append(f"{n - n_lab} of {n} comparisons are abstentions (no parseable answer from the labeler).")
        if stats["kept_after_filter"] == 0:
            warnings.append(f"no label passed min_confidence={cfg.min_confidence}; preference.jsonl is empty.")
    stats["warnings"] = warnings
    return stats


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def run_label(
    cfg: LabelConfig,
    run_dir: str,
    *,
    pool: BackendPool | None = None,
    overwrite: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    on_ready: Callable[[Progress], None] | None = None,
) -> dict:
    """Run (or resume) the ``label`` stage into ``run_dir/label``. Returns the manifest."""
    const = load_constitution(cfg.constitution)
    if cfg.ensemble > len(const.principles):
        raise ConfigError(
            f"ensemble={cfg.ensemble} but the constitution '{const.name}' has only {len(const.principles)} principles.",
            fix=f"set ensemble to at most {len(const.principles)}.",
        )
    path, pair_rows = load_pair_rows(cfg, run_dir)
    comps, skipped = comparisons(pair_rows)
    pool = pool or BackendPool()
    meter = RoleMeter()  # what this session's labeling calls cost (the backend may also serve other stages)

    def finish(result: ShardedResult[Backend]) -> dict:
        rows, labeler = result.rows, result.resources
        result.stage.write_output("labels.jsonl", rows)
        result.stage.write_output("preference.jsonl", preference_view(rows))
        stats = label_statistics(rows, cfg, skipped, judge=f"labeler:{cfg.labeler.label()}")
        timing = result.timing()
        done_now, seconds = timing["rows_this_session"], result.seconds
        return {
            "constitution": {"name": const.name, "version": const.version, "hash": const.content_hash()},
            "model": labeler.describe(),
            "input": {"pairs": str(path), "pair_rows": len(pair_rows), "comparisons": len(comps)},
            "mode": cfg.mode,
            "labels": stats,
            "warnings": stats["warnings"],
            "tokens": {"generated_this_session": result.tokens, "backend_stats": labeler.stats.as_dict()},
            "accounting": meter.as_manifest(),
            "timing": {
                "seconds_this_session": timing["seconds_this_session"],
                "rows_this_session": done_now,
                "labels_per_s": round(done_now / seconds, 3) if seconds > 0 and done_now else None,
                "resumed_rows": result.resumed,
            },
            "outputs": {"labels": "labels.jsonl", "preference": "preference.jsonl"},
            "config": cfg.model_dump(mode="json"),
        }

    return run_sharded(
        run_dir, "label", comps, shard_size=cfg.shard_size, seed=cfg.seed,
        identity={"label": cfg.model_dump(mode="json"), "constitution_hash": const.content_hash(),
                  "pairs_hash": _file_hash(path)},
        load=lambda: pool.get(cfg.labeler),
        work=lambda shard, labeler, prog: meter.measure("labeler", labeler,
                                                        lambda: label_shard(shard, const, cfg, labeler, prog)),
        finish=finish, overwrite=overwrite, on_progress=on_progress, on_ready=on_ready,
    )
