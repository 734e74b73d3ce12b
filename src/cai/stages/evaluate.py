"""``cai eval``: harmlessness, over-refusal, helpfulness, reward-model accuracy and reward-hacking signals per model.

Every model answers every prompt (harmful, benign and any benchmark files) in one batched ``generate`` call. A refusal
judge (the local classifier by default, or an LLM judge) labels each answer; a pairwise judge compares models with
each other in both orders (win rate against the baseline, Elo across all models); an optional reward model is scored
on held-out preference pairs. Every figure carries its n, a 95% interval (Wilson for rates, bootstrap for means) and
the name of the judge that produced it.

Outputs in ``runs/<run>/eval/``: ``answers.jsonl`` (one row per model and prompt with the verdict), ``pairwise.jsonl``,
``metrics.json``, ``summary.md`` and ``manifest.json`` (last). Each model's answers, verdicts and each pair's
comparisons are written atomically when done, so a rerun resumes where a killed one stopped.
"""

from __future__ import annotations

import itertools
import random
import re
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cai.backends.base import GenParams
from cai.backends.registry import BackendPool
from cai.backends.spec import ModelSpec
from cai.data.io import atomic_write_text, read_jsonl, write_json, write_jsonl
from cai.data.readers import load_prompts
from cai.errors import ConfigError, MissingExtraError, UserInputError
from cai.evaluate import stats as st
from cai.evaluate.benchmarks import read_benchmark
from cai.evaluate.judges import PairwiseJudge, judge_names, make_refusal_judge
from cai.evaluate.refusal import degenerate_reason
from cai.runs import StageDir
from cai.progress import Progress

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PREFERENCE_KINDS = ("hh-rlhf", "preference")
MEASURED = "measurement"


class BenchmarkFile(BaseModel):
    """One benchmark file to evaluate on, in its published format."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="File path (CSV, JSON, JSONL)")
    kind: str = Field(default="auto", description="xstest, harmbench, advbench, strongreject, mt-bench, alpaca-eval, prompts, or auto")
    name: str | None = Field(default=None, description="Name in the report (default: the kind)")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N rows")


class EvalConfig(BaseModel):
    """Settings of ``cai eval``; YAML keys (an ``eval:`` section or flat keys) and CLI flags use these names."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelSpec] = Field(
        default_factory=lambda: {"base": ModelSpec()},
        description="Models to evaluate: name -> model (embedded, runs/x/sft/model, openai:NAME@URL, fake)",
    )
    harmful: str | None = Field(default="redteam", description="Harmful prompts: 'redteam' (shipped) or a file; null to skip")
    harmful_split: str = Field(default="eval", description="Split of the harmful prompts: eval, train or all")
    benign: str | None = Field(default="helpful", description="Benign prompts: 'helpful' (shipped, with benign_risky rows) or a file; null to skip")
    benign_split: str = Field(default="eval", description="Split of the benign prompts: eval, train or all")
    benchmarks: list[BenchmarkFile] = Field(default_factory=list, description="Extra benchmark files (XSTest, HarmBench, ...)")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N prompts of each prompt set")
    judge: str | ModelSpec = Field(default="classifier", description="Refusal judge: 'classifier' (local) or a model for an LLM judge")
    constitution: str = Field(default="default", description="Constitution whose principles the LLM and harmlessness judges use")
    helpfulness_judge: ModelSpec = Field(default_factory=ModelSpec, description="Model that compares answers pairwise")
    baseline: str | None = Field(default=None, description="Model the others are compared with (default: the first)")
    pairwise: list[Literal["helpful", "harmless"]] = Field(
        default_factory=lambda: ["helpful", "harmless"],
        description="Pairwise comparisons to run when there are 2+ models: helpful (benign prompts), harmless (harmful prompts)",
    )
    reward_model: str | None = Field(default=None, description="Reward model folder (from `cai reward`) to evaluate")
    preference_pairs: str | None = Field(default=None, description="Held-out preference pairs (our preference.jsonl or HH-RLHF) for reward accuracy")
    max_new_tokens: int = Field(default=128, ge=1, description="Max new tokens per answer")
    temperature: float = Field(default=0.0, ge=0, description="Sampling temperature (0 = greedy)")
    seed: int = Field(default=0, description="Seeds generation, principle sampling and bootstrap")
    system_prompt: str | None = Field(default=None, description="System message given to every evaluated model")
    bootstrap_samples: int = Field(default=1000, ge=100, description="Bootstrap resamples for intervals of means and Elo")
    ngram: int = Field(default=3, ge=1, le=8, description="n of the n-gram repetition share")

    @field_validator("judge", mode="before")
    @classmethod
    def _judge(cls, v: Any) -> Any:
        if isinstance(v, str) and v in judge_names():
            return v
        return ModelSpec.model_validate(v)

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        if not v:
            raise ValueError("give at least one model")
        for name in v:
            if not _NAME.match(name):
                raise ValueError(f"model name '{name}' must use letters, digits, '.', '_' or '-' (it names files)")
        return v

    @model_validator(mode="after")
    def _checks(self) -> "EvalConfig":
        if self.baseline is not None and self.baseline not in self.models:
            raise ValueError(f"baseline '{self.baseline}' is not one of the models ({', '.join(self.models)})")
        if self.reward_model and not self.preference_pairs:
            raise ValueError("reward_model needs preference_pairs (held-out pairs to measure its accuracy on)")
        if not (self.harmful or self.benign or self.benchmarks):
            raise ValueError("nothing to evaluate: harmful, benign and benchmarks are all empty")
        return self

    def baseline_name(self) -> str:
        return self.baseline or next(iter(self.models))


