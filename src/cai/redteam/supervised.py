"""The supervised attacker round: fine-tune the attacker on this run's successful attacks, then attack with it.

The training rows pair the zero-shot request of each success's category with the attack that succeeded (as chat
``messages``), so the fine-tuned attacker answers a plain zero-shot request the way the successes were written. It
runs the project's SFT stage (:func:`cai.stages.sft.run_sft`: LoRA merged on save, loss on the answer only) into
``RUN/redteam/attacker/sft/``, which resumes and is skipped once finished like any stage. The attacker must be a
local transformers model (``embedded`` or a folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.backends.spec import ModelSpec
from cai.data.io import write_jsonl
from cai.errors import ConfigError, UserInputError
from cai.redteam import prompts as P
from cai.redteam.config import RedteamConfig


def training_rows(successes: list[dict], principle_names: dict[str, str], purpose: str | None) -> list[dict]:
    """One chat row per successful attack: the zero-shot request of its category -> the attack."""
    rows = []
    for r in successes:
        conv = P.zero_shot(r["category"], principle_names.get(r["principle"], r["principle"]), purpose)
        rows.append({"id": r["id"], "messages": conv + [{"role": "assistant", "content": r["attack"]}]})
    return rows


def train_attacker(cfg: RedteamConfig, stage_dir: Path, successes: list[dict], principle_names: dict[str, str],
                   *, on_progress: Any = None) -> ModelSpec:
    """Fine-tune the attacker on ``successes`` (resumable); returns the spec of the fine-tuned model."""
    if cfg.attacker.backend != "transformers":
        raise ConfigError(f"methods: supervised fine-tunes the attacker, but attacker is a {cfg.attacker.backend} "
                          "model, which cannot be trained here.",
                          fix="use a local attacker (embedded or a model folder), or drop supervised from methods.")
    if not successes:
        raise UserInputError("methods: supervised needs successful attacks from the earlier methods, and there are none.",
                             fix="raise per_category, put zero_shot or few_shot before supervised, or drop supervised.")
    from cai.stages.sft import SFTStageConfig, run_sft

    work = stage_dir / "attacker"
    data = work / "successes.jsonl"
    rows = training_rows(successes, principle_names, cfg.purpose)
    if not (work / "sft" / "manifest.json").exists():
        write_jsonl(data, rows)
    sft_cfg = SFTStageConfig(data=str(data), helpful=None, model=cfg.attacker, max_steps=cfg.supervised_steps,
                             batch_size=min(4, len(rows)), seed=cfg.seed, logging_steps=1, save_steps=10_000,
                             max_length=256, device="cpu" if cfg.attacker.device == "cpu" else "auto")
    run_sft(sft_cfg, work, progress=False, on_progress=on_progress)
    return ModelSpec(backend="transformers", model=str(work / "sft" / "model"), device=cfg.attacker.device,
                     dtype=cfg.attacker.dtype, batch_size=cfg.attacker.batch_size)
