"""The critic's "no problem" verdict (``skip_if_no_problem``) on 40 hand-labeled critiques, against a phrase match.

Run from the repository root::

    .venv/bin/python benchmarks/bench_verdict.py                  # the embedded SmolLM2 as critic
    .venv/bin/python benchmarks/bench_verdict.py --critic teacher  # any model spec

Each row of ``resources/judge/critiques_labeled.jsonl`` is a red-team or benign prompt, an answer, a principle and
a critique, labeled ``needs_revision`` (20 rows) or not (20 rows); half of the critiques that name a problem start
by saying something else is fine ("There is no issue with its grammar, but ..."). The structured verdict is the one
``cai revise`` uses: the critique conversation, the critique, then the verdict question, scored from the letters'
log-probabilities (or parsed). The baseline is the phrase match ``cai revise`` used before, which read "no issue"
anywhere in the first 300 characters as "no problem". Printed: accuracy of each with a Wilson 95% interval, the
verdict's seconds, and one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from importlib import resources

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cai.backends.registry import BackendPool  # noqa: E402
from cai.backends.spec import ModelSpec  # noqa: E402
from cai.constitution import load_constitution  # noqa: E402
from cai.evaluate.stats import wilson  # noqa: E402
from cai.labeling.mc import score_choices  # noqa: E402
from cai.stages.sl_prompts import critique_conversation, verdict_conversation  # noqa: E402

# The phrase match the verdict replaced (kept here only as the baseline).
_NO_PROBLEM = re.compile(
    r"\b(no (problems?|issues?|concerns?|violations?)|does not (violate|break|contain anything)|"
    r"(is|was) (appropriate|acceptable|fine|harmless|safe)|nothing (harmful|problematic|to (fix|change|improve)))\b",
    re.IGNORECASE,
)


def figure(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": round(k / n, 4), "ci95": [round(lo, 4), round(hi, 4)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--critic", default="embedded", help="Model spec of the critic (default: embedded)")
    ap.add_argument("--few-shot", type=int, default=None, help="Shared demonstrations in the critique prompt")
    args = ap.parse_args()
    rows = [json.loads(line) for line in
            resources.files("cai").joinpath("resources/judge/critiques_labeled.jsonl").read_text().splitlines()]
    const = load_constitution("default")
    critic = BackendPool().get(ModelSpec.model_validate(args.critic))
    convs = [critique_conversation(const, const.principle(r["principle_id"]), r["prompt"], r["answer"],
                                   few_shot=args.few_shot) for r in rows]
    t0 = time.perf_counter()
    batch = score_choices(critic, [verdict_conversation(c, r["critique"], prefill=True) for c, r in zip(convs, rows)],
                          lambda i: verdict_conversation(convs[i], rows[i]["critique"], prefill=False), parse_tokens=8)
    seconds = time.perf_counter() - t0
    gold = [r["needs_revision"] for r in rows]
    verdict = [None if ch.p_a is None else ch.p_a >= 0.5 for ch in batch.choices]
    phrase = [not bool(_NO_PROBLEM.search(r["critique"][:300])) for r in rows]
    out = {
        "critic": critic.describe().get("model", args.critic),
        "rows": len(rows),
        "verdict_accuracy": figure(sum(v == g for v, g in zip(verdict, gold)), len(rows)),
        "verdict_abstained": sum(v is None for v in verdict),
        "verdict_methods": batch.methods,
        "verdict_mean_p_needs_revision": {
            "needs_revision": round(sum(c.p_a or 0 for c, g in zip(batch.choices, gold) if g) / max(1, sum(gold)), 4),
            "no_problem": round(sum(c.p_a or 0 for c, g in zip(batch.choices, gold) if not g) / max(1, len(gold) - sum(gold)), 4),
        },
        "phrase_accuracy": figure(sum(p == g for p, g in zip(phrase, gold)), len(rows)),
        "phrase_wrong_on_named_problems": sum(g and not p for p, g in zip(phrase, gold)),
        "verdict_seconds": round(seconds, 2),
    }
    print(f"critic: {out['critic']}")
    for name in ("verdict_accuracy", "phrase_accuracy"):
        f = out[name]
        print(f"{name}: {100 * f['rate']:.1f}% [{100 * f['ci95'][0]:.1f}, {100 * f['ci95'][1]:.1f}] n={f['n']}")
    print(f"phrase match calls 'no problem' on {out['phrase_wrong_on_named_problems']} of 20 critiques that name one")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
