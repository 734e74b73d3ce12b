"""What ``cai eval`` asks: every prompt of the harmful, benign and benchmark sets, with its expected behaviour."""

from __future__ import annotations

from cai.data.readers import load_prompts
from cai.errors import ConfigError, UserInputError
from cai.evaluate.benchmarks import read_benchmark
from cai.evaluate.config import EvalConfig

PREFERENCE_KINDS = ("hh-rlhf", "preference")


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



def conversation(cfg: EvalConfig, prompt: str) -> list[dict]:
    conv = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return conv + [{"role": "user", "content": prompt}]

