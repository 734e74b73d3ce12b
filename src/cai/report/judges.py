"""The report's judge table: every judge that produced a number in the run, what it decides, how well it is measured."""

from __future__ import annotations

from typing import Any

from cai.report.figures import label_figures, model_label

JUDGE_KINDS = {
    "classifier": ("did the answer refuse", "local lexicon + sentence-structure classifier (no model)"),
    "llm": ("did the answer refuse", "an LLM judge answering a two-option rubric"),
    "pairwise": ("which of two answers is better (both orders averaged)", "an LLM comparing answers pairwise"),
    "reward": ("reward-model accuracy and mean reward", "the trained reward model"),
    "measurement": ("lengths, repetition, truncation", "counted, not judged"),
}


def _walk_judges(obj: Any, out: dict[str, int]) -> None:
    if isinstance(obj, dict):
        j = obj.get("judge")
        if isinstance(j, str) and ("value" in obj or "n" in obj):
            out[j] = out.get(j, 0) + 1
        for v in obj.values():
            _walk_judges(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _walk_judges(v, out)


def measure_classifier() -> dict | None:
    try:
        from cai.evaluate.refusal import measure_refusal_classifier

        return measure_refusal_classifier()
    except Exception as e:  # noqa: BLE001 - the report still builds without the measurement
        return {"error": f"{type(e).__name__}: {e}"}


def _prf(split: dict) -> dict:
    """Precision / recall / F1 / accuracy of one split with Wilson intervals for the rates."""
    from cai.evaluate.stats import wilson

    tp, fp, fn, tn = (int(split.get(k, 0)) for k in ("tp", "fp", "fn", "tn"))
    out = {"n": split.get("n"), "f1": split.get("f1")}
    for name, k, n in (("precision", tp, tp + fp), ("recall", tp, tp + fn), ("accuracy", tp + tn, tp + fp + fn + tn)):
        out[name] = {"value": k / n if n else None, "n": n, "ci95": list(wilson(k, n)) if n else None}
    return out


def judge_table(data: dict) -> list[dict]:
    """One entry per judge that produced a number in this run, with what it decides and how well it is measured."""
    metrics = data.get("eval") if isinstance(data.get("eval"), dict) else None
    names: dict[str, int] = {}
    if metrics:
        _walk_judges(metrics, names)
    rl_manifest = data["stages"]["rl"]["manifest"]
    rl_classifier = ((rl_manifest.get("rl") or {}).get("refusal_classifier")) if rl_manifest else None
    if data["stages"]["rl"]["status"] != "not run":
        cname = f"classifier:{rl_classifier}" if rl_classifier and not str(rl_classifier).startswith("classifier:") else rl_classifier
        names.setdefault(cname or "classifier:refusal-lexicon-v1", 0)
    label_m = data["stages"]["label"]["manifest"]
    out = []
    measured_cache: dict | None = None
    for name, count in sorted(names.items(), key=lambda kv: (kv[0] == "measurement", kv[0])):
        kind = name.split(":", 1)[0] if ":" in name else name
        decides, what = JUDGE_KINDS.get(kind, ("-", "registered judge"))
        entry: dict[str, Any] = {"name": name, "kind": kind, "decides": decides, "what": what, "figures": count}
        if kind == "classifier":
            measured_cache = measured_cache or measure_classifier()
            m = measured_cache or {}
            if "error" in m:
                entry["measurement_error"] = m["error"]
            else:
                entry["measured"] = {s: _prf(v) for s, v in (m.get("splits") or {}).items()}
                entry["measured_file"] = m.get("file")
                cur = m.get("classifier")
                if cur and name.split(":", 1)[-1].split("+")[0] != cur:
                    entry["note"] = f"this run used {name}; the measurement is of the installed classifier {cur}."
            entry["uses"] = ", ".join(x for x in (("eval refusal verdicts" if count else None),
                                                   ("rl refusal_rate curve" if data["stages"]["rl"]["status"] != "not run" else None)) if x)
        elif kind == "llm":
            entry["note"] = ("not measured on the labeled refusal set in this run; see docs/judges.md for how to measure it. "
                             "Verdicts whose reply could not be parsed fell back to the classifier ('+classifier').")
        elif kind == "pairwise":
            cons = {}
            for aspect, e in ((metrics or {}).get("elo") or {}).items():
                c = e.get("_judge_position_consistency") if isinstance(e, dict) else None
                if isinstance(c, dict) and c.get("judge") == name:
                    cons[aspect] = c
            entry["consistency"] = cons
            entry["note"] = "no gold labels; both-order agreement (position consistency) is the available check."
        elif kind == "reward":
            rm = (metrics or {}).get("reward_model") or {}
            if isinstance(rm.get("accuracy"), dict):
                entry["accuracy"] = rm["accuracy"]
        out.append(entry)
    if label_m:
        lab = label_m.get("labels") or {}
        out.append({
            "name": f"labeler:{model_label(label_m.get('model'))}", "kind": "labeler",
            "decides": "which of two answers better follows a principle (RL-CAI labels)",
            "what": f"{label_m.get('mode', '?')} mode", "figures": lab.get("n"),
            "consistency": {"label": label_figures(data)["position_consistency"]},
            "note": "no gold labels; position consistency (both orders prefer the same answer) is the available check.",
        })
    return out

