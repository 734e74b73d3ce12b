"""What each stage's command prints when it finishes: where its outputs are and the figures worth reading.

One function per stage, ``f(stage_dir, manifest, done_before)``, named by the stage's record in :mod:`cai.registry`;
``manifest`` is the stage's typed model (:mod:`cai.manifests`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.cli.common import out


def _fmt(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def rate(section: Any, name: str) -> float | None:
    """A rate of a manifest section as a number: the value of its figure (value, k, n, 95% interval, judge)."""
    v = getattr(section, name, None)
    if v is None and isinstance(section, dict):
        v = section.get(name)
    if isinstance(v, dict):
        return v.get("value")
    return getattr(v, "value", v)


def typed(stage: str, m: Any) -> Any:
    """A stage's manifest as its typed model (:func:`cai.manifests.load_manifest`), for stages that have one."""
    from cai.manifests import MANIFESTS, load_manifest

    return load_manifest(stage, m) if isinstance(m, dict) and stage in MANIFESTS else m


def revise(stage_dir: Path, m: Any, done_before: bool = False) -> None:
    c = m.counts
    t = m.timing
    out.print(f"[bold green]revise done[/]: {stage_dir}")
    out.print(f"  dataset : {stage_dir / 'data.jsonl'} (full traces), sft.jsonl, preference.jsonl, helpful.jsonl")
    out.print(f"  manifest: {stage_dir / 'manifest.json'}")
    out.print(
        f"  rows: {c['rows']} ({c['redteam_rows']} red-team, {c['helpful_rows']} helpful); "
        f"revisions accepted {c['revisions_accepted']}/{c['revisions_generated']}; "
        f"final differs from initial answer: {c['changed_from_initial']}/{c['redteam_rows']}"
    )
    if c["flags"]:
        out.print("  flagged revisions: " + ", ".join(f"{k} {v}" for k, v in c["flags"].items()))
    tps = t.get("generated_tokens_per_s")
    out.print(
        f"  generated {m.tokens['generated_this_session']} tokens in {t['seconds_this_session']} s"
        + (f" = {tps} tokens/s" if tps else "")
        + (f" (resumed: {t['resumed_rows']} rows were already done)" if t.get("resumed_rows") else "")
    )
    out.print(f"  constitution {m.constitution.name} v{m.constitution.version} hash {m.constitution.hash}; "
              f"models: " + ", ".join(f"{r}={d['model']}" for r, d in m.models.items()))


def pairs(stage_dir: Path, m: Any, done_before: bool = False) -> None:
    c, t = m.counts, m.timing
    out.print(f"[bold green]pairs done[/]: {stage_dir}")
    out.print(f"  pairs   : {stage_dir / 'pairs.jsonl'}")
    out.print(f"  manifest: {stage_dir / 'manifest.json'}")
    out.print(
        f"  prompts: {c['prompts']} ({c['redteam_prompts']} red-team, {c['helpful_prompts']} helpful); "
        f"{c['k']} answers each = {c['answers']} answers, {c['comparisons']} comparisons to label"
    )
    if c["identical_rows"]:
        out.print(f"  [yellow]{c['identical_rows']} prompt(s) got identical answers[/] (nothing to compare; the labeler skips them)")
    if c["truncated_answers"] or c["empty_answers"]:
        out.print(f"  truncated answers: {c['truncated_answers']}, empty answers: {c['empty_answers']}")
    tps = t.get("generated_tokens_per_s")
    out.print(
        f"  generated {m.tokens['generated_this_session']} tokens in {t['seconds_this_session']} s"
        + (f" = {tps} tokens/s" if tps else "")
        + (f" (resumed: {t['resumed_rows']} prompts were already done)" if t.get("resumed_rows") else "")
        + f"; policy: {m.model['model']}"
    )


