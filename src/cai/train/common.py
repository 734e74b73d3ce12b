"""Where the shared training pieces live (this module re-exports them for older imports).

* :mod:`cai.train.settings` - :class:`TrainSettings`, devices, the TRL keyword arguments (trackers, no tqdm).
* :mod:`cai.train.models` - model folders, tokenizer and weights loading, LoRA, the merged save, the default policy.
* :mod:`cai.train.data` - this run's inputs by alias, conversations, preference pairs with soft labels.
* :mod:`cai.train.logs` - ``metrics.jsonl`` lines, checkpoints on disk, the progress a training stage reports.
* :mod:`cai.train.runner` - :func:`~cai.train.runner.run_training`, the one training skeleton of every stage.
* :mod:`cai.train.ppo` - the toolkit's own PPO loop.
"""

from __future__ import annotations

from cai.train.data import (
    LABEL_FIELDS,
    PREFERENCE_ALIASES,
    Conversation,
    Message,
    as_messages,
    file_digest,
    load_preferences,
    resolve_run_input,
)
from cai.train.logs import append_line, final_loss, latest_checkpoint, read_metrics, trim_metrics
from cai.train.models import (
    load_causal_lm,
    load_tokenizer,
    lora_config,
    param_counts,
    resolve_model_path,
    resolve_policy,
    save_model_folder,
)
from cai.train.settings import TrainSettings, precision_name, resolve_device, trainer_kwargs, use_bf16

__all__ = [
    "LABEL_FIELDS", "PREFERENCE_ALIASES", "Conversation", "Message", "TrainSettings", "append_line", "as_messages",
    "file_digest", "final_loss", "latest_checkpoint", "load_causal_lm", "load_preferences", "load_tokenizer",
    "lora_config", "param_counts", "precision_name", "read_metrics", "resolve_device", "resolve_model_path",
    "resolve_policy", "resolve_run_input", "save_model_folder", "trainer_kwargs", "trim_metrics", "use_bf16",
]
