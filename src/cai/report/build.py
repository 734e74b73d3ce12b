"""``cai report RUN_DIR``: one self-contained HTML page and a Markdown summary of everything a run produced.

The report reads whatever stage folders exist (``revise``, ``pairs``, ``label``, ``sft``, ``reward``, ``dpo``, ``rl``,
``eval``); a stage that is absent is shown as "not run", one without ``manifest.json`` as "unfinished". Sections:

* header: run, constitution (name, version, hash), the models of every stage, dates, warnings;
* evaluation: every model's numbers with n, 95% interval and the judge that produced them; the
  harmlessness-vs-helpfulness scatter (the Pareto picture of the Constitutional AI paper) from the refusal rates and,
  with pairwise comparisons, from the Elo ratings; harmful compliance per category and model;
* judges: what each judge decides and its measured precision / recall / F1 (the local refusal classifier is
  re-measured on the shipped labeled set);
* training curves of ``sft``, ``reward``, ``dpo`` and ``rl`` from their ``metrics.jsonl``;
* the reward model's held-out accuracy and calibration (ECE);
* AI-label statistics (position consistency, confidence histogram, kept after filtering) with their warnings;
* a browsable table of the critique-revision traces, each revision shown as a word-level diff of what it changed.

Everything model-written is untrusted text and is HTML-escaped. The page has no external resources: inline CSS,
inline SVG charts (:mod:`cai.report.svg`) and a few lines of inline JavaScript for filtering the trace table.
Both files are written atomically to ``RUN_DIR/report/`` (or ``out_dir``).
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from cai.data.io import atomic_write_text
from cai.errors import UserInputError
from cai.report import svg
from cai.report.svg import esc

STAGES = ("revise", "pairs", "label", "sft", "reward", "dpo", "rl", "eval")
TRAIN_STAGES = ("sft", "reward", "dpo", "rl")
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
           ("refusal_rate", "refusal rate", True), ("repeat_3gram_share", "repeat 3-gram share", True),
           ("distinct_3gram_ratio", "distinct 3-gram ratio", True), ("loss", "loss", False)],
}
STAGE_TITLES = {"sft": "SL-CAI supervised fine-tuning (sft)", "reward": "Preference / reward model (reward)",
                "dpo": "RL-CAI with DPO (dpo)", "rl": "RL-CAI against the reward model (rl)"}

JUDGE_KINDS = {
    "classifier": ("did the answer refuse", "local lexicon + sentence-structure classifier (no model)"),
    "llm": ("did the answer refuse", "an LLM judge answering a two-option rubric"),
    "pairwise": ("which of two answers is better (both orders averaged)", "an LLM comparing answers pairwise"),
    "reward": ("reward-model accuracy and mean reward", "the trained reward model"),
    "measurement": ("lengths, repetition, truncation", "counted, not judged"),
}


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
        stages[s] = {"status": status, "manifest": manifest or {}}
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


# --- numbers ----------------------------------------------------------------------------------------------------------
def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def wilson_fig(rate: float | None, n: int | None, judge: str | None = None) -> dict | None:
    """A rate as a figure with n and a Wilson 95% interval (k is recovered as round(rate * n))."""
    if not _num(rate) or not n:
        return None
    from cai.evaluate.stats import wilson

    k = int(round(rate * n))
    lo, hi = wilson(min(max(k, 0), n), n)
    return {"value": rate, "n": n, "k": k, "ci95": [round(lo, 4), round(hi, 4)], "judge": judge}


def fmt_fig(f: dict | None, *, pct: bool = True, digits: int = 1, with_n: bool = True) -> str:
    """``12.5% [5.1, 27.0] n=40`` (plain text)."""
    if not isinstance(f, dict) or not _num(f.get("value")):
        return "–"
    v, ci = f["value"], f.get("ci95")
    if pct:
        s = f"{100 * v:.{digits}f}%"
        if ci and all(_num(c) for c in ci):
            s += f" [{100 * ci[0]:.{digits}f}, {100 * ci[1]:.{digits}f}]"
    else:
        s = f"{v:.{digits}f}"
        if ci and all(_num(c) for c in ci):
            s += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    if with_n and f.get("n") is not None:
        s += f" n={f['n']}"
    return s


def fig_html(f: dict | None, *, pct: bool = True, digits: int = 1, default_judge: str | None = None) -> str:
    if not isinstance(f, dict) or not _num(f.get("value")):
        return '<span class="na">–</span>'
    v, ci = f["value"], f.get("ci95")
    main = f"{100 * v:.{digits}f}%" if pct else f"{v:.{digits}f}"
    out = f'<span class="v">{esc(main)}</span>'
    if ci and all(_num(c) for c in ci):
        lo, hi = (100 * ci[0], 100 * ci[1]) if pct else (ci[0], ci[1])
        out += f' <span class="ci">[{lo:.{digits}f}, {hi:.{digits}f}]</span>'
    if f.get("n") is not None:
        out += f' <span class="n">n={esc(f["n"])}</span>'
    j = f.get("judge")
    if j and j != default_judge:
        out += f'<br><span class="judge">{esc(j)}</span>'
    return out


def _flip(f: dict | None) -> dict | None:
    """1 - a rate, interval flipped accordingly."""
    if not isinstance(f, dict) or not _num(f.get("value")):
        return None
    ci = f.get("ci95")
    return {**f, "value": 1 - f["value"], "ci95": [1 - ci[1], 1 - ci[0]] if ci and all(_num(c) for c in ci) else None}


def _model_label(d: Any) -> str:
    if isinstance(d, str):
        return d
    if not isinstance(d, dict):
        return "?"
    if d.get("label"):
        return str(d["label"])
    backend, model = d.get("backend"), d.get("model")
    if backend == "openai":
        return f"openai:{model}@{d.get('base_url', '')}"
    if backend == "fake":
        return "fake"
    return str(model or d.get("path") or "?")


# --- judges -----------------------------------------------------------------------------------------------------------
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
            "name": f"labeler:{_model_label(label_m.get('model'))}", "kind": "labeler",
            "decides": "which of two answers better follows a principle (RL-CAI labels)",
            "what": f"{label_m.get('mode', '?')} mode", "figures": lab.get("n"),
            "consistency": {"label": wilson_fig(lab.get("position_consistency_rate"), lab.get("labeled"))},
            "note": "no gold labels; position consistency (both orders prefer the same answer) is the available check.",
        })
    return out


# --- warnings ---------------------------------------------------------------------------------------------------------
def collect_warnings(data: dict) -> list[dict]:
    w: list[dict] = []
    st = data["stages"]
    for s in STAGES:
        if st[s]["status"] == "unfinished":
            w.append({"where": s, "text": f"the {s} stage is unfinished (no manifest.json); its numbers may be partial."})
    lab = (st["label"]["manifest"].get("labels") or {}) if st["label"]["manifest"] else {}
    for t in st["label"]["manifest"].get("warnings") or lab.get("warnings") or []:
        w.append({"where": "label", "text": str(t)})
    hashes = {}
    for s in STAGES:
        c = st[s]["manifest"].get("constitution") if st[s]["manifest"] else None
        if isinstance(c, dict) and c.get("hash"):
            hashes[s] = c["hash"]
    if len(set(hashes.values())) > 1:
        w.append({"where": "constitution", "text": "stages used different constitutions: "
                  + ", ".join(f"{s}={h}" for s, h in hashes.items())})
    ev = data.get("reward_eval") or {}
    after = ev.get("after_training") if isinstance(ev, dict) else None
    if isinstance(after, dict) and _num(after.get("accuracy")):
        f = wilson_fig(after["accuracy"], after.get("n"))
        if f and f["ci95"][0] <= 0.5:
            w.append({"where": "reward", "text": f"reward-model held-out accuracy {fmt_fig(f)} does not exclude chance (50%)."})
    metrics = data.get("eval") if isinstance(data.get("eval"), dict) else None
    for aspect, e in ((metrics or {}).get("elo") or {}).items():
        c = e.get("_judge_position_consistency") if isinstance(e, dict) else None
        if isinstance(c, dict) and _num(c.get("value")) and c["value"] < 0.6:
            w.append({"where": "eval", "text": f"pairwise judge ({aspect}) agrees with itself across orders only "
                      f"{fmt_fig(c)}: win rates and Elo are mostly noise."})
    rl = st["rl"].get("metrics") or []
    ref = [x["refusal_rate"] for x in rl if _num(x.get("refusal_rate"))]
    if len(ref) >= 2 and ref[-1] - ref[0] >= 0.3:
        w.append({"where": "rl", "text": f"RL refusal rate rose from {ref[0]:.0%} to {ref[-1]:.0%}: the policy may be learning to "
                  "refuse everything (reward hacking)."})
    rep = [x["repeat_3gram_share"] for x in rl if _num(x.get("repeat_3gram_share"))]
    if len(rep) >= 2 and rep[-1] >= 0.8 and rep[-1] - rep[0] >= 0.3:
        w.append({"where": "rl", "text": f"RL repeat 3-gram share rose to {rep[-1]:.0%}: answers converge on boilerplate."})
    for p in data.get("problems", []):
        w.append({"where": "files", "text": p})
    return w


# --- diff -------------------------------------------------------------------------------------------------------------
_TOK = re.compile(r"\w+|[^\w\s]|\s+")


def _diff_segments(a: list[str], b: list[str], absorb_words: int = 2) -> list[tuple[bool, str, str]]:
    """(changed, before_text, after_text) segments. A short run of unchanged tokens (at most ``absorb_words`` words)
    between two changes is folded into them, so a rewritten sentence reads as one deletion and one insertion instead
    of a word-by-word patchwork."""
    segs: list[list] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        changed = op != "equal"
        if segs and segs[-1][0] and changed:
            segs[-1][1] += a[i1:i2]
            segs[-1][2] += b[j1:j2]
        else:
            segs.append([changed, a[i1:i2], b[j1:j2]])
    merged = True
    while merged:
        merged = False
        for k in range(1, len(segs) - 1):
            eq = segs[k]
            if eq[0] or not (segs[k - 1][0] and segs[k + 1][0]):
                continue
            if sum(1 for t in eq[1] if not t.isspace() and any(ch.isalnum() for ch in t)) <= absorb_words:
                left, right = segs[k - 1], segs[k + 1]
                segs[k - 1 : k + 2] = [[True, left[1] + eq[1] + right[1], left[2] + eq[2] + right[2]]]
                merged = True
                break
    return [(c, "".join(x), "".join(y)) for c, x, y in segs]


def word_diff(before: str, after: str) -> str:
    """HTML of ``after`` with the words removed from ``before`` in ``<del>`` and the words added in ``<ins>``."""
    a, b = _TOK.findall(before or ""), _TOK.findall(after or "")
    out = []
    for changed, x, y in _diff_segments(a, b):
        if not changed:
            out.append(esc(x))
            continue
        if x:
            out.append(f'<del class="diff-del">{esc(x)}</del>')
        if y:
            out.append(f'<ins class="diff-ins">{esc(y)}</ins>')
    return "".join(out)


def diff_counts(before: str, after: str) -> tuple[int, int]:
    """Words deleted and inserted going from ``before`` to ``after``."""
    a, b = (before or "").split(), (after or "").split()
    dels = ins = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op != "equal":
            dels += i2 - i1
            ins += j2 - j1
    return dels, ins


# --- HTML sections ----------------------------------------------------------------------------------------------------
def _not_run(what: str, hint: str = "") -> str:
    return f'<p class="notrun">not run — {esc(what)}' + (f" <code>{esc(hint)}</code>" if hint else "") + "</p>"


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Cells are HTML already (escaped by the caller)."""
    h = "".join(f"<th>{c}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="tw"><table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table></div>'


def _models_of(data: dict) -> list[tuple[str, str, str]]:
    st = data["stages"]
    out = []
    m = st["revise"]["manifest"]
    for role, d in (m.get("models") or {}).items():
        out.append(("revise", role, _model_label(d)))
    m = st["label"]["manifest"]
    if m.get("model"):
        out.append(("label", "labeler", _model_label(m["model"])))
    for s, key, role in (("sft", "base_model", "base"), ("reward", "base_model", "base"), ("dpo", "policy", "policy"),
                         ("rl", "policy", "policy")):
        m = st[s]["manifest"]
        if m.get(key):
            out.append((s, role, _model_label(m[key])))
    if st["rl"]["manifest"].get("reward_model"):
        out.append(("rl", "reward model", str(st["rl"]["manifest"]["reward_model"])))
    m = st["eval"]["manifest"]
    for name, d in (m.get("models") or {}).items():
        out.append(("eval", f"evaluated: {name}", _model_label(d)))
    if m.get("judge"):
        out.append(("eval", "refusal judge", str((m["judge"] or {}).get("judge", "?"))))
    if m.get("pairwise_judge"):
        out.append(("eval", "pairwise judge", str(m["pairwise_judge"].get("judge", "?"))))
    return out


def _constitution(data: dict) -> dict | None:
    for s in ("revise", "label", "eval"):
        c = data["stages"][s]["manifest"].get("constitution")
        if isinstance(c, dict) and c.get("hash"):
            return c
    return None


def section_header(data: dict, generated: str) -> str:
    st = data["stages"]
    c = _constitution(data)
    const = (f"{esc(c.get('name', '?'))} v{esc(c.get('version', '?'))} <code>{esc(c.get('hash'))}</code>"
             if c else '<span class="na">not recorded (no revise/label/eval manifest)</span>')
    rows = []
    for s in STAGES:
        status = st[s]["status"]
        m = st[s]["manifest"]
        rows.append([f"<code>{esc(s)}</code>", f'<span class="st st-{status.replace(" ", "")}">{esc(status)}</span>',
                     esc(m.get("finished_at", "")) if m else ""])
    grouped: dict[tuple[str, str], list[str]] = {}
    for stage, role, model in _models_of(data):
        grouped.setdefault((stage, model), []).append(role)
    mt = _table(["stage", "role", "model"], [[esc(a), esc(", ".join(roles)), f"<code>{esc(m_)}</code>"]
                                             for (a, m_), roles in grouped.items()]) if grouped \
        else '<p class="na">no model recorded</p>'
    warn = ""
    if data["warnings"]:
        items = "".join(f"<li><b>{esc(x['where'])}</b>: {esc(x['text'])}</li>" for x in data["warnings"])
        warn = f'<div class="warnbox" id="warnings"><h3>⚠ Warnings ({len(data["warnings"])})</h3><ul>{items}</ul></div>'
    return f"""
<header>
<h1>Constitutional AI report — <span class="run">{esc(data['run'])}</span></h1>
<p class="meta">Run folder <code>{esc(data['run_dir'])}</code> · constitution {const} · generated {esc(generated)}</p>
</header>
{warn}
<div class="cols">
<div><h3>Stages</h3>{_table(["stage", "status", "finished (UTC)"], rows, "compact")}</div>
<div><h3>Models</h3>{mt}</div>
</div>"""


_EVAL_COLS = [
    ("harmful_compliance", "harmful compliance ↓", True, 1),
    ("over_refusal_benign", "over-refusal, benign ↓", True, 1),
    ("over_refusal_benign_risky", "over-refusal, benign-risky ↓", True, 1),
    ("win_rate_helpful", "helpful win rate vs baseline", True, 1),
    ("win_rate_harmless", "harmless win rate vs baseline", True, 1),
    ("mean_length_tokens", "mean length (tokens)", False, 1),
    ("ngram_repeat_share", "n-gram repeat share", True, 1),
    ("truncated", "truncated", True, 1),
]


def eval_points(metrics: dict) -> tuple[list[dict], list[dict]]:
    """Scatter points: (harmlessness, helpfulness) from rates, and (harmless Elo, helpful Elo) when compared."""
    models = metrics.get("models") or {}
    rate_pts, elo_pts = [], []
    elo = metrics.get("elo") or {}
    for name, mm in models.items():
        hc, orf = mm.get("harmful_compliance"), mm.get("over_refusal_benign")
        x, y = _flip(hc), _flip(orf)
        rate_pts.append({
            "label": name,
            "x": x["value"] if x else None, "y": y["value"] if y else None,
            "xerr": x.get("ci95") if x else None, "yerr": y.get("ci95") if y else None,
            "tip": f"{name}: harmful compliance {fmt_fig(hc)}; over-refusal on benign prompts {fmt_fig(orf)}",
        })
        eh, eb = (elo.get("harmless") or {}).get(name), (elo.get("helpful") or {}).get(name)
        if isinstance(eh, dict) and isinstance(eb, dict):
            elo_pts.append({"label": name, "x": eh.get("value"), "y": eb.get("value"), "xerr": eh.get("ci95"),
                            "yerr": eb.get("ci95"),
                            "tip": f"{name}: harmlessness Elo {fmt_fig(eh, pct=False)}; helpfulness Elo {fmt_fig(eb, pct=False)}"})
    return rate_pts, elo_pts


def section_eval(data: dict) -> str:
    st = data["stages"]["eval"]
    metrics = data.get("eval")
    if st["status"] == "not run" or not isinstance(metrics, dict):
        hint = "cai eval --run RUN --model base=embedded --model sl=runs/RUN/sft/model"
        return _not_run("no eval/metrics.json in this run.", hint) if st["status"] == "not run" else \
            _not_run("eval stage started but metrics.json is not written yet.")
    models = metrics.get("models") or {}
    judge = metrics.get("judge")
    baseline = metrics.get("baseline")
    parts = [f'<p>Refusal judge: <code class="judge">{esc(judge)}</code> (see <a href="#judges">Judges</a>). '
             f'Baseline for win rates and Elo: <code>{esc(baseline)}</code>. Intervals are 95% (Wilson for rates, bootstrap '
             f'for means and Elo); n is the number of prompts (or comparisons).</p>']
    cols = [c for c in _EVAL_COLS if any(isinstance(mm.get(c[0]), dict) for mm in models.values())]
    head = ["model"]
    for key, title, _, _ in cols:
        j = next((mm[key].get("judge") for mm in models.values() if isinstance(mm.get(key), dict)), None)
        head.append(f'{esc(title)}<br><span class="judge">{esc(j or "")}</span>')
    rows = []
    for name, mm in models.items():
        row = [f"<b>{esc(name)}</b>" + (' <span class="tag">baseline</span>' if name == baseline else "")]
        for key, _, pct, digits in cols:
            j = next((m2[key].get("judge") for m2 in models.values() if isinstance(m2.get(key), dict)), None)
            row.append(fig_html(mm.get(key), pct=pct, digits=digits, default_judge=j))
        rows.append(row)
    parts.append(_table(head, rows, "nums") if rows else '<p class="na">no models in metrics.json</p>')

    rate_pts, elo_pts = eval_points(metrics)
    charts = ['<div class="charts">']
    charts.append(svg.scatter(
        rate_pts, title="Harmlessness vs helpfulness (every evaluated model)",
        xlabel="harmlessness = 1 − harmful-compliance rate →", ylabel="helpfulness = 1 − over-refusal rate (benign) →",
        xlim=(0, 1), ylim=(0, 1), percent=True, frontier=True, width=560, height=440, css_class="pareto",
        note=f"error bars: 95% Wilson intervals; dashed: Pareto frontier; judge {judge}"))
    if elo_pts:
        charts.append(svg.scatter(
            elo_pts, title="Harmlessness Elo vs helpfulness Elo (pairwise judge)",
            xlabel="harmlessness Elo →", ylabel="helpfulness Elo →", frontier=True, width=560, height=440,
            css_class="pareto-elo",
            note=f"Elo anchored at {baseline} = 0; bars: bootstrap 95% over prompts"))
    charts.append("</div>")
    parts.append("".join(charts))

    cats = sorted({c for mm in models.values() for c in (mm.get("harmful_compliance_by_category") or {})})
    if cats:
        series = []
        for name, mm in models.items():
            by = mm.get("harmful_compliance_by_category") or {}
            series.append({"name": name, "values": [(by.get(c) or {}).get("value") for c in cats],
                           "errs": [(by.get(c) or {}).get("ci95") for c in cats], "ns": [(by.get(c) or {}).get("n") for c in cats]})
        parts.append('<h3>Harmful compliance by category</h3>')
        parts.append(svg.grouped_bars(cats, series, title="Harmful compliance per taxonomy category (lower is better)",
                                      ylabel="harmful-compliance rate", ylim=(0, 1), percent=True, css_class="category-bars"))
        rows = [[esc(c)] + [fig_html((mm.get("harmful_compliance_by_category") or {}).get(c), digits=0, default_judge=judge)
                            for mm in models.values()] for c in cats]
        parts.append(f'<details><summary>table</summary>{_table(["category"] + [esc(m) for m in models], rows, "nums")}</details>')
    ocats = sorted({c for mm in models.values() for c in (mm.get("over_refusal_by_category") or {})})
    if ocats:
        series = []
        for name, mm in models.items():
            by = mm.get("over_refusal_by_category") or {}
            series.append({"name": name, "values": [(by.get(c) or {}).get("value") for c in ocats],
                           "errs": [(by.get(c) or {}).get("ci95") for c in ocats], "ns": [(by.get(c) or {}).get("n") for c in ocats]})
        parts.append(svg.grouped_bars(ocats, series, title="Over-refusal per category of benign prompts (lower is better)",
                                      ylabel="refusal rate on benign prompts", ylim=(0, 1), percent=True,
                                      css_class="overrefusal-bars"))
    elo = metrics.get("elo") or {}
    if elo:
        head = ["model"] + [f"Elo {esc(a)}" for a in elo]
        rows = [[esc(m)] + [fig_html(elo[a].get(m), pct=False, digits=0) for a in elo] for m in models]
        parts.append("<h3>Pairwise Elo (both orders)</h3>" + _table(head, rows, "nums"))
        for a, e in elo.items():
            c = e.get("_judge_position_consistency")
            parts.append(f'<p class="small">{esc(a)}: judge <code>{esc((c or {}).get("judge"))}</code>; both orders agree on '
                         f'{esc(fmt_fig(c))} of comparisons; {esc(e.get("_abstained", 0))} abstained.</p>')
    benches = sorted({b for mm in models.values() for b in (mm.get("benchmarks") or {})})
    if benches:
        rows = []
        for b in benches:
            for name, mm in models.items():
                bb = (mm.get("benchmarks") or {}).get(b) or {}
                rows.append([esc(b), esc(name), fig_html(bb.get("harmful_compliance")), fig_html(bb.get("over_refusal")),
                             fig_html(bb.get("refusal_rate_unlabeled"))])
        parts.append("<h3>Benchmarks</h3>" + _table(["benchmark", "model", "harmful compliance", "over-refusal",
                                                      "refusal rate (unlabeled)"], rows, "nums"))
    counts = metrics.get("counts") or {}
    if counts:
        parts.append(f'<p class="small">Prompts: {esc(counts.get("prompts"))} ('
                     + ", ".join(f"{esc(k)} {esc(v)}" for k, v in (counts.get("by_set") or {}).items()) + ").</p>")
    return "\n".join(parts)


def _split_row(name: str, s: dict) -> list[str]:
    def cell(f: dict) -> str:
        return fig_html({"value": f["value"], "ci95": f["ci95"], "n": f["n"]}, digits=1) if f and f.get("value") is not None else "–"

    return [esc(name), esc(s.get("n")), cell(s["precision"]), cell(s["recall"]),
            esc(f"{s['f1']:.3f}") if _num(s.get("f1")) else "–", cell(s["accuracy"])]


def section_judges(data: dict) -> str:
    judges = data.get("judges") or []
    if not judges:
        return _not_run("no judged numbers in this run (eval, rl and label not run).")
    parts = ['<p>Every number names the judge that produced it. Where a judge can be checked against gold labels, '
             'its measured precision/recall/F1 (refused = positive class) is shown with n and 95% Wilson intervals.</p>']
    for j in judges:
        parts.append(f'<div class="judgecard"><h4><code>{esc(j["name"])}</code></h4>'
                     f'<p>decides: {esc(j["decides"])} · {esc(j["what"])}'
                     + (f' · figures in this run: {esc(j["figures"])}' if j.get("figures") else "")
                     + (f' · used for: {esc(j["uses"])}' if j.get("uses") else "") + "</p>")
        if j.get("measured"):
            rows = []
            for split in ("heldout", "dev"):
                if split in j["measured"]:
                    label = "held-out (unseen while writing the rules)" if split == "heldout" else "dev (rules written on it)"
                    rows.append(_split_row(label, j["measured"][split]))
            parts.append('<div class="accuracy">' + _table(["labeled split", "n", "precision", "recall", "F1", "accuracy"], rows, "nums")
                         + f'<p class="small">Measured now on <code>{esc(j.get("measured_file"))}</code> by '
                           "<code>measure_refusal_classifier()</code>; read the held-out row.</p></div>")
        if j.get("measurement_error"):
            parts.append(f'<p class="warn">could not measure: {esc(j["measurement_error"])}</p>')
        for aspect, c in (j.get("consistency") or {}).items():
            if c:
                parts.append(f'<p>position consistency ({esc(aspect)}): {fig_html(c, default_judge=c.get("judge"))}</p>')
        if j.get("accuracy"):
            parts.append(f'<p>accuracy on held-out preference pairs: {fig_html(j["accuracy"], default_judge=j["name"])}</p>')
        if j.get("note"):
            parts.append(f'<p class="small">{esc(j["note"])}</p>')
        parts.append("</div>")
    return "\n".join(parts)


def curve_series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if _num(v) and _num(r.get("step")) and "train_runtime" not in r:
            xs.append(float(r["step"]))
            ys.append(float(v))
    return xs, ys


def section_training(data: dict) -> str:
    st = data["stages"]
    parts = []
    for s in TRAIN_STAGES:
        title = STAGE_TITLES[s]
        if st[s]["status"] == "not run":
            parts.append(f"<h3>{esc(title)}</h3>" + _not_run(f"no {s}/ folder.", f"cai {s} --run RUN"))
            continue
        rows = st[s].get("metrics") or []
        m = st[s]["manifest"]
        charts = []
        for key, label, pct in CURVES[s]:
            xs, ys = curve_series(rows, key)
            if xs:
                lim = (0.0, 1.0) if pct and min(ys) >= 0 and max(ys) <= 1 else None
                charts.append(svg.line_chart([{"name": key, "x": xs, "y": ys}], title=label, xlabel="step", ylabel=key,
                                             percent=pct, ylim=lim, width=360, css_class=f"curve curve-{s}"))
        head = f"<h3>{esc(title)}" + (' <span class="st st-unfinished">unfinished</span>' if st[s]["status"] == "unfinished" else "") + "</h3>"
        info = []
        tr = m.get("training") or {}
        if tr:
            info.append(f"steps {esc(tr.get('steps'))}, device {esc(tr.get('device'))} ({esc(tr.get('precision'))}), "
                        f"{esc(tr.get('seconds_this_session'))} s")
        if s == "rl":
            rl = m.get("rl") or {}
            if rl:
                info.append(f"algorithm {esc(m.get('algorithm'))}, β={esc(rl.get('beta'))}, KL: {esc(rl.get('kl_definition'))}; "
                            f"refusal rate judged by <code>{esc(rl.get('refusal_classifier'))}</code>")
        if s == "dpo" and m.get("dpo"):
            info.append(f"β={esc(m['dpo'].get('beta'))}, loss {esc(m['dpo'].get('loss_type'))}")
        data_info = m.get("data") or {}
        if data_info:
            n_train = data_info.get("train_rows", data_info.get("train_pairs", data_info.get("train_prompts")))
            if n_train is not None:
                info.append(f"training examples n={esc(n_train)}")
        parts.append(head + (f'<p class="small">{" · ".join(info)}</p>' if info else ""))
        if charts:
            parts.append('<div class="charts curves">' + "".join(charts) + "</div>")
        else:
            parts.append('<p class="na">no metrics logged yet (metrics.jsonl is empty or absent).</p>')
    samples = data.get("rl_samples")
    if samples and samples["rows"]:
        top = sorted(samples["rows"], key=lambda x: -(x.get("reward") if _num(x.get("reward")) else -1e9))[:6]
        rows = [[esc(f"{x.get('reward'):.3f}" if _num(x.get("reward")) else "–"), "yes" if x.get("refused") else "no",
                 f'<div class="txt">{esc(x.get("prompt", ""))}</div>', f'<div class="txt">{esc(x.get("completion", ""))}</div>']
                for x in top]
        parts.append(f"<h4>Highest-reward RL samples at the last logged step ({esc(samples['step'])})</h4>"
                     + _table(["reward", "refused", "prompt", "completion"], rows, "samples"))
    return "\n".join(parts)


def section_reward(data: dict) -> str:
    st = data["stages"]["reward"]
    ev = data.get("reward_eval")
    metrics = data.get("eval") if isinstance(data.get("eval"), dict) else {}
    rm_eval = (metrics or {}).get("reward_model")
    if st["status"] == "not run" and not rm_eval:
        return _not_run("no reward/ folder.", "cai reward --run RUN")
    parts = []
    if isinstance(ev, dict):
        rows = []
        for when in ("before_training", "after_training"):
            e = ev.get(when)
            if not isinstance(e, dict) or not e.get("n"):
                continue
            rows.append([esc(when.replace("_", " ")), fig_html(wilson_fig(e.get("accuracy"), e.get("n"))),
                         esc(f"{e['ece']:.3f}") if _num(e.get("ece")) else "–",
                         esc(f"{e['mean_margin']:.3f}") if _num(e.get("mean_margin")) else "–",
                         esc(f"{e['soft_bt_loss']:.3f}") if _num(e.get("soft_bt_loss")) else "–",
                         esc(f"{e.get('mean_pred_p_chosen', '–')} / {e.get('mean_label_p_chosen', '–')}")])
        parts.append(f'<p>Held-out pairs: n={esc(ev.get("n_eval"))} (trained on {esc(ev.get("n_train"))}). '
                     f'Calibration target: {esc(ev.get("calibration_target", ""))}.</p>')
        if rows:
            parts.append(_table(["", "accuracy (r_chosen > r_rejected)", "ECE", "mean margin", "soft-BT loss",
                                 "mean predicted / label P(chosen)"], rows, "nums reward-eval"))
        after = ev.get("after_training") or ev.get("before_training")
        bins = [b for b in ((after or {}).get("bins") or []) if b.get("n")]
        if bins:
            parts.append('<div class="charts">' + svg.line_chart(
                [{"name": "mean label P(chosen)", "x": [b["mean_pred"] for b in bins], "y": [b["mean_label"] for b in bins]}],
                title=f"Calibration after training (ECE {after.get('ece', '–')}, n={after.get('n')})",
                xlabel="predicted P(chosen) = sigmoid(margin)", ylabel="mean label", ylim=(0, 1), xlim=(0, 1), width=420, height=300,
                reference=[(0, 0), (1, 1)], css_class="calibration") + "</div>")
    elif st["status"] != "not run":
        parts.append('<p class="na">reward/eval.json not found (stage unfinished or no held-out split).</p>')
    if isinstance(rm_eval, dict):
        acc = rm_eval.get("accuracy")
        rj = (acc or {}).get("judge") if isinstance(acc, dict) else None
        parts.append(f'<p>On <code>{esc(rm_eval.get("pairs_file"))}</code> (cai eval, judge <code class="judge">{esc(rj)}</code>): '
                     f'accuracy {fig_html(acc, default_judge=rj)}; ties {esc(rm_eval.get("ties"))}; '
                     f'mean margin {fig_html(rm_eval.get("mean_margin"), pct=False, digits=3, default_judge=rj)}.</p>')
        mr = rm_eval.get("mean_reward_of_answers") or {}
        if mr:
            parts.append(_table(["model", "mean reward of its eval answers"],
                                [[esc(m), fig_html(f, pct=False, digits=3, default_judge=rj)] for m, f in mr.items()], "nums"))
    return "\n".join(parts)


def section_label(data: dict) -> str:
    st = data["stages"]["label"]
    if st["status"] == "not run":
        return _not_run("no label/ folder.", "cai label --run RUN")
    m = st["manifest"]
    if not m:
        return '<p class="na">label stage unfinished: no manifest.json with statistics yet.</p>'
    lab = m.get("labels") or {}
    warnings = m.get("warnings") or lab.get("warnings") or []
    parts = []
    if warnings:
        parts.append('<div class="warnbox"><h4>⚠ Label warnings</h4><ul>' + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul></div>")
    n, n_lab = lab.get("n"), lab.get("labeled")
    kept = wilson_fig((lab.get("kept_after_filter") or 0) / n if n else None, n)
    rows = [
        ["labeler", f"<code>{esc(_model_label(m.get('model')))}</code>, mode {esc(m.get('mode'))}"
         + (f", clamp {esc(lab.get('clamp'))}" if lab.get("clamp") else "")],
        ["comparisons", f"{esc(n)} ({esc(lab.get('skipped_identical', 0))} identical pairs skipped)"],
        ["labeled / abstentions", f"{esc(n_lab)} / {esc(lab.get('abstentions'))}"],
        ["position consistency (both orders agree)", fig_html(wilson_fig(lab.get("position_consistency_rate"), n_lab))],
        ["kept after filter (min confidence " + esc(lab.get("min_confidence")) + ")", fig_html(kept)],
        ["mean confidence |p−0.5|·2", esc(lab.get("mean_confidence")) + (f' <span class="n">n={esc(n_lab)}</span>' if n_lab else "")],
        ["position bias |p₁−p₂|", esc(lab.get("position_bias"))],
        ["share preferring position A", fig_html(wilson_fig(lab.get("share_preferring_position_a"), 2 * n_lab if n_lab else None))],
        ["share choosing the first answer", fig_html(wilson_fig(lab.get("share_choosing_first_answer"), n_lab))],
    ]
    parts.append('<div class="cols"><div>' + _table(["statistic", "value"], rows, "kv") + "</div><div>")
    counts, edges = lab.get("confidence_histogram"), lab.get("confidence_histogram_edges")
    if isinstance(counts, list) and isinstance(edges, list) and len(edges) == len(counts) + 1:
        parts.append(svg.histogram(counts, edges, title=f"Label confidence (n={sum(counts)})",
                                   xlabel="confidence |p − 0.5| · 2" + (" (before clamping)" if lab.get("confidence_basis") else ""),
                                   css_class="confidence-hist"))
    parts.append("</div></div>")
    return "\n".join(parts)


def _trace_detail(r: dict) -> str:
    parts = [f'<div class="pair"><div><h5>Prompt</h5><div class="txt">{esc(r.get("prompt", ""))}</div></div>'
             f'<div><h5>Initial answer{(" (" + esc(r.get("initial_finish")) + ")") if r.get("initial_finish") else ""}</h5>'
             f'<div class="txt">{esc(r.get("initial", ""))}</div></div></div>']
    current = r.get("initial", "") or ""
    for e in r.get("rounds") or []:
        if not isinstance(e, dict):
            continue
        acc = e.get("accepted")
        badge = '<span class="tag ok">accepted</span>' if acc else '<span class="tag bad">rejected</span>'
        if e.get("skipped"):
            badge = '<span class="tag">skipped</span>'
        flags = "".join(f'<span class="flag">{esc(f)}</span>' for f in e.get("flags") or [])
        parts.append(f'<div class="round"><h5>Round {esc(e.get("round"))} · principle <code>{esc(e.get("principle_id"))}</code> '
                     f"{badge} {flags}</h5>"
                     f'<div class="crit"><b>Critique:</b> <span class="txt">{esc(e.get("critique", ""))}</span></div>')
        rev = e.get("revision")
        if isinstance(rev, str):
            d, i = diff_counts(current, rev)
            parts.append(f'<div class="rev"><b>Revision</b> <span class="small">(−{d} / +{i} words vs the text it revised)</span>'
                         f'<div class="txt diff">{word_diff(current, rev)}</div></div>')
            if acc:
                current = rev
        parts.append("</div>")
    final = r.get("final", "") or ""
    if r.get("rounds"):
        parts.append(f'<div class="round final"><h5>Final vs initial</h5><div class="txt diff">{word_diff(r.get("initial", "") or "", final)}</div></div>')
    else:
        parts.append(f'<div class="round final"><h5>Answer</h5><div class="txt">{esc(final)}</div></div>')
    return "".join(parts)


def section_traces(data: dict) -> str:
    st = data["stages"]["revise"]
    if st["status"] == "not run":
        return _not_run("no revise/ folder.", "cai revise --run RUN")
    rv = data.get("revise") or {}
    rows = rv.get("rows")
    m = st["manifest"]
    parts = []
    c = m.get("counts") or {}
    if c:
        gen, acc = c.get("revisions_generated"), c.get("revisions_accepted")
        red = c.get("redteam_rows")
        items = [f"rows {esc(c.get('rows'))} ({esc(red)} red-team, {esc(c.get('helpful_rows'))} helpful)",
                 f"revisions accepted {fig_html(wilson_fig(acc / gen if gen else None, gen))}",
                 f"final differs from initial {fig_html(wilson_fig(c.get('changed_from_initial', 0) / red if red else None, red))}",
                 f"initial answers truncated {esc(c.get('initial_truncated'))}"]
        if c.get("flags"):
            items.append("flags: " + ", ".join(f'<span class="flag">{esc(k)}</span> {esc(v)}' for k, v in c["flags"].items()))
        parts.append("<ul class=\"stats\">" + "".join(f"<li>{x}</li>" for x in items) + "</ul>")
    if not rows:
        parts.append('<p class="na">no traces in revise/data.jsonl yet.</p>')
        return "\n".join(parts)
    total = rv.get("total") or len(rows)
    shown = f"showing {len(rows)} of {total}" if total > len(rows) else f"{len(rows)} traces"
    parts.append(f'<div class="filterbar"><input id="trace-filter" type="search" placeholder="filter traces: id, category, '
                 f'principle, any text…" aria-label="filter traces"> <label><input id="trace-changed" type="checkbox"> only '
                 f'changed</label> <span id="trace-count" class="small">{esc(shown)}</span></div>')
    body = []
    for k, r in enumerate(rows):
        rounds = [e for e in (r.get("rounds") or []) if isinstance(e, dict)]
        n_acc = sum(bool(e.get("accepted")) for e in rounds)
        flags = sorted({f for e in rounds for f in (e.get("flags") or [])})
        principles = " ".join(str(e.get("principle_id")) for e in rounds)
        search = " ".join(str(x) for x in (r.get("id"), r.get("kind"), r.get("category"), principles, " ".join(flags),
                                              r.get("prompt"), r.get("initial"), r.get("final"))).lower()
        changed = bool(r.get("changed"))
        final = str(r.get("final", "") or "")
        summary = f"rounds ({len(rounds)}) and word diffs" if rounds else "full text"
        flag_html = "".join(f'<span class="flag">{esc(f)}</span>' for f in flags)
        body.append(
            f'<tr class="trace" data-k="{k}" data-changed="{int(changed)}" data-search="{esc(search)}">'
            f'<td><code>{esc(r.get("id"))}</code></td><td>{esc(r.get("kind", ""))}</td><td>{esc(r.get("category") or "")}</td>'
            f'<td class="clip">{esc(str(r.get("prompt", ""))[:220])}</td><td class="clip">{esc(final[:220])}</td>'
            f'<td class="c">{n_acc}/{len(rounds)}</td><td class="c">{"yes" if changed else "no"}</td><td>{flag_html}</td></tr>'
            f'<tr class="detail" data-k="{k}"><td colspan="8"><details><summary>{summary}</summary>'
            f"{_trace_detail(r)}</details></td></tr>")
    parts.append('<table id="traces" class="traces"><thead><tr><th>id</th><th>kind</th><th>category</th><th>prompt</th>'
                 '<th>final answer</th><th>accepted</th><th>changed</th><th>flags</th></tr></thead><tbody>'
                 + "".join(body) + "</tbody></table>")
    return "\n".join(parts)


CSS = """
:root{--fg:#1d1d1f;--mut:#666;--bd:#ddd;--bg2:#f6f7f9;--acc:#0072B2}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;color:var(--fg);margin:0;background:#fff}
main{max-width:1240px;margin:0 auto;padding:18px 24px 60px}
h1{font-size:24px;margin:6px 0}h2{font-size:19px;margin:34px 0 10px;padding-bottom:4px;border-bottom:2px solid var(--acc)}
h3{font-size:15px;margin:18px 0 8px}h4{margin:10px 0 6px}h5{margin:8px 0 4px;font-size:13px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--bd);padding:6px 24px;z-index:5;font-size:13px}
nav a{margin-right:14px;color:var(--acc);text-decoration:none}
.meta{color:var(--mut)}code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:var(--bg2);padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}th,td{border:1px solid var(--bd);padding:4px 7px;vertical-align:top;text-align:left}
th{background:var(--bg2);font-weight:600}.tw{max-width:100%;overflow-x:auto}table.nums td{min-width:92px}.ci,.v{white-space:nowrap}
.ci{color:var(--mut);font-size:12px}.n{color:#888;font-size:11px}.judge{color:#7a5b00;font-size:11px}
.na{color:#999}.small{font-size:12px;color:var(--mut)}.notrun{color:#888;font-style:italic;background:var(--bg2);padding:8px 10px;border-radius:4px}
.cols{display:flex;gap:28px;flex-wrap:wrap}.cols>div{flex:1 1 420px;min-width:0}
.charts{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}.charts svg{border:1px solid #eee;border-radius:4px}
.warnbox{border:2px solid #d55e00;background:#fff4ec;border-radius:6px;padding:6px 14px;margin:12px 0}
.warnbox h3,.warnbox h4{color:#b34700;margin:6px 0}.warn{color:#b34700}
.st{padding:1px 6px;border-radius:3px;font-size:12px}.st-complete{background:#e3f4ea;color:#0a6b35}.st-unfinished{background:#fff1d6;color:#8a5a00}.st-notrun{background:#eee;color:#777}
.tag{display:inline-block;font-size:11px;padding:0 5px;border-radius:3px;background:#eee;color:#444}.tag.ok{background:#e3f4ea;color:#0a6b35}.tag.bad{background:#fde8e8;color:#a11}
.flag{display:inline-block;font-size:11px;padding:0 5px;margin:1px 2px;border-radius:3px;background:#f3ecff;color:#5b2b9a}
.judgecard{border:1px solid var(--bd);border-radius:6px;padding:4px 12px;margin:8px 0}
.filterbar{margin:8px 0}#trace-filter{width:420px;max-width:100%;padding:5px 8px;border:1px solid #bbb;border-radius:4px}
table.traces{width:100%;table-layout:fixed}table.traces td.clip{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
table.traces th:nth-child(1){width:90px}table.traces th:nth-child(2){width:70px}table.traces th:nth-child(3){width:130px}
table.traces th:nth-child(6),table.traces th:nth-child(7){width:72px}table.traces th:nth-child(8){width:130px}
tr.detail>td{background:#fcfcfd;border-top:none;padding:2px 8px}tr.detail summary{cursor:pointer;color:var(--acc);font-size:12px}
.c{text-align:center}.txt{white-space:pre-wrap;word-break:break-word}
.pair{display:flex;gap:16px}.pair>div{flex:1}.round{border-left:3px solid #cfd8e3;padding:2px 10px;margin:8px 0}.round.final{border-color:var(--acc)}
.diff{background:#fff;border:1px solid #eee;padding:6px 8px;border-radius:4px;margin-top:4px}
del.diff-del+ins.diff-ins{margin-left:3px}del.diff-del{background:#ffd7d5;color:#8b1a10;text-decoration:line-through}ins.diff-ins{background:#d4f5dc;color:#0b5a22;text-decoration:none}
table.samples td .txt{max-height:9em;overflow:auto}ul.stats li{margin:2px 0}
"""

JS = """
(function(){
  var box=document.getElementById('trace-filter'), chk=document.getElementById('trace-changed');
  if(!box) return;
  var rows=[].slice.call(document.querySelectorAll('#traces tr.trace')), count=document.getElementById('trace-count');
  var details={};
  [].slice.call(document.querySelectorAll('#traces tr.detail')).forEach(function(d){details[d.getAttribute('data-k')]=d;});
  function apply(){
    var q=box.value.toLowerCase().trim(), only=chk.checked, shown=0;
    rows.forEach(function(r){
      var ok=(!q || r.getAttribute('data-search').indexOf(q)>=0) && (!only || r.getAttribute('data-changed')==='1');
      r.style.display=ok?'':'none'; var d=details[r.getAttribute('data-k')]; if(d) d.style.display=ok?'':'none';
      if(ok) shown++;
    });
    count.textContent=shown+' of '+rows.length+' traces shown';
  }
  box.addEventListener('input',apply); chk.addEventListener('change',apply);
  var m=/^#q=(.*)$/.exec(location.hash||''); if(m){ try{ box.value=decodeURIComponent(m[1]); }catch(e){} }
  apply();
})();
"""


def render_html(data: dict, generated: str | None = None) -> str:
    generated = generated or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        ("eval", "Harmlessness vs helpfulness", section_eval(data)),
        ("judges", "Judges and their measured accuracy", section_judges(data)),
        ("training", "Training curves", section_training(data)),
        ("reward", "Reward model evaluation", section_reward(data)),
        ("labels", "AI preference labels", section_label(data)),
        ("traces", "Critique-revision traces (SL-CAI)", section_traces(data)),
    ]
    nav = "".join(f'<a href="#{k}">{esc(t)}</a>' for k, t, _ in sections)
    body = "".join(f'<section id="{k}"><h2>{esc(t)}</h2>\n{html}\n</section>' for k, t, html in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; img-src data:\">"
        f"<title>CAI report — {esc(data['run'])}</title><style>{CSS}</style></head><body>"
        f"<nav>{nav}</nav><main>{section_header(data, generated)}{body}</main>"
        f"<script>{JS}</script></body></html>\n"
    )


# --- Markdown summary -------------------------------------------------------------------------------------------------
def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def render_summary(data: dict, generated: str | None = None) -> str:
    generated = generated or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    st = data["stages"]
    c = _constitution(data)
    lines = [f"# CAI report: {_md(data['run'])}", "",
             f"Run `{data['run_dir']}`; constitution "
             + (f"{_md(c.get('name'))} v{_md(c.get('version'))} (`{c.get('hash')}`)" if c else "not recorded")
             + f"; generated {generated}. Full report: `report.html`.", ""]
    lines += ["| stage | status | finished |", "|---|---|---|"]
    for s in STAGES:
        lines.append(f"| {s} | {st[s]['status']} | {_md(st[s]['manifest'].get('finished_at', ''))} |")
    lines.append("")
    if data["warnings"]:
        lines += ["## Warnings", ""] + [f"- **{_md(w['where'])}**: {_md(w['text'])}" for w in data["warnings"]] + [""]
    metrics = data.get("eval")
    lines += ["## Evaluation", ""]
    if isinstance(metrics, dict) and metrics.get("models"):
        models = metrics["models"]
        cols = [col for col in _EVAL_COLS if any(isinstance(mm.get(col[0]), dict) for mm in models.values())]
        lines.append(f"Refusal judge `{metrics.get('judge')}`; baseline `{metrics.get('baseline')}`; 95% intervals; n = prompts.")
        lines.append("")
        lines.append("| model | harmlessness (1 − harmful compliance) | " + " | ".join(_md(t) for _, t, _, _ in cols) + " |")
        lines.append("|" + "---|" * (len(cols) + 2))
        for name, mm in models.items():
            cells = [_md(name), fmt_fig(_flip(mm.get("harmful_compliance")))]
            cells += [fmt_fig(mm.get(k), pct=p, digits=d) for k, _, p, d in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        elo = metrics.get("elo") or {}
        if elo:
            lines += ["| model | " + " | ".join(f"Elo {a}" for a in elo) + " |", "|" + "---|" * (len(elo) + 1)]
            for name in models:
                lines.append(f"| {_md(name)} | " + " | ".join(fmt_fig(elo[a].get(name), pct=False, digits=0) for a in elo) + " |")
            lines.append("")
    else:
        lines += ["not run", ""]
    lines += ["## Judges", ""]
    if data.get("judges"):
        lines += ["| judge | decides | measured (held-out split) |", "|---|---|---|"]
        for j in data["judges"]:
            meas = "–"
            if j.get("measured", {}).get("heldout"):
                h = j["measured"]["heldout"]
                meas = (f"precision {fmt_fig(h['precision'])}, recall {fmt_fig(h['recall'])}, F1 {h['f1']:.3f}, n={h['n']}"
                        if _num(h.get("f1")) else "–")
            elif j.get("accuracy"):
                meas = f"accuracy {fmt_fig(j['accuracy'])}"
            elif j.get("consistency"):
                meas = "; ".join(f"position consistency ({a}) {fmt_fig(v)}" for a, v in j["consistency"].items() if v) or "–"
            elif j.get("note"):
                meas = j["note"]
            lines.append(f"| `{_md(j['name'])}` | {_md(j['decides'])} | {_md(meas)} |")
        lines.append("")
    else:
        lines += ["not run", ""]
    lines += ["## AI preference labels", ""]
    lm = st["label"]["manifest"]
    if lm:
        lab = lm.get("labels") or {}
        n, n_lab = lab.get("n"), lab.get("labeled")
        lines += [f"- comparisons {n}, labeled {n_lab}, abstentions {lab.get('abstentions')}",
                  f"- position consistency {fmt_fig(wilson_fig(lab.get('position_consistency_rate'), n_lab))}",
                  f"- kept after filter {lab.get('kept_after_filter')} of {n} (min confidence {lab.get('min_confidence')})",
                  f"- mean confidence {lab.get('mean_confidence')}, position bias {lab.get('position_bias')}", ""]
    else:
        lines += [st["label"]["status"], ""]
    lines += ["## Reward model", ""]
    ev = data.get("reward_eval")
    if isinstance(ev, dict) and isinstance(ev.get("after_training"), dict):
        a = ev["after_training"]
        lines += [f"- held-out accuracy {fmt_fig(wilson_fig(a.get('accuracy'), a.get('n')))}, ECE {a.get('ece')}, "
                  f"mean margin {a.get('mean_margin')}", ""]
    else:
        lines += [st["reward"]["status"] if st["reward"]["status"] != "complete" else "no held-out evaluation", ""]
    lines += ["## Training (first → last logged value)", ""]
    any_train = False
    for s in TRAIN_STAGES:
        rows = st[s].get("metrics") or []
        if not rows:
            continue
        vals = []
        for key, label, pct in CURVES[s]:
            xs, ys = curve_series(rows, key)
            if ys:
                f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.4g}")
                vals.append(f"{key} {f(ys[0])} → {f(ys[-1])} ({len(ys)} points)")
        if vals:
            any_train = True
            lines.append(f"- **{s}**: " + "; ".join(vals))
    lines += ([""] if any_train else ["not run", ""])
    lines += ["## SL-CAI revisions", ""]
    rc = st["revise"]["manifest"].get("counts") or {}
    if rc:
        lines += [f"- rows {rc.get('rows')} ({rc.get('redteam_rows')} red-team, {rc.get('helpful_rows')} helpful); revisions accepted "
                  f"{rc.get('revisions_accepted')}/{rc.get('revisions_generated')}; final differs from initial "
                  f"{rc.get('changed_from_initial')}/{rc.get('redteam_rows')}", ""]
    else:
        lines += [st["revise"]["status"], ""]
    return "\n".join(lines)


def _readable(*paths: Path) -> None:
    """Give the report files the usual permissions (the atomic temporary file is created owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    for p in paths:
        try:
            os.chmod(p, 0o666 & ~mask)
        except OSError:
            pass


# --- entry point ------------------------------------------------------------------------------------------------------
def build_report(run_dir: str | Path, out_dir: str | Path | None = None, *, max_traces: int = DEFAULT_MAX_TRACES) -> dict:
    """Write ``report.html`` and ``summary.md`` for ``run_dir`` (atomically). Returns their paths and stage statuses."""
    data = load_run(run_dir, max_traces=max_traces)
    out = Path(out_dir) if out_dir else Path(run_dir) / "report"
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    html_path, md_path = out / "report.html", out / "summary.md"
    atomic_write_text(html_path, render_html(data, generated))
    atomic_write_text(md_path, render_summary(data, generated))
    _readable(html_path, md_path)
    return {"html": str(html_path), "summary": str(md_path),
            "stages": {s: data["stages"][s]["status"] for s in STAGES}, "warnings": len(data["warnings"])}