# --- items ------------------------------------------------------------------------------------------------------
def load_items(cfg: EvalConfig) -> list[dict]:
    """Every prompt to answer, with its set, category and expected behaviour (refuse / comply)."""
    items: list[dict] = []
    if cfg.harmful:
        for r in load_prompts(cfg.harmful, split=cfg.harmful_split, limit=cfg.limit):
            items.append({"set": "harmful", "id": r["id"], "prompt": r["prompt"], "category": r.get("category") or "uncategorized",
                          "expected": "refuse"})
    if cfg.benign:
        for r in load_prompts(cfg.benign, split=cfg.benign_split, limit=cfg.limit):
            risky = r.get("benign_risky")
            if isinstance(risky, str):
                risky = risky.strip().lower() in ("1", "true", "yes")
            items.append({"set": "benign", "id": r["id"], "prompt": r["prompt"], "category": r.get("category") or "uncategorized",
                          "expected": "comply", "benign_risky": bool(risky)})
    names = set()
    for b in cfg.benchmarks:
        recs = read_benchmark(b.kind, b.path, limit=b.limit or cfg.limit)
        kind = recs[0]["benchmark"] if recs else b.kind
        if kind in PREFERENCE_KINDS:
            raise ConfigError(
                f"benchmarks: {b.path} holds preference pairs ({kind}), which are not prompts to answer.",
                fix="give it as preference_pairs (with reward_model) to measure reward-model accuracy.",
            )
        name = b.name or kind
        if name in names or name in ("harmful", "benign"):
            raise ConfigError(f"benchmarks: the name '{name}' is used twice.", fix="give each benchmark file a distinct name:.")
        names.add(name)
        for r in recs:
            items.append({"set": name, "id": r["id"], "prompt": r["prompt"], "category": r.get("category") or "uncategorized",
                          "expected": r.get("expected"), "benchmark": kind})
    for it in items:
        it["key"] = f"{it['set']}/{it['id']}"
    keys = [it["key"] for it in items]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise UserInputError(f"Two prompts share the id '{dup}'.", fix="ids must be unique within each prompt file.")
    return items


# --- figures ----------------------------------------------------------------------------------------------------
def rate(k: int, n: int, judge: str) -> dict:
    lo, hi = st.wilson(k, n)
    return {"value": round(k / n, 4) if n else None, "k": k, "n": n, "ci95": [round(lo, 4), round(hi, 4)],
            "method": "wilson", "judge": judge}


def _round_ci(ci: tuple[float, float] | None) -> list[float] | None:
    return [round(ci[0], 4), round(ci[1], 4)] if ci else None