def label(stage_dir: Path, m: Any, done_before: bool = False) -> None:
    s, t = m.labels, m.timing
    out.print(f"[bold green]label done[/]: {stage_dir}")
    out.print(f"  labels    : {stage_dir / 'labels.jsonl'} (every comparison, both orders, per principle)")
    out.print(f"  preference: {stage_dir / 'preference.jsonl'} (TRL format, soft label in score_chosen)")
    out.print(f"  manifest  : {stage_dir / 'manifest.json'}")

    def fmt(x, spec=".2f"):
        return "n/a" if x is None else format(x, spec)

    out.print(
        f"  {s.labeled}/{s.n} comparisons labeled ({m.mode} mode), {s.abstentions} abstentions"
        + (f", {s.skipped_identical} identical pairs skipped" if s.skipped_identical else "")
    )
    out.print(
        f"  position consistency {fmt(rate(s, 'position_consistency'))}, "
        f"mean confidence {fmt(s.mean_confidence, '.3f')}, "
        f"position bias {fmt(s.position_bias, '.3f')}, share of per-order answers preferring (A) "
        f"{fmt(rate(s, 'preferring_position_a'))}"
    )
    out.print(f"  kept after filter (min_confidence {s.min_confidence}): {s.kept_after_filter}/{s.n}")
    out.print(f"  confidence histogram (10 bins over 0..1): {s.confidence_histogram}")
    if t.get("labels_per_s"):
        out.print(f"  {t['rows_this_session']} labels in {t['seconds_this_session']} s = {t['labels_per_s']} labels/s; labeler: {m.model['model']}")
    if m.warnings:
        for w in m.warnings:
            out.print(f"  [bold yellow]warning:[/] {w}")
    else:
        out.print("  labels look usable: both orders mostly agree and the labeler is not at chance.")


def rl(stage_dir: Path, m: Any, done_before: bool = False) -> None:
    t = m.training
    r = m.rl
    last = {k: v.get("last") for k, v in r["metrics"].items()}
    first = {k: v.get("first") for k, v in r["metrics"].items()}
    note = " (already complete; nothing to do - pass --overwrite to train again)" if done_before else ""
    out.print(f"[bold green]rl ({m.algorithm}) done[/]{note}: model at {stage_dir / 'model'}")
    out.print(f"  metrics: {stage_dir / 'metrics.jsonl'}; samples: {stage_dir / 'samples.jsonl'}; "
              f"manifest: {stage_dir / 'manifest.json'}")
    resumed = f" (resumed from {t['resumed_from']})" if t.get("resumed_from") else ""
    out.print(
        f"  steps {t['steps']}, {t['seconds_this_session']} s this session ({_fmt(t['seconds_per_step'], 2)} s/step) "
        f"on {t['device']} {t['precision']}{resumed}; policy {m.policy['label']} ({m.policy['source']}); "
        + (f"reward model {m.reward_model}" if m.reward_model else "reward from the labeler (direct RLAIF)")
    )
    rw = getattr(m, "reward", None) or {}
    if rw.get("source") == "constitution":
        tot, per = rw["labeler_totals_this_session"], rw.get("labeler_per_step") or {}
        out.print(
            f"  labeler {rw['labeler'].get('model')}: {tot['calls']} calls, {tot['requests']} ratings, "
            f"{tot['seconds']} s this session ({_fmt(per.get('seconds'), 2)} s/step); {tot['abstained']} of "
            f"{tot['answers']} answers abstained (neutral reward {rw['neutral_reward']}); scale {rw['scale']}"
        )
    out.print(
        f"  last step: reward {_fmt(last.get('reward'))} (first {_fmt(first.get('reward'))}), "
        f"KL {_fmt(last.get('kl'))} (beta {r['beta']}), length {_fmt(last.get('completions/mean_length'), 1)} tokens / "
        f"{_fmt(last.get('answer_words'), 1)} words, refusal rate {_fmt(last.get('refusal_rate'), 3)} "
        f"(first {_fmt(first.get('refusal_rate'), 3)}), repeat-3gram share {_fmt(last.get('repeat_3gram_share'), 3)} "
        f"(first {_fmt(first.get('repeat_3gram_share'), 3)})"
    )
    out.print(f"  KL is the {r['kl_definition']}")


