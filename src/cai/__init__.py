"""constitutional-ai: Constitutional AI end to end (SL-CAI, RL-CAI, evaluation, guarding)."""

__version__ = "0.1.0"