def mean_fig(values: list, judge: str, seed: int, n_boot: int, fn: Callable = st.mean) -> dict:
    ci = st.bootstrap_ci(values, fn, n=n_boot, seed=seed)
    return {"value": round(float(fn(values)), 4) if values else None, "n": len(values),
            "ci95": _round_ci(ci), "method": "bootstrap", "judge": judge}


def refusal_metrics(rows: list[dict], judge: str) -> dict:
    """Harmful-compliance and over-refusal rates (overall and per category) from judged rows of one model."""
    out: dict[str, Any] = {}

    def comp(rs: list[dict]) -> dict:
        return rate(sum(not r["verdict"]["refused"] for r in rs), len(rs), judge)

    def refu(rs: list[dict]) -> dict:
        return rate(sum(bool(r["verdict"]["refused"]) for r in rs), len(rs), judge)

    def by_cat(rs: list[dict], f: Callable) -> dict:
        cats: dict[str, list[dict]] = {}
        for r in rs:
            cats.setdefault(r["category"], []).append(r)
        return {c: f(v) for c, v in sorted(cats.items())}

    harmful = [r for r in rows if r["set"] == "harmful"]
    benign = [r for r in rows if r["set"] == "benign"]
    if harmful:
        out["harmful_compliance"] = comp(harmful)
        out["harmful_compliance_by_category"] = by_cat(harmful, comp)
    if benign:
        out["over_refusal_benign"] = refu(benign)
        out["over_refusal_benign_risky"] = refu([r for r in benign if r.get("benign_risky")])
        out["over_refusal_benign_plain"] = refu([r for r in benign if not r.get("benign_risky")])
        out["over_refusal_by_category"] = by_cat(benign, refu)
    benches: dict[str, dict] = {}
    for name in sorted({r["set"] for r in rows} - {"harmful", "benign"}):
        rs = [r for r in rows if r["set"] == name]
        b: dict[str, Any] = {"benchmark": rs[0].get("benchmark")}
        bad = [r for r in rs if r["expected"] == "refuse"]
        good = [r for r in rs if r["expected"] == "comply"]
        if bad:
            b["harmful_compliance"] = comp(bad)
            b["harmful_compliance_by_category"] = by_cat(bad, comp)
        if good:
            b["over_refusal"] = refu(good)
            b["over_refusal_by_category"] = by_cat(good, refu)
        other = [r for r in rs if r["expected"] not in ("refuse", "comply")]
        if other:
            b["refusal_rate_unlabeled"] = refu(other)
        benches[name] = b
    if benches:
        out["benchmarks"] = benches
    return out


def text_metrics(rows: list[dict], cfg: EvalConfig) -> dict:
    answers = [r["answer"] for r in rows]
    top = st.top_ngram(answers, cfg.ngram)
    degenerate = sum(degenerate_reason(a) is not None for a in answers)
    return {
        "mean_length_tokens": mean_fig([r["completion_tokens"] for r in rows], MEASURED, cfg.seed, cfg.bootstrap_samples),
        "mean_length_words": mean_fig([st.words(a) for a in answers], MEASURED, cfg.seed, cfg.bootstrap_samples),
        "ngram_repeat_share": {
            "value": round(st.ngram_repeat_share(answers, cfg.ngram), 4),
            "n": len(answers),
            "ci95": _round_ci(st.ngram_repeat_share_ci(answers, cfg.ngram, cfg.bootstrap_samples, cfg.seed)),
            "method": "bootstrap",
            "judge": MEASURED,
            "n_gram": cfg.ngram,
            "top": {"ngram": top[0], "count": top[1], "total": top[2]} if top else None,
        },
        "truncated": rate(sum(r["finish_reason"] == "length" for r in rows), len(rows), MEASURED),
        "empty_or_degenerate": rate(degenerate, len(rows), MEASURED),
    }


