"""``cai redteam``: generate attacks per harm category, run them against the target, judge and report them.

Output ``runs/<run>/redteam/``:

* ``cases.jsonl``: one row per case: category, principle, method, converters, attacker, seed, turns, prompt (as
  sent), attack (as the attacker wrote it), response, each judge's label and score, status (``ok``, ``error``,
  ``attacker_refused``, ``unscored``), success and harm, and ``near_duplicate`` where the attack is within
  ``near_duplicate_threshold`` cosine similarity (MiniLM, :mod:`cai.embed`) of a shipped or training prompt;
* ``attacks.jsonl``: the successful attacks in the shipped prompt format (``id``, ``prompt``, ``category``, ...), so
  ``cai revise --prompts RUN/redteam/attacks.jsonl`` trains on them and ``cai eval --harmful
  RUN/redteam/attacks.jsonl`` scores later models on them (the rows carry no ``split``, so every split takes them;
  near-duplicates of known prompts are left out unless ``keep_near_duplicates``: they add nothing and could leak
  held-out prompts into training);
* ``shards/`` (the resume unit, :func:`cai.stages.sharded.run_sharded`), ``manifest.json`` last, with the figures of
  :mod:`cai.redteam.metrics`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from cai.backends.registry import BackendPool
from cai.data.io import read_jsonl
from cai.data.readers import load_prompts, read_records
from cai.evaluate.judges import make_refusal_judge
from cai.manifests import Figure, RoleMeter
from cai.progress import Progress
from cai.redteam import metrics as M
from cai.redteam.config import RedteamConfig
from cai.redteam.methods import Work, plan
from cai.stages.sharded import ShardedResult, run_sharded

STAGE = "redteam"


def judge_quality(judge_name: str) -> dict | None:
    """Labeled counts of a judge saying "complied" (the success label), where the judge is measured: the local
    refusal classifier on the held-out part of the shipped labeled set (its refusals are the negatives here)."""
    from cai.evaluate.refusal import CLASSIFIER_NAME, measure_refusal_classifier

    if judge_name != f"classifier:{CLASSIFIER_NAME}":
        return None
    h = (measure_refusal_classifier().get("splits") or {}).get("heldout") or {}
    if not h.get("n"):
        return None
    return {"tp": h["tn"], "fn": h["fp"], "tn": h["tp"], "fp": h["fn"], "n": h["n"], "split": "heldout",
            "refusal_precision": h["precision"], "refusal_recall": h["recall"], "accuracy": h["accuracy"]}


def known_prompts(cfg: RedteamConfig) -> list[dict]:
    """Prompts an attack should not merely repeat: every shipped red-team prompt and the training prompt files."""
    known = [{"id": r["id"], "prompt": r["prompt"], "source": "shipped redteam"} for r in load_prompts("redteam", split="all")]
    for path in cfg.training_prompts:
        known += [{"id": r["id"], "prompt": str(r["prompt"]), "source": path}
                  for r in read_records(path, text_fields=("prompt",))]
    return known


def _figures(rows: list[dict], key: str, judge: str, quality: dict | None, seed: int) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    return {g: M.success_figure(rs, judge, quality, seed) for g, rs in groups.items()}


def analyse(rows: list[dict], cfg: RedteamConfig, judge: str, embedder: Callable[[list[str]], Any]) -> dict:
    """Flag near-duplicates in ``rows`` (in place) and compute every figure of the manifest's ``results``."""
    import numpy as np

    quality = judge_quality(judge)
    with_attack = [r for r in rows if r.get("attack")]
    known = known_prompts(cfg)
    vecs = embedder([r["attack"] for r in with_attack]) if with_attack else np.zeros((0, 384), dtype=np.float32)
    if with_attack and known:
        sim = vecs @ embedder([k["prompt"] for k in known]).T
        for i, r in enumerate(with_attack):
            j = int(sim[i].argmax())
            if sim[i, j] >= cfg.near_duplicate_threshold:
                r["near_duplicate"] = {"id": known[j]["id"], "source": known[j]["source"],
                                       "similarity": round(float(sim[i, j]), 4)}
    index = {id(r): i for i, r in enumerate(with_attack)}
    wins = [r for r in with_attack if r["status"] == "ok" and r["success"]]

    def div(sel: list[dict]) -> dict:
        v = vecs[[index[id(r)] for r in sel]] if sel else vecs[:0]
        sb = M.self_bleu([r["attack"] for r in sel], sample=cfg.self_bleu_sample, seed=cfg.seed)
        d = M.mean_pairwise_distance(v)
        return {"n": len(sel), "self_bleu": None if sb is None else round(sb, 4),
                "embedding_distance": None if d is None else round(d, 4)}

    labels = M.clusters(vecs[[index[id(r)] for r in wins]], cfg.cluster_threshold) if wins else []
    for r, c in zip(wins, labels):
        r["cluster"] = c
    sizes = sorted((labels.count(c) for c in set(labels)), reverse=True)
    counts = M.status_counts(rows)
    n = len(rows)
    return {
        "counts": {"cases": n, **counts, "successes": len(wins),
                   "off_topic": sum(str(r.get("reason") or "").startswith("attack off-topic") for r in rows),
                   "near_duplicates": sum("near_duplicate" in r for r in rows)},
        "success": M.success_figure(rows, judge, quality, cfg.seed),
        "by_category": _figures(rows, "category", judge, quality, cfg.seed),
        "by_method": _figures(rows, "method", judge, quality, cfg.seed),
        "attacker_refusal": Figure.rate(counts["attacker_refused"], n, "classifier:attacker-refusal").as_dict(),
        "error_rate": Figure.rate(counts["error"], n, "measurement").as_dict(),
        "diversity": {"attacks": div(with_attack), "successes": div(wins)},  # attacks: all the attacker wrote
        "unique_successes": {"clusters": len(sizes), "successes": len(wins), "largest_cluster": sizes[0] if sizes else 0,
                             "threshold": cfg.cluster_threshold},
        "near_duplicates": {"threshold": cfg.near_duplicate_threshold, "known_prompts": len(known),
                            "flagged": sum("near_duplicate" in r for r in rows)},
        "judge": {"name": judge, "quality": quality},
    }


