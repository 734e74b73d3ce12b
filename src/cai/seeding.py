"""Seeds: every random choice in the toolkit is derived from a run's ``seed`` here, in one way.

* :func:`shard_seed` - the integer seed of one shard (and one step inside it) of a sharded stage: fixed by the shard's
  index, never by what happened to run before it, so a resumed run samples exactly what an uninterrupted one would.
* :func:`step_seed` - the integer seed of one optimizer step of a training loop (per stream of draws), so a resumed
  loop samples what an uninterrupted one would.
* :func:`rng` - a ``random.Random`` keyed by any parts (seed, row id, round, purpose...): ``rng(seed, "x", 2)`` is the
  same stream in every process and every Python version (string seeding is stable, unlike ``hash``).
* :func:`seed_torch` - seeds Python, NumPy and torch (CPU and CUDA) for code that draws new weights or samples with
  torch; :func:`torch_generator` a private ``torch.Generator`` that no other code advances.
"""

from __future__ import annotations

import random
from typing import Any

_SHARD_MULT = 7919
_INDEX_MULT = 101
_STEP_MULT = 1_000_003
_STREAM_MULT = 100_003


def shard_seed(seed: int, shard_index: int, step: int = 0) -> int:
    """Seed of ``step`` (a sub-call such as a critique round) inside shard ``shard_index`` of a run seeded ``seed``."""
    return seed * _SHARD_MULT + shard_index * _INDEX_MULT + step


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """Seed of optimizer ``step`` of a training loop, for one ``stream`` of draws (0: rollouts, 1: minibatch order...):
    a resumed loop draws at step N exactly what an uninterrupted one would."""
    return seed * _STEP_MULT + stream * _STREAM_MULT + step


def rng(*parts: Any) -> random.Random:
    """A ``random.Random`` seeded by the parts joined with ':' (e.g. ``rng(seed, row_id, round)``)."""
    return random.Random(":".join(str(p) for p in parts))


def seed_torch(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices), as ``transformers.set_seed`` does."""
    from transformers import set_seed

    set_seed(seed)


def torch_generator(seed: int):
    """A CPU ``torch.Generator`` seeded with ``seed``: draws from it do not depend on any other random use."""
    import torch

    return torch.Generator().manual_seed(seed)