def elo_figures(results: list[dict], models: list[str], anchor: str, judge: str, seed: int, n_boot: int) -> dict:
    """Elo from per-prompt pairwise scores, with a bootstrap over prompts for the intervals."""
    triples = [(r["model_x"], r["model_y"], r["score_x"]) for r in results if r["score_x"] is not None]
    if not triples:
        return {}
    point = st.elo(triples, anchor=anchor)
    by_prompt: dict[str, list[tuple[str, str, float]]] = {}
    for r in results:
        if r["score_x"] is not None:
            by_prompt.setdefault(r["id"], []).append((r["model_x"], r["model_y"], r["score_x"]))
    prompts = sorted(by_prompt)
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {m: [] for m in point}
    for _ in range(n_boot):
        pick = [prompts[rng.randrange(len(prompts))] for _ in prompts]
        trip = [t for p in pick for t in by_prompt[p]]
        try:
            e = st.elo(trip, anchor=anchor, iters=300, tol=1e-8)
        except ValueError:
            continue
        for m in samples:
            if m in e:
                samples[m].append(e[m])
    out = {}
    for m in models:
        if m not in point:
            continue
        s = sorted(samples[m])
        ci = [round(s[int(0.025 * len(s))], 1), round(s[min(len(s) - 1, int(0.975 * len(s)))], 1)] if s else None
        n = sum(1 for t in triples if m in (t[0], t[1]))
        out[m] = {"value": round(point[m], 1), "ci95": ci, "n": n, "method": "bradley-terry elo, bootstrap over prompts",
                  "anchor": anchor, "judge": judge}
    return out


# --- the stage --------------------------------------------------------------------------------------------------
def _reward_scorer(path: str):
    try:
        from cai.stages.reward import RewardScorer
    except ImportError as e:
        raise MissingExtraError(
            f"Reward-model evaluation needs cai.stages.reward.RewardScorer, which could not be imported ({e}).",
            fix="install the full toolkit (pip install -e .), or drop reward_model from the eval config.",
        ) from None
    return RewardScorer(path)


def _conv(cfg: EvalConfig, prompt: str) -> list[dict]:
    conv = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return conv + [{"role": "user", "content": prompt}]


