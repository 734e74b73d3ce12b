"""AI preference labeling (RL-CAI): multiple-choice prompts, letter parsing and soft-label arithmetic."""

from cai.labeling.parse import parse_choice
from cai.labeling.softlabel import (
    clamp,
    combine_orders,
    confidence,
    ensemble,
    is_consistent,
    normalize,
    passes_filter,
)

__all__ = ["clamp", "combine_orders", "confidence", "ensemble", "is_consistent", "normalize", "parse_choice", "passes_filter"]
