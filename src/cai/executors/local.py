"""The two executors as backend pools: what a stage's ``pool.get(role)`` returns.

:func:`executor_pool` is called once per stage run (by :func:`cai.registry.call`) with the stage's config: ``kind:
local`` hands back the pool as it is (each role's own backend, in this process); ``kind: ray`` wraps it in a
:class:`RayPool`, whose roles are :class:`~cai.executors.raydata.RayDataBackend` instances on the executor's engine.
"""

from __future__ import annotations

from typing import Any

from cai.backends.base import Backend
from cai.backends.spec import ModelSpec
from cai.errors import ConfigError
from cai.executors.config import ExecutorConfig, executor_of


class RayPool:
    """A backend pool whose roles run on the ray executor; roles naming the same model share one backend."""

    def __init__(self, ex: ExecutorConfig):
        self.ex = ex
        self._live: dict[tuple, Backend] = {}

    def get(self, spec: ModelSpec | str) -> Backend:
        from cai.executors.raydata import RayDataBackend

        if isinstance(spec, str):
            spec = ModelSpec.model_validate(spec)
        key = spec.key()
        if key not in self._live:
            self._live[key] = RayDataBackend(spec, self.ex)
        return self._live[key]

    def put(self, spec: ModelSpec | str, backend: Backend) -> None:
        if isinstance(spec, str):
            spec = ModelSpec.model_validate(spec)
        self._live[spec.key()] = backend


def executor_pool(cfg: Any, pool: Any = None, *, takes_pool: bool = True) -> Any:
    """The pool a stage's roles come from under ``cfg.executor`` (``pool`` itself for the local executor).
    ``takes_pool``: whether the stage's run function accepts a pool (one that does not cannot run on ray)."""
    ex = executor_of(cfg)
    if ex.kind == "local":
        return pool
    if not takes_pool:
        raise ConfigError(f"executor kind 'ray' needs a stage that takes its models from a backend pool; "
                          f"{type(cfg).__name__} does not.", fix="remove `executor:` from this stage's settings.")
    return RayPool(ex)  # the local pool's backends are not used: every role runs on the executor's engine