def run_evaluate(
    cfg: EvalConfig,
    run_dir: str,
    *,
    pool: BackendPool | None = None,
    overwrite: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    on_ready: Callable[[Progress], None] | None = None,
) -> dict:
    """Run (or resume) the ``eval`` stage into ``run_dir/eval``. Returns the manifest."""
    items = load_items(cfg)
    if not items:
        raise UserInputError("No prompts to evaluate (every prompt set is empty after split and limit).",
                             fix="check harmful/benign/benchmarks, their split and limit.")
    needs_const = not isinstance(cfg.judge, str) or (len(cfg.models) > 1 and "harmless" in cfg.pairwise)
    const = None
    if needs_const:
        from cai.constitution import load_constitution

        const = load_constitution(cfg.constitution)
    stage = StageDir(run_dir, "eval")
    state = stage.begin({"eval": cfg.model_dump(mode="json"), "items": [it["key"] for it in items],
                         "constitution_hash": const.content_hash() if const else None}, overwrite=overwrite)
    if state == "complete":
        return stage.manifest()
    pool = pool or BackendPool()
    names = list(cfg.models)
    prog = Progress(total=len(names) * len(items), callback=on_progress)
    done_models = [m for m in names if (stage.path / "models" / m / "verdicts.jsonl").exists()]
    prog.done = len(done_models) * len(items)
    prog.extra["resumed_models"] = done_models
    if on_ready:
        on_ready(prog)

    judge = None
    timing: dict[str, Any] = {"generate_seconds": {}, "judge_seconds": {}}
    t_start = time.perf_counter()
    per_model: dict[str, list[dict]] = {}
    backends: dict[str, Any] = {}
    for m in names:
        mdir = stage.path / "models" / m
        ans_path, ver_path = mdir / "answers.jsonl", mdir / "verdicts.jsonl"
        if ans_path.exists():
            answers = read_jsonl(ans_path)
        else:
            backend = pool.get(cfg.models[m])
            backends[m] = backend.describe()
            t0 = time.perf_counter()
            comps = backend.generate([_conv(cfg, it["prompt"]) for it in items],
                                     GenParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed))
            timing["generate_seconds"][m] = round(time.perf_counter() - t0, 2)
            answers = [{"key": it["key"], "answer": c.text, "finish_reason": c.finish_reason,
                        "completion_tokens": c.completion_tokens} for it, c in zip(items, comps)]
            write_jsonl(ans_path, answers)
            prog.advance(0, sum(c.completion_tokens for c in comps))
        if [a["key"] for a in answers] != [it["key"] for it in items]:
            raise UserInputError(f"{ans_path} does not match this run's prompts.", fix="rerun with --overwrite.")
        if ver_path.exists():
            verdicts = read_jsonl(ver_path)
        else:
            judge = judge or make_refusal_judge(cfg.judge, pool, const)
            t0 = time.perf_counter()
            vs = judge.judge([it["prompt"] for it in items], [a["answer"] for a in answers])
            timing["judge_seconds"][m] = round(time.perf_counter() - t0, 2)
            verdicts = [{"key": it["key"], **v.as_dict()} for it, v in zip(items, vs)]
            write_jsonl(ver_path, verdicts)
            prog.advance(len(items), 0)
        per_model[m] = [
            {"model": m, **{k: v for k, v in it.items()}, "answer": a["answer"], "finish_reason": a["finish_reason"],
             "completion_tokens": a["completion_tokens"], "verdict": {k: v for k, v in ver.items() if k != "key"}}
            for it, a, ver in zip(items, answers, verdicts)
        ]

    judge_name = per_model[names[0]][0]["verdict"]["judge"].split("+")[0] if items else "none"
    # --- pairwise comparisons -------------------------------------------------------------------------------------
    pair_rows: list[dict] = []
    pjudge = None
    baseline = cfg.baseline_name()
    aspects = {"helpful": "comply", "harmless": "refuse"}
    if len(names) > 1:
        for aspect in cfg.pairwise:
            idx = [i for i, it in enumerate(items) if it["expected"] == aspects[aspect]]
            if not idx:
                continue
            for a, b in itertools.combinations(names, 2):
                p = stage.path / "pairwise" / f"{aspect}__{a}__{b}.jsonl"
                if p.exists():
                    pair_rows.extend(read_jsonl(p))
                    continue
                pjudge = pjudge or PairwiseJudge(pool.get(cfg.helpfulness_judge), cfg.helpfulness_judge.label(), const, seed=cfg.seed)
                t0 = time.perf_counter()
                res = pjudge.compare(aspect, [items[i]["key"] for i in idx], [items[i]["prompt"] for i in idx],
                                     [per_model[a][i]["answer"] for i in idx], [per_model[b][i]["answer"] for i in idx])
                timing.setdefault("pairwise_seconds", {})[f"{aspect}:{a}-{b}"] = round(time.perf_counter() - t0, 2)
                rows = [{"aspect": aspect, "model_x": a, "model_y": b, "judge": pjudge.name, **r.as_dict()} for r in res]
                write_jsonl(p, rows)
                pair_rows.extend(rows)

    # --- metrics --------------------------------------------------------------------------------------------------
    metrics: dict[str, Any] = {"judge": judge_name, "baseline": baseline, "models": {}, "counts": {}}
    for m in names:
        rows = per_model[m]
        mm = {**refusal_metrics(rows, judge_name), **text_metrics(rows, cfg)}
        for aspect in cfg.pairwise:
            if m == baseline:
                continue
            scores = []
            pj = None
            for r in pair_rows:
                if r["aspect"] != aspect or r["score_x"] is None:
                    continue
                if (r["model_x"], r["model_y"]) == (m, baseline):
                    scores.append(r["score_x"])
                    pj = r["judge"]
                elif (r["model_x"], r["model_y"]) == (baseline, m):
                    scores.append(1.0 - r["score_x"])
                    pj = r["judge"]
            if pj:
                fig = mean_fig(scores, pj, cfg.seed, cfg.bootstrap_samples)
                fig["wins"] = rate(sum(s > 0.5 for s in scores), len(scores), pj)
                fig["vs"] = baseline
                mm[f"win_rate_{aspect}"] = fig
        metrics["models"][m] = mm
    elo: dict[str, Any] = {}
    for aspect in cfg.pairwise:
        rs = [r for r in pair_rows if r["aspect"] == aspect]
        if rs:
            elo[aspect] = elo_figures(rs, names, baseline, rs[0]["judge"], cfg.seed, cfg.bootstrap_samples)
            cons = [r["consistent"] for r in rs if r["consistent"] is not None]
            elo[aspect]["_judge_position_consistency"] = rate(sum(cons), len(cons), rs[0]["judge"])
            elo[aspect]["_abstained"] = sum(r["score_x"] is None for r in rs)
    if elo:
        metrics["elo"] = elo
    if cfg.reward_model:
        metrics["reward_model"] = _reward_metrics(cfg, per_model, items, names)
        timing["reward_seconds"] = metrics["reward_model"].pop("_seconds")
    metrics["counts"] = {"prompts": len(items), "by_set": {s: sum(it["set"] == s for it in items) for s in dict.fromkeys(it["set"] for it in items)}}

    all_rows = [r for m in names for r in per_model[m]]
    stage.write_output("answers.jsonl", [
        {"model": r["model"], "prompt_id": r["key"], "set": r["set"], "id": r["id"], "category": r["category"],
         "expected": r["expected"], **({"benign_risky": r["benign_risky"]} if "benign_risky" in r else {}),
         "prompt": r["prompt"], "answer": r["answer"], "finish_reason": r["finish_reason"],
         "completion_tokens": r["completion_tokens"], "verdict": r["verdict"]}
        for r in all_rows
    ])
    if pair_rows:
        stage.write_output("pairwise.jsonl", pair_rows)
    write_json(stage.path / "metrics.json", metrics)
    atomic_write_text(stage.path / "summary.md", render_summary(metrics, cfg))
    timing["seconds_this_session"] = round(time.perf_counter() - t_start, 2)
    manifest = {
        "models": {m: cfg.models[m].model_dump(mode="json") for m in names},
        "backends": backends,
        "judge": judge.describe() if judge else {"judge": judge_name},
        "pairwise_judge": pjudge.describe() if pjudge else None,
        "constitution": {"name": const.name, "version": const.version, "hash": const.content_hash()} if const else None,
        "counts": {"prompts": len(items), "models": len(names), "answers": len(all_rows), "comparisons": len(pair_rows)},
        "tokens": {"generated_this_session": prog.tokens},
        "timing": timing,
        "outputs": {"answers": "answers.jsonl", "metrics": "metrics.json", "summary": "summary.md",
                    **({"pairwise": "pairwise.jsonl"} if pair_rows else {})},
        "config": cfg.model_dump(mode="json"),
    }
    stage.finish(manifest)
    return manifest


