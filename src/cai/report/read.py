"""Reading a run folder for the report: stage statuses, manifests, metrics, samples, traces and warnings.

Nothing here is fatal: absent stages are "not run", stages without ``manifest.json`` "unfinished", and unreadable
files are recorded as problems that the report lists among its warnings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cai import registry
from cai.errors import UserInputError
from cai.manifests import MANIFESTS, LabelManifest, StageManifest, load_manifest
from cai.report.figures import fmt_fig, is_num, model_label, wilson_fig
from cai.report.judges import judge_table

STAGES = registry.PIPELINE_STAGES  # the order of the report's sections
TRAIN_STAGES = tuple(s for s in registry.TRAINING_STAGES if s in STAGES)  # orpo: in the policy comparison table
DEFAULT_MAX_TRACES = 300

# stage -> (metrics.jsonl key, chart title, is a share in [0, 1])
CURVES: dict[str, list[tuple[str, str, bool]]] = {
    "sft": [("loss", "loss", False), ("mean_token_accuracy", "token accuracy", True), ("entropy", "entropy", False)],
    "reward": [("loss", "loss (soft Bradley-Terry)", False), ("accuracy", "batch pair accuracy", True),
               ("margin", "reward margin (chosen - rejected)", False), ("mean_reward", "mean reward", False)],
    "dpo": [("loss", "loss", False), ("rewards/margins", "implicit reward margin", False),
            ("rewards/accuracies", "implicit reward accuracy", True), ("rewards/chosen", "implicit reward, chosen", False)],
    "rl": [("reward", "reward (reward-model score)", False), ("kl", "KL to the reference", False),
           ("completions/mean_length", "answer length (tokens)", False), ("answer_words", "answer length (words)", False),
           ("refusal_rate", "refusal rate", True), ("repeat_3gram_share", "answers sharing the top 3-gram", True),
           ("distinct_3gram_ratio", "distinct 3-gram ratio", True), ("loss", "loss", False)],
    "orpo": [("loss", "loss (NLL + odds ratio)", False), ("nll_loss", "NLL of the chosen answer", False),
             ("log_odds_ratio", "log odds ratio", False), ("rewards/accuracies", "implicit reward accuracy", True)],
}
STAGE_TITLES = {"sft": "SL-CAI supervised fine-tuning (sft)", "reward": "Preference / reward model (reward)",
                "dpo": "RL-CAI with DPO (dpo)", "rl": "RL-CAI against the reward model (rl)"}


# --- reading --------------------------------------------------------------------------------------------------------
class _Reader:
    """Reads a run's files, tolerating absent, unfinished and malformed ones (recorded as problems, never fatal)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.problems: list[str] = []

    def json(self, rel: str) -> Any:
        p = self.run_dir / rel
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            self.problems.append(f"could not read {rel}: {e}")
            return None

    def jsonl(self, rel: str, limit: int | None = None) -> list[dict] | None:
        p = self.run_dir / rel
        if not p.exists():
            return None
        rows, bad = [], 0
        try:
            with open(p, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError:
                        bad += 1
                        continue
                    if isinstance(obj, dict):
                        rows.append(obj)
                    if limit is not None and len(rows) >= limit:
                        break
        except (OSError, UnicodeDecodeError) as e:
            self.problems.append(f"could not read {rel}: {e}")
            return None
        if bad:
            self.problems.append(f"{rel}: skipped {bad} malformed line(s)")
        return rows

    def typed(self, stage: str, manifest: Any) -> StageManifest | None:
        """The manifest as its typed model (:func:`cai.manifests.load_manifest`); an invalid one is a problem."""
        if manifest is None or stage not in MANIFESTS:
            return None
        try:
            return load_manifest(stage, manifest)
        except UserInputError as e:
            self.problems.append(f"{stage}/manifest.json: {e.message}")
            return None

    def count_lines(self, rel: str) -> int:
        p = self.run_dir / rel
        try:
            with open(p, "rb") as f:
                return sum(1 for line in f if line.strip())
        except OSError:
            return 0


def load_run(run_dir: str | Path, *, max_traces: int = DEFAULT_MAX_TRACES) -> dict[str, Any]:
    """Everything the report shows, read from ``run_dir``. Raises :class:`UserInputError` if it is not a folder."""
    run = Path(run_dir)
    if not run.exists():
        raise UserInputError(f"Run folder '{run}' does not exist.",
                             fix="pass a run folder such as runs/demo (the folder holding revise/, label/, eval/ ...).")
    if not run.is_dir():
        raise UserInputError(f"'{run}' is a file, not a run folder.", fix="pass the run folder, e.g. runs/demo.")
    r = _Reader(run)
    stages: dict[str, dict[str, Any]] = {}
    for s in STAGES:
        d = run / s
        manifest = r.json(f"{s}/manifest.json")
        status = "complete" if manifest is not None else ("unfinished" if d.is_dir() else "not run")
        stages[s] = {"status": status, "manifest": manifest or {}, "model": r.typed(s, manifest)}
    if (all(st["status"] == "not run" for st in stages.values()) and not (run / "pipeline.json").exists()
            and not (run / "redteam").is_dir()):  # a run may hold only `cai redteam` (not a pipeline stage)
        raise UserInputError(f"'{run}' is not a run folder: it holds none of the stage folders ({', '.join(STAGES)}).",
                             fix="pass a run folder such as runs/demo, made by `cai revise`, `cai pipeline` or another stage.")
    data: dict[str, Any] = {"run_dir": str(run), "run": run.resolve().name, "stages": stages, "problems": r.problems}

    # revise
    if stages["revise"]["status"] != "not run":
        total = r.count_lines("revise/data.jsonl")
        rows = r.jsonl("revise/data.jsonl", limit=max_traces if max_traces > 0 else None)
        data["revise"] = {"rows": rows, "total": total}
    # label
    if stages["label"]["status"] != "not run":
        data["label"] = {"manifest": stages["label"]["manifest"]}
    # training curves
    for s in TRAIN_STAGES:
        if stages[s]["status"] != "not run":
            stages[s]["metrics"] = r.jsonl(f"{s}/metrics.jsonl") or []
    if stages["reward"]["status"] != "not run":
        data["reward_eval"] = r.json("reward/eval.json")
    if stages["rl"]["status"] != "not run":
        samples = r.jsonl("rl/samples.jsonl")
        if samples:
            last = max(int(x.get("step", 0) or 0) for x in samples)
            data["rl_samples"] = {"step": last, "rows": [x for x in samples if int(x.get("step", 0) or 0) == last],
                                  "total": len(samples)}
    # eval
    if stages["eval"]["status"] != "not run":
        data["eval"] = r.json("eval/metrics.json")
    data["judges"] = judge_table(data)
    data["warnings"] = collect_warnings(data)
    return data


# --- warnings ---------------------------------------------------------------------------------------------------------
def collect_warnings(data: dict) -> list[dict]:
    w: list[dict] = []
    st = data["stages"]
    for s in STAGES:
        if st[s]["status"] == "unfinished":
            w.append({"where": s, "text": f"the {s} stage is unfinished (no manifest.json); its numbers may be partial."})
    lm = st["label"]["model"]
    if isinstance(lm, LabelManifest):
        for t in lm.warnings or (lm.labels.warnings if lm.labels else []):
            w.append({"where": "label", "text": str(t)})
    hashes = {}
    for s in STAGES:
        m = st[s].get("model")
        if isinstance(m, StageManifest) and m.constitution and m.constitution.hash:
            hashes[s] = m.constitution.hash
    if len(set(hashes.values())) > 1:
        w.append({"where": "constitution", "text": "stages used different constitutions: "
                  + ", ".join(f"{s}={h}" for s, h in hashes.items())})
    ev = data.get("reward_eval") or {}
    after = ev.get("after_training") if isinstance(ev, dict) else None
    if isinstance(after, dict) and is_num(after.get("accuracy")):
        f = wilson_fig(after["accuracy"], after.get("n"))
        if f and f["ci95"][0] <= 0.5:
            w.append({"where": "reward", "text": f"reward-model held-out accuracy {fmt_fig(f)} does not exclude chance (50%)."})
    metrics = data.get("eval") if isinstance(data.get("eval"), dict) else None
    for aspect, e in ((metrics or {}).get("elo") or {}).items():
        c = e.get("_judge_position_consistency") if isinstance(e, dict) else None
        if isinstance(c, dict) and is_num(c.get("value")) and c["value"] < 0.6:
            w.append({"where": "eval", "text": f"pairwise judge ({aspect}) agrees with itself across orders only "
                      f"{fmt_fig(c)}: win rates and Elo are mostly noise."})
    rl = st["rl"].get("metrics") or []
    ref = [x["refusal_rate"] for x in rl if is_num(x.get("refusal_rate"))]
    if len(ref) >= 2 and ref[-1] - ref[0] >= 0.3:
        w.append({"where": "rl", "text": f"RL refusal rate rose from {ref[0]:.0%} to {ref[-1]:.0%}: the policy may be learning to "
                  "refuse everything (reward hacking)."})
    rep = [x["repeat_3gram_share"] for x in rl if is_num(x.get("repeat_3gram_share"))]
    if len(rep) >= 2 and rep[-1] >= 0.8 and rep[-1] - rep[0] >= 0.3:
        w.append({"where": "rl", "text": f"the share of RL answers containing the step's most widespread 3-gram rose to "
                  f"{rep[-1]:.0%}: answers converge on boilerplate."})
    for p in data.get("problems", []):
        w.append({"where": "files", "text": p})
    return w



def _typed(data: dict, stage: str) -> StageManifest | None:
    m = data["stages"].get(stage, {}).get("model")
    return m if isinstance(m, StageManifest) else None


def models_of(data: dict) -> list[tuple[str, str, str]]:
    """(stage, role, model) for every model a finished stage names, read from the typed manifests."""
    out = []
    rv = _typed(data, "revise")
    for role, d in (getattr(rv, "models", None) or {}).items():
        out.append(("revise", role, model_label(d)))
    lm = _typed(data, "label")
    if getattr(lm, "model", None):
        out.append(("label", "labeler", model_label(lm.model)))
    for s, key, role in (("sft", "base_model", "base"), ("reward", "base_model", "base"), ("dpo", "policy", "policy"),
                         ("rl", "policy", "policy")):
        value = getattr(_typed(data, s), key, None)
        if value:
            out.append((s, role, model_label(value)))
    rl = _typed(data, "rl")
    if getattr(rl, "reward_model", None):
        out.append(("rl", "reward model", str(rl.reward_model)))
    ev = _typed(data, "eval")
    if ev is not None:
        for name, d in ev.models.items():
            out.append(("eval", f"evaluated: {name}", model_label(d)))
        if ev.judge:
            out.append(("eval", "refusal judge", str(ev.judge.get("judge", "?"))))
        if ev.pairwise_judge:
            out.append(("eval", "pairwise judge", str(ev.pairwise_judge.get("judge", "?"))))
    return out


def accounting_rows(data: dict) -> list[dict]:
    """Per stage and role: calls, tokens, seconds, tokens/s and money, from the typed manifests. Stages that record
    no per-role accounting (written before it existed) are read from their raw backend counters."""
    rows = []
    for s in STAGES:
        m = data["stages"][s].get("model")
        if not isinstance(m, StageManifest):
            continue
        roles = m.role_accounting()
        seconds = m.timing.get("seconds_this_session")
        if seconds is None:
            seconds = (getattr(m, "training", None) or {}).get("seconds_this_session")
        if not roles and not is_num(seconds):
            continue
        rows.append({"stage": s, "seconds": seconds if is_num(seconds) else None, "roles": roles})
    return rows


def run_constitution(data: dict) -> dict | None:
    """Name, version and hash of the constitution the run's first constitution-reading stage used."""
    for s in ("revise", "label", "eval"):
        m = _typed(data, s)
        if m is not None and m.constitution and m.constitution.hash:
            return m.constitution.model_dump(mode="json")
    return None



def curve_series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if is_num(v) and is_num(r.get("step")) and "train_runtime" not in r:
            xs.append(float(r["step"]))
            ys.append(float(v))
    return xs, ys

