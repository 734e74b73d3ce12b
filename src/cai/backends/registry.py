"""Build backends from :class:`ModelSpec`. Roles that name the same model share one loaded instance."""

from __future__ import annotations

import os
from typing import Callable

from cai.backends.base import Backend
from cai.backends.spec import BACKENDS, ModelSpec
from cai.backends.teacher import TEACHER_NAME
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
    from cai.backends.embedded import EMBEDDED_MODEL_ID, EMBEDDED_NAME, embedded_gguf_info, embedded_model_dir
    from cai.backends.gguf import GGUFTransformersBackend, is_gguf_file, looks_like_gguf, transformers_from_gguf
    from cai.backends.transformers_backend import TransformersBackend

    opts = dict(device=spec.device, dtype=spec.dtype, batch_size=spec.batch_size, prefix_cache=spec.prefix_cache)
    if spec.model == EMBEDDED_NAME:
        return GGUFTransformersBackend(
            str(embedded_model_dir()), gguf_info=embedded_gguf_info(), model_id=EMBEDDED_MODEL_ID, **opts
        )
    if spec.model == TEACHER_NAME:
        from cai.backends.teacher import TEACHER_MODEL_ID, teacher_gguf, teacher_info

        return transformers_from_gguf(str(teacher_gguf()), model_id=TEACHER_MODEL_ID, gguf_info=teacher_info(), **opts)
    path = os.path.expanduser(spec.model)
    if looks_like_gguf(spec.model) or is_gguf_file(path):
        return transformers_from_gguf(spec.model, **opts)
    return TransformersBackend(path, model_id=spec.model, **opts)


@register_backend("llamacpp")
def _llamacpp(spec: ModelSpec) -> Backend:
    from cai.backends.gguf import describe_gguf, resolve_gguf
    from cai.backends.llamacpp import LlamaCppBackend

    if spec.model == TEACHER_NAME:
        from cai.backends.teacher import TEACHER_MODEL_ID, teacher_gguf, teacher_info

        return LlamaCppBackend(teacher_gguf(), model_id=TEACHER_MODEL_ID, gguf_info=teacher_info())
    path = resolve_gguf(spec.model)
    return LlamaCppBackend(path, model_id=spec.model, gguf_info=describe_gguf(path))


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
        end_of_turn=spec.end_of_turn,
        end_of_turn_logit=spec.end_of_turn_logit,
        penalty_route=spec.penalty_route,
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