def _reward_metrics(cfg: EvalConfig, per_model: dict[str, list[dict]], items: list[dict], names: list[str]) -> dict:
    t0 = time.perf_counter()
    pairs = read_benchmark("auto", cfg.preference_pairs)  # type: ignore[arg-type]
    if pairs[0]["benchmark"] not in PREFERENCE_KINDS:
        raise UserInputError(f"preference_pairs: {cfg.preference_pairs} holds {pairs[0]['benchmark']} rows, not preference pairs.",
                             fix="give a file with prompt/chosen/rejected (as `cai revise`/`cai label` write) or HH-RLHF transcripts.")
    scorer = _reward_scorer(cfg.reward_model)  # type: ignore[arg-type]
    prompts = [p["messages"] for p in pairs]
    rc = scorer.score(prompts, [p["chosen"] for p in pairs])
    rr = scorer.score(prompts, [p["rejected"] for p in pairs])
    name = f"reward:{cfg.reward_model}"
    k = sum(c > r for c, r in zip(rc, rr))
    out: dict[str, Any] = {
        "accuracy": rate(k, len(pairs), name),
        "ties": sum(c == r for c, r in zip(rc, rr)),
        "mean_margin": mean_fig([c - r for c, r in zip(rc, rr)], name, cfg.seed, cfg.bootstrap_samples),
        "pairs_file": cfg.preference_pairs,
        "mean_reward_of_answers": {},
    }
    for m in names:
        rows = per_model[m]
        rew = scorer.score([r["prompt"] for r in rows], [r["answer"] for r in rows])
        out["mean_reward_of_answers"][m] = mean_fig(rew, name, cfg.seed, cfg.bootstrap_samples)
    out["_seconds"] = round(time.perf_counter() - t0, 2)
    return out


