"""Direct RLAIF for ``cai rl --reward constitution``: the labeler scores every sampled answer, no reward model.

:class:`DirectRewardSettings` holds the settings (mixed into :class:`cai.stages.rl.RLStageConfig`, so they are YAML
keys of the ``rl:`` section and flags of ``cai rl``); :func:`constitution_scorer` builds the
:class:`~cai.labeling.rating.ConstitutionRater` the RL loops call through
:class:`~cai.train.rl_metrics.RewardModelReward`, exactly where a reward model's scorer would go; :func:`reward_block`
is the manifest's ``reward`` section: where rewards came from and what the labeler cost (calls, questions, seconds,
abstentions, in total and per optimizer step).

The labeler is asked in the same process as the policy is trained, between rollout and update (on a GPU it shares
the device). A labeler server (``openai:NAME@URL``) keeps the two apart.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from cai.backends.spec import ModelSpec

#: The fields of :class:`DirectRewardSettings`; a run with ``reward: model`` leaves them out of its fingerprint, so
#: runs started before these settings existed still resume.
DIRECT_FIELDS = ("reward", "labeler", "constitution", "ensemble", "min_rating_mass")


class DirectRewardSettings(BaseModel):
    """Where ``cai rl`` takes its reward from."""

    reward: Literal["model", "constitution"] = Field(
        default="model",
        description="model: the trained reward model (reward_model); constitution: direct RLAIF, the labeler rates "
        "each answer 1-9 against sampled principles and the reward is the expected rating in [0, 1]",
    )
    labeler: ModelSpec = Field(
        default_factory=ModelSpec, description="reward constitution: the model that rates the answers (any model spec)"
    )
    constitution: str = Field(
        default="default", description="reward constitution: constitution YAML path, or 'default' for the shipped one"
    )
    ensemble: int = Field(
        default=1, ge=1, description="reward constitution: principles each answer is rated against (scores averaged)"
    )
    min_rating_mass: float = Field(
        default=0.0, ge=0, lt=1,
        description="reward constitution: abstain (neutral reward 0.5) when the labeler's probability of any rating "
        "digit is below this",
    )


def constitution_scorer(cfg: DirectRewardSettings, pool: Any, seed: int):
    """The rater for ``cfg`` (its labeler taken from ``pool``, a :class:`~cai.backends.registry.BackendPool`)."""
    from cai.constitution import load_constitution
    from cai.labeling.rating import ConstitutionRater

    const = load_constitution(cfg.constitution)
    return ConstitutionRater(pool.get(cfg.labeler), const, ensemble=cfg.ensemble, seed=seed,
                             min_mass=cfg.min_rating_mass)


def reward_block(cfg: DirectRewardSettings, *, reward_model: str | None, rater: Any = None,
                 steps: int = 0) -> dict[str, Any]:
    """The manifest's ``reward`` section."""
    if cfg.reward == "model":
        return {"source": "model", "reward_model": reward_model}
    from cai.labeling.rating import NEUTRAL, RATINGS

    totals = rater.stats.as_dict()
    per_step = {k: round(totals[k] / steps, 3) for k in ("calls", "requests", "seconds")} if steps else None
    const = rater.constitution
    return {
        "source": "constitution",
        "labeler": rater.backend.describe(),
        "scale": f"{RATINGS[0]}-{RATINGS[-1]}, expected rating over the digits' probabilities, mapped to [0, 1]",
        "ensemble": cfg.ensemble,
        "min_rating_mass": cfg.min_rating_mass,
        "neutral_reward": NEUTRAL,
        "labeler_totals_this_session": totals,
        "labeler_per_step": per_step,
        "abstention_rate": round(totals["abstained"] / totals["answers"], 4) if totals["answers"] else None,
        "constitution": {"name": const.name, "version": const.version, "hash": const.content_hash()},
    }
