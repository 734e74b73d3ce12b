"""The version check the ray executor runs before it starts anything.

The scale-out stack is pinned as a set (``pip install -e .[scale]``): ``ray[data,llm]==2.60.0`` and ``vllm==0.29.0``,
the vLLM that ``ray[llm]`` 2.60 pins, that needs the toolkit's torch 2.13.0 and transformers >= 5.10.4, and that
TRL 1.16 accepts. Another vLLM (0.33 needs torch 2.14 and transformers < 5.21) cannot sit beside the toolkit's pins,
so a mismatch is refused at start-up with the command that fixes it, instead of failing later inside an engine.
"""

from __future__ import annotations

from importlib import metadata

from cai.errors import MissingExtraError

#: The versions the executor is built and tested against (the ``scale`` extra of pyproject.toml).
PINNED = {"ray": "2.60.0", "vllm": "0.29.0"}
FIX = "pip install -e '.[scale]'  (ray[data,llm]==2.60.0 and vllm==0.29.0, beside torch 2.13.0)"


def installed(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_versions(engine: str) -> dict[str, str]:
    """Raise :class:`MissingExtraError` naming the fix unless the stack ``engine`` needs is installed at the pinned
    versions; returns the versions found (the manifest records them)."""
    need = ["ray"] + (["vllm"] if engine == "vllm" else [])
    found: dict[str, str] = {}
    for dist in need:
        v = installed(dist)
        if v is None:
            raise MissingExtraError(f"executor kind 'ray' with engine '{engine}' needs {dist}, which is not installed.",
                                    fix=FIX)
        if v != PINNED[dist]:
            raise MissingExtraError(
                f"executor kind 'ray' needs {dist}=={PINNED[dist]}, found {dist} {v}.",
                fix=FIX + (". vLLM releases after 0.31 need another torch/transformers than the toolkit's pins"
                           if dist == "vllm" else ""))
        found[dist] = v
    try:
        import ray.data.llm  # noqa: F401  (needs aiohttp and friends from the ray[llm] extra)
    except ImportError as e:
        raise MissingExtraError(f"ray.data.llm cannot be imported ({e}).",
                                fix=FIX + "; for the http engine alone: pip install aiohttp") from None
    for dist in ("torch", "transformers"):
        v = installed(dist)
        if v is not None:
            found[dist] = v
    return found