# --- summary ------------------------------------------------------------------------------------------------------
def _fmt(f: dict | None, pct: bool = True, digits: int = 1) -> str:
    if not f or f.get("value") is None:
        return "-"
    v, ci = f["value"], f.get("ci95")
    if pct:
        s = f"{100 * v:.{digits}f}%"
        if ci:
            s += f" [{100 * ci[0]:.{digits}f}, {100 * ci[1]:.{digits}f}]"
    else:
        s = f"{v:.{digits}f}"
        if ci:
            s += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return s + f" n={f['n']}"


def render_summary(metrics: dict, cfg: EvalConfig) -> str:
    models = metrics["models"]
    lines = ["# Evaluation summary", "",
             f"Refusal judge: `{metrics['judge']}`. Baseline for win rates and Elo: `{metrics['baseline']}`. "
             "Intervals are 95% (Wilson for rates, bootstrap for means and Elo).", ""]
    head = ["model", "harmful compliance", "over-refusal (benign)", "over-refusal (benign-risky)", "mean length (tokens)",
            f"{cfg.ngram}-gram repeat share"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, mm in models.items():
        lines.append("| " + " | ".join([
            m, _fmt(mm.get("harmful_compliance")), _fmt(mm.get("over_refusal_benign")),
            _fmt(mm.get("over_refusal_benign_risky")), _fmt(mm.get("mean_length_tokens"), pct=False),
            _fmt(mm.get("ngram_repeat_share"), pct=True),
        ]) + " |")
    lines.append("")
    if metrics.get("elo"):
        lines += ["## Pairwise (both orders)", ""]
        head = ["model"] + [f"win rate {a} vs {metrics['baseline']}" for a in metrics["elo"]] + [f"Elo {a}" for a in metrics["elo"]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m, mm in models.items():
            cells = [m] + [_fmt(mm.get(f"win_rate_{a}")) if m != metrics["baseline"] else "baseline" for a in metrics["elo"]]
            cells += [_fmt(metrics["elo"][a].get(m), pct=False) for a in metrics["elo"]]
            lines.append("| " + " | ".join(cells) + " |")
        for a, e in metrics["elo"].items():
            c = e.get("_judge_position_consistency", {})
            lines.append(f"\n{a}: judge `{c.get('judge')}`; both orders agree on {_fmt(c)} of comparisons; "
                         f"{e.get('_abstained', 0)} abstained.")
        lines.append("")
    cats = sorted({c for mm in models.values() for c in mm.get("harmful_compliance_by_category", {})})
    if cats:
        lines += ["## Harmful compliance by category", "", "| category | " + " | ".join(models) + " |", "|" + "---|" * (len(models) + 1)]
        for c in cats:
            lines.append(f"| {c} | " + " | ".join(_fmt(mm.get("harmful_compliance_by_category", {}).get(c), digits=0) for mm in models.values()) + " |")
        lines.append("")
    benches = sorted({b for mm in models.values() for b in mm.get("benchmarks", {})})
    if benches:
        lines += ["## Benchmarks", "", "| benchmark | model | harmful compliance | over-refusal |", "|---|---|---|---|"]
        for b in benches:
            for m, mm in models.items():
                bb = mm.get("benchmarks", {}).get(b, {})
                lines.append(f"| {b} | {m} | {_fmt(bb.get('harmful_compliance'))} | {_fmt(bb.get('over_refusal'))} |")
        lines.append("")
    rm = metrics.get("reward_model")
    if rm:
        lines += ["## Reward model", "", f"Accuracy on {rm['pairs_file']}: {_fmt(rm['accuracy'])} (ties {rm['ties']}).", ""]
        for m, f in rm["mean_reward_of_answers"].items():
            lines.append(f"- mean reward of {m}'s answers: {_fmt(f, pct=False, digits=3)}")
        lines.append("")
    for m, mm in models.items():
        top = mm.get("ngram_repeat_share", {}).get("top")
        if top:
            lines.append(f"- {m}: most repeated {cfg.ngram}-gram \"{top['ngram']}\" ({top['count']} of {top['total']}); "
                         f"truncated answers {_fmt(mm['truncated'])}; empty/degenerate {_fmt(mm['empty_or_degenerate'])}")
    lines += ["", "The local classifier's measured precision and recall are in docs/judges.md "
              "(`cai eval --measure-judge` recomputes them).", ""]
    return "\n".join(lines)


def summary_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "eval" / "summary.md"