def bestofn(stage_dir: Path, m: Any, done_before: bool = False) -> None:
    s = m.summary
    c, a = s["chosen"], s["all_candidates"]
    out.print(f"[bold green]bestofn done[/]: {stage_dir / 'answers.jsonl'} (every candidate with its reward, and the chosen one)")
    out.print(f"  manifest: {stage_dir / 'manifest.json'}; policy {m.policy['model']} ({m.policy['source']}); "
              f"reward model {m.reward_model}")
    out.print(
        f"  {s['prompts']} prompts x n={m.n}: mean best reward {_fmt(s['mean_best_reward'])} vs random candidate "
        f"{_fmt(s['mean_random_candidate_reward'])} (gain {_fmt(s['best_minus_random'])}; worst {_fmt(s['mean_worst_reward'])})"
    )
    out.print(
        f"  chosen vs all candidates: refusal rate {_fmt(c['refusal_rate'], 3)} vs {_fmt(a['refusal_rate'], 3)}, "
        f"words {_fmt(c['answer_words'], 1)} vs {_fmt(a['answer_words'], 1)}, "
        f"repeat-3gram share {_fmt(c['repeat_3gram_share'], 3)} vs {_fmt(a['repeat_3gram_share'], 3)}"
    )
    t = m.timing
    out.print(f"  {t['answers_this_session']} answers sampled in {t['seconds_this_session']} s"
              + (f" (resumed: {t['resumed_prompts']} prompts were already done)" if t.get("resumed_prompts") else ""))


def _print_training(name: str, stage_dir: Path, m: Any, done_before: bool = False) -> None:
    t = m.training
    note = " (already complete; nothing to do - pass --overwrite to train again)" if done_before else ""
    out.print(f"[bold green]{name} done[/]{note}: model at {stage_dir / 'model'}")
    out.print(f"  metrics: {stage_dir / 'metrics.jsonl'}; manifest: {stage_dir / 'manifest.json'}")
    resumed = f" (resumed from {t['resumed_from']})" if t.get("resumed_from") else ""
    out.print(
        f"  steps {t['steps']} (epochs {t['epochs']}), final loss {_fmt(t['final_loss'])}, "
        f"{t['seconds_this_session']} s this session ({_fmt(t['seconds_per_step'])} s/step) on {t['device']} "
        f"{t['precision']}{resumed}"
    )


def sft(stage_dir: Path, m: Any, done_before: bool = False) -> None:
    d = m.data
    _print_training("sft", stage_dir, m, done_before)
    out.print(
        f"  data: {d['train_rows']} rows = {d['train_rows_by_source']['revision']} revisions + "
        f"{d['train_rows_by_source']['helpful']} helpful (ratio {d['helpful_ratio_actual']}, asked "
        f"{d['helpful_ratio_config']}); dropped (prompt too long): {d['dropped_prompt_too_long']}"
    )


def reward(stage_dir: Path, m: Any, done_before: bool = False) -> None:
    _print_training("reward", stage_dir, m, done_before)
    e = m.eval
    if e.get("n"):
        out.print(
            f"  held-out (n={e['n']}): accuracy {e['accuracy']:.3f} (untrained head {e['before_accuracy']}), "
            f"mean margin {e['mean_margin']:.3f}, ECE {e['ece']:.3f} ({m.loss['labels']}); details: "
            f"{stage_dir / 'eval.json'}"
        )
    else:
        out.print("  held-out: none (eval_fraction 0 or fewer than 2 pairs)")


def dpo(stage_dir: Path, m: Any, done_before: bool = False) -> None:
    _print_training("dpo", stage_dir, m, done_before)
    f = m.dpo["final"]
    out.print(
        f"  policy: {m.policy['label']} ({m.policy['source']}); pairs {m.data['train_pairs']}; "
        f"beta {m.dpo['beta']}; last rewards/margins {_fmt(f.get('rewards/margins'))}, "
        f"rewards/accuracies {_fmt(f.get('rewards/accuracies'))}"
    )