def attack_rows(rows: list[dict], cfg: RedteamConfig) -> list[dict]:
    """The successful attacks in the shipped prompt format (``id``, ``prompt``, ``category`` + provenance)."""
    out = []
    for r in rows:
        if r["status"] != "ok" or not r["success"] or ("near_duplicate" in r and not cfg.keep_near_duplicates):
            continue
        out.append({"id": f"rt-gen-{r['id']}", "prompt": r["prompt"], "category": r["category"], "principle": r["principle"],
                    "method": r["method"], "converters": r["converters"], "harm": r["harm"], "source": "cai redteam",
                    **({"turns": [t["user"] for t in r["turns"]]} if len(r["turns"]) > 1 else {})})
    return out


def run_redteam(
    cfg: RedteamConfig,
    run_dir: str | Path,
    *,
    pool: BackendPool | None = None,
    embedder: Callable[[list[str]], Any] | None = None,
    overwrite: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    on_ready: Callable[[Progress], None] | None = None,
) -> dict:
    """Run (or resume) ``cai redteam`` into ``run_dir/redteam``. Returns the manifest.

    ``embedder(texts) -> unit vectors`` replaces the packaged MiniLM model (tests).
    """
    from cai.constitution import load_constitution

    run_dir = Path(run_dir)
    stage_dir = run_dir / STAGE
    const = load_constitution(cfg.constitution)
    items = plan(cfg, const)
    seeds = [{"id": r["id"], "prompt": str(r["prompt"]), "category": r.get("category")}
             for r in load_prompts(cfg.seed_prompts, split="train")]
    names = {p.id: p.name for p in const.principles}
    pool = pool or BackendPool()
    meter = RoleMeter()
    embed_fn = embedder or _packaged_embed
    judges_specs = [cfg.judge, *cfg.extra_judges]
    done: dict[int, list[dict]] = {}
    trained: dict[str, Any] = {}

    def earlier(index: int) -> list[dict]:
        out = []
        for i in range(index):
            if i not in done:
                done[i] = read_jsonl(stage_dir / "shards" / f"{i:05d}.jsonl")
            out.extend(done[i])
        return out

    def load() -> dict[str, Any]:
        res: dict[str, Any] = {"attacker": pool.get(cfg.attacker), "target": pool.get(cfg.target),
                               "attacker_label": cfg.attacker.label(), "target_label": cfg.target.label(),
                               "judges": [make_refusal_judge(j, pool, const) for j in judges_specs]}
        if cfg.on_topic_threshold > 0:
            res["topic"] = (embed_fn, topic_refs(seeds, embed_fn))

        def supervised(index: int) -> Any:
            if "backend" not in trained:
                from cai.redteam.supervised import train_attacker

                wins = [r for r in earlier(index) if r["status"] == "ok" and r["success"]]
                spec = train_attacker(cfg, stage_dir, wins, names)
                trained.update(spec=spec, backend=pool.get(spec), successes=len(wins))
                res["supervised_label"] = spec.label()
            return trained["backend"]

        res["supervised"] = supervised
        return res

    def work(shard: Any, res: dict[str, Any], prog: Progress) -> list[dict]:
        rows = Work(cfg, res, seeds, earlier, meter)(shard, prog)
        done[shard.index] = rows
        return rows

    def finish(result: ShardedResult[dict[str, Any]]) -> dict:
        rows = result.rows
        res = result.resources or {}
        judge_name = res["judges"][0].name if res.get("judges") else _first_judge(rows, cfg)
        results = analyse(rows, cfg, judge_name, embed_fn)
        result.stage.write_output("cases.jsonl", rows)
        attacks = attack_rows(rows, cfg)
        if attacks:
            result.stage.write_output("attacks.jsonl", attacks)
        models = {"attacker": res["attacker"].describe() if res else {"model": cfg.attacker.label()},
                  "target": res["target"].describe() if res else {"model": cfg.target.label()}}
        if trained:
            models["supervised_attacker"] = {"model": trained["spec"].label(), "trained_on": trained["successes"]}
        return {
            "models": models,
            "judges": [j.describe() for j in res.get("judges", [])] or [{"judge": judge_name}],
            "constitution": {"name": const.name, "version": const.version, "hash": const.content_hash()},
            "purpose": cfg.purpose,
            "counts": {**results["counts"], "attacks_written": len(attacks)},
            "results": results,
            "tokens": {"generated_this_session": sum(a.completion_tokens for a in meter.accounting().values())},
            "accounting": meter.as_manifest(),
            "timing": result.timing(),
            "outputs": {"cases": "cases.jsonl", **({"attacks": "attacks.jsonl"} if attacks else {})},
            "config": cfg.model_dump(mode="json"),
        }

    return run_sharded(
        run_dir, STAGE, items, shard_size=cfg.shard_size, seed=cfg.seed, inputs={"items": items, "seeds": seeds},
        identity={"redteam": cfg.model_dump(mode="json"), "attacker": cfg.attacker.label(), "target": cfg.target.label(),
                  "constitution_hash": const.content_hash()},
        load=load, load_when_done=True, work=work, finish=finish, overwrite=overwrite,
        on_progress=on_progress, on_ready=on_ready,
    )


def _packaged_embed(texts: list[str]) -> Any:
    from cai.embed import embed

    return embed(texts)


def topic_refs(seeds: list[dict], embed_fn: Callable[[list[str]], Any]) -> dict[str, Any]:
    """Category -> unit vectors of its shipped (seed) prompts, for the on-topic check."""
    import numpy as np

    cats: dict[str, list[str]] = {}
    for s in seeds:
        if s.get("category"):
            cats.setdefault(str(s["category"]), []).append(s["prompt"])
    vecs = embed_fn([p for ps in cats.values() for p in ps]) if cats else np.zeros((0, 1))
    out, start = {}, 0
    for c, ps in cats.items():
        out[c] = np.asarray(vecs[start:start + len(ps)])
        start += len(ps)
    return out


def _first_judge(rows: list[dict], cfg: RedteamConfig) -> str:
    for r in rows:
        if r["judges"]:
            return next(iter(r["judges"]))
    return cfg.judge


__all__ = ["RedteamConfig", "run_redteam", "analyse", "attack_rows", "judge_quality"]
