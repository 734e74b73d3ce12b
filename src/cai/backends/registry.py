"""Build backends from :class:`ModelSpec`. Roles that name the same model share one loaded instance."""

from __future__ import annotations

import os
from typing import Callable

from cai.backends.base import Backend
from cai.backends.spec import BACKENDS, ModelSpec
from cai.errors import ConfigError

_FACTORIES: dict[str, Callable[[ModelSpec], Backend]] = {}


def register_backend(name: str):
    """Decorator registering a factory ``fn(spec) -> Backend`` under ``name``."""

    def deco(fn):
        _FACTORIES[name] = fn
        return fn

    return deco


@register_backend("fake")
def _fake(spec: ModelSpec) -> Backend:
    from cai.backends.fake import FakeBackend

    # "fake" or "fake:delay=0.05" (seconds per request, to make runs slow enough to interrupt)
    opts = dict(kv.split("=", 1) for kv in spec.model.split(",") if "=" in kv)
    unknown = set(opts) - {"delay"}
    if unknown:
        raise ConfigError(f"Unknown fake backend option(s) {sorted(unknown)} in '{spec.model}'.", fix="use fake or fake:delay=SECONDS.")
    return FakeBackend("fake", delay_s=float(opts.get("delay", 0.0)))


@register_backend("transformers")
def _transformers(spec: ModelSpec) -> Backend:
    from cai.backends.embedded import EMBEDDED_MODEL_ID, EMBEDDED_NAME, embedded_model_dir
    from cai.backends.transformers_backend import TransformersBackend

    if spec.model == EMBEDDED_NAME:
        path, mid = str(embedded_model_dir()), EMBEDDED_MODEL_ID
    else:
        path, mid = os.path.expanduser(spec.model), spec.model
    return TransformersBackend(
        path, model_id=mid, device=spec.device, dtype=spec.dtype, batch_size=spec.batch_size, prefix_cache=spec.prefix_cache
    )


@register_backend("openai")
def _openai(spec: ModelSpec) -> Backend:
    from cai.backends.openai_backend import OpenAIBackend

    return OpenAIBackend(
        spec.model,
        base_url=spec.base_url,
        api_key_env=spec.api_key_env,
        max_concurrency=spec.max_concurrency,
        timeout_s=spec.timeout_s,
        max_retries=spec.max_retries,
    )


class BackendPool:
    """Creates each distinct backend once; ``get(spec)`` returns the shared instance."""

    def __init__(self, overrides: dict[tuple, Backend] | None = None):
        self._live: dict[tuple, Backend] = dict(overrides or {})

    def get(self, spec: ModelSpec | str) -> Backend:
        if isinstance(spec, str):
            spec = ModelSpec.model_validate(spec)
        key = spec.key()
        if key not in self._live:
            if spec.backend not in _FACTORIES:
                raise ConfigError(f"Unknown backend '{spec.backend}'.", fix=f"use one of: {', '.join(BACKENDS)}.")
            self._live[key] = _FACTORIES[spec.backend](spec)
        return self._live[key]

    def put(self, spec: ModelSpec | str, backend: Backend) -> None:
        """Install a ready-made backend for ``spec`` (tests use this to script a fake)."""
        if isinstance(spec, str):
            spec = ModelSpec.model_validate(spec)
        self._live[spec.key()] = backend