def orpo(stage_dir: Path, m: Any, done_before: bool = False) -> None:
    _print_training("orpo", stage_dir, m, done_before)
    f = m.orpo["final"]
    src = m.data.get("by_source", {})
    out.print(
        f"  policy: {m.policy['label']} ({m.policy['source']}); pairs {m.data['train_pairs']} "
        f"({src.get('sl_pairs', 0)} SL-CAI, {src.get('pairs', 0)} AI-labeled); beta {m.orpo['beta']}; "
        f"last nll_loss {_fmt(f.get('nll_loss'))}, log_odds_ratio {_fmt(f.get('log_odds_ratio'))}, "
        f"rewards/accuracies {_fmt(f.get('rewards/accuracies'))}"
    )


def evaluate(stage_dir: Path, m: Any, done_before: bool = False) -> None:
    out.print(f"[bold green]eval done[/]: {stage_dir}")
    out.print(f"  {m.counts['prompts']} prompts x {m.counts['models']} model(s); "
              f"{m.timing['seconds_this_session']} s this session")
    out.print((stage_dir / "summary.md").read_text(encoding="utf-8"), markup=False, highlight=False)


def redteam(stage_dir: Path, m: Any, done_before: bool = False) -> None:
    from cai.manifests import format_figure

    r, c = m.results, m.counts
    out.print(f"[bold green]redteam done[/]: {stage_dir}")
    out.print(f"  cases   : {stage_dir / 'cases.jsonl'}; attacks: "
              + (f"{stage_dir / 'attacks.jsonl'} ({c.get('attacks_written', 0)} successful attacks)"
                 if c.get("attacks_written") else "none written (no successful attack)"))
    out.print(f"  cases {c['cases']}: ok {c['ok']}, attacker refused {c['attacker_refused']}, error {c['error']}, "
              f"unscored {c['unscored']} (off-topic attacks {c.get('off_topic', 0)}); near-duplicates of known prompts "
              f"{c['near_duplicates']}")
    q = (r.judge or {}).get("quality")
    judged = f"judge {r.judge.get('name')}" + (
        f" (held-out: refusal precision {100 * q['refusal_precision']:.1f}%, recall {100 * q['refusal_recall']:.1f}%; "
        "'corrected' accounts for its errors)" if q else " (not measured on a labeled set)")
    out.print(f"  success rate (target complied), {judged}:")

    def line(name: str, f: Any) -> str:
        corr = (f.model_extra or {}).get("corrected") if f is not None else None
        return f"    {name:<18} {format_figure(f, missing='no judged case (n=0)')}" + (
            f"   corrected {format_figure(corr, missing='-', with_n=False)}" if corr else "")

    out.print(line("all", r.success), highlight=False)
    for cat, f in r.by_category.items():
        out.print(line(cat, f), highlight=False)
    for meth, f in r.by_method.items():
        out.print(line(f"method {meth}", f), highlight=False)
    d = r.diversity or {}
    for key in ("attacks", "successes"):
        x = d.get(key) or {}
        out.print(f"  diversity of {key} (n={x.get('n', 0)}): self-BLEU {_fmt(x.get('self_bleu'), 3)} (1 = all alike), "
                  f"mean embedding distance {_fmt(x.get('embedding_distance'), 3)}")
    u = r.unique_successes or {}
    out.print(f"  unique successes: {u.get('clusters', 0)} cluster(s) of {u.get('successes', 0)} successful attacks "
              f"(largest {u.get('largest_cluster', 0)}; cosine >= {u.get('threshold')})")
    out.print(f"  attacker refusal rate: {format_figure(r.attacker_refusal, missing='-')}", highlight=False)
    t = m.timing
    out.print(f"  {t.get('seconds_this_session')} s this session"
              + (f" (resumed: {t['resumed_rows']} cases were already done)" if t.get("resumed_rows") else ""))

