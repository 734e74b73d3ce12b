"""The guard server's settings and its model side: policies, per-backend locks, the worker pool, error mapping.

:class:`GuardServerConfig` is every setting of ``cai guard serve``. :class:`GuardService` loads the policies (one
:class:`~cai.guard.core.Guard` each, sharing one backend pool so two policies naming the same model load it once),
wraps every local backend so that calls into it are serialized (a model object is not thread-safe; HTTP backends
are, and keep their own concurrency limit), and runs the model work in a thread pool with a deadline.
The HTTP side is :mod:`cai.guard.app`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai.backends.base import Backend
from cai.backends.spec import ModelSpec
from cai.errors import CaiError, ConfigError, ModelError, UserInputError
from cai.redact import redact_text

log = logging.getLogger("cai.guard.server")

POLICY_SUFFIXES = (".yaml", ".yml")


class GuardServerConfig(BaseModel):
    """Every setting of the guard server (``cai guard serve`` flags, or a YAML file given with ``--config``)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="Interface to listen on (127.0.0.1: this machine only)")
    port: int = Field(default=8088, ge=0, le=65535, description="TCP port (0: any free port)")
    policies: list[str] = Field(default_factory=list, description="Guard policy YAML files, or folders of them")
    default_policy: str | None = Field(default=None, description="Policy of requests that name none and whose key "
                                       "has no default (default: the first policy loaded)")
    keys_file: str | None = Field(default=None, description="API key file written by `cai guard keys add` (salted "
                                  "sha256 hashes, one JSON record per line)")
    key_env: str | None = Field(default="CAI_GUARD_API_KEY", description="Environment variable that may hold one "
                                "more accepted key (key id 'env')")
    no_auth: bool = Field(default=False, description="Accept requests without a key (local experiments only)")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Largest request body; larger ones get HTTP 413")
    max_prompt_tokens: int = Field(default=8192, ge=1, description="Largest conversation, in estimated tokens "
                                   "(max of words and characters/4); larger ones get HTTP 413")
    max_completion_tokens: int = Field(default=2048, ge=1, description="Largest max_tokens a request may ask for; "
                                       "larger ones get HTTP 413")
    request_timeout_s: float = Field(default=600.0, gt=0, description="Deadline of the model work of one request; "
                                     "past it the reply is HTTP 504")
    workers: int = Field(default=8, ge=1, le=256, description="Threads running model work (calls into one local "
                         "model are serialized whatever this is)")
    stream_chunk_chars: int = Field(default=32, ge=1, description="Streaming: about this many characters per chunk")
    stream_mode: Literal["hold", "window"] = Field(
        default="hold", description="Streaming default (a request may ask for the other with guardrails.stream_mode): "
        "hold: generate, check, then send; window: send a streaming upstream's text window by window, each after a "
        "check of the answer so far (openai: upstreams only; others are held)")
    window_chars: int = Field(default=200, ge=8, description="window mode: characters per checked window")
    check_batch: int = Field(default=16, ge=1, description="Most waiting check requests (POST /v1/guard/check and "
                             "window-mode windows) of one policy checked together in one batched call")
    audit_path: str = Field(default="guard-audit.jsonl", description="Audit log file (JSON Lines, append-only)")
    audit_max_bytes: int = Field(default=50 << 20, ge=0, description="Rotate the audit log past this size (0: never)")
    audit_backups: int = Field(default=5, ge=0, description="Rotated audit files kept (.1 newest)")
    audit_fsync: Literal["always", "interval", "never"] = Field(
        default="interval", description="always: fsync every record; interval: at most once a second and at "
        "shutdown; never: leave it to the OS")
    audit_content: bool = Field(default=False, description="Store conversations and answers in the audit log "
                                "(default: only their length and a sha256 digest)")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS (default: none, "
                                    "CORS off)")

    @model_validator(mode="after")
    def _check(self) -> "GuardServerConfig":
        if not self.policies:
            raise ValueError("no policy given; pass --policy FILE (repeatable) or --policies FOLDER")
        if not self.no_auth and not self.keys_file and not self.key_env:
            raise ValueError("no API key source; pass --keys FILE or --key-env VAR (or --no-auth for local tests)")
        return self


# --- errors the HTTP side maps to status codes ---------------------------------------------------------------------
class UpstreamError(Exception):
    """The upstream model failed (HTTP 502) or timed out (HTTP 504). ``message`` is short and safe to send."""

    def __init__(self, status: int, message: str, detail: str = ""):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail

    @property
    def kind(self) -> str:
        return "timeout" if self.status == 504 else "error"


def upstream_error(e: BaseException) -> UpstreamError:
    """Map a generation failure to 502/504; the detail (for logs and the audit log) has URLs' secrets masked."""
    text = redact_text(getattr(e, "message", None) or str(e) or type(e).__name__)
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)) or "timed out" in text.lower():
        return UpstreamError(504, "upstream model timed out", text[:500])
    return UpstreamError(502, "upstream model failed", text[:500])


# --- backends ------------------------------------------------------------------------------------------------------
class LockedBackend(Backend):
    """A backend whose calls run one at a time (a local model object is not thread-safe).

    Every method and callable attribute of the wrapped backend is reached through the lock; plain attributes
    (``stats``, ``model_id``) are read through.
    """

    def __init__(self, inner: Backend):
        self.__dict__["_inner"] = inner
        self.__dict__["_lock"] = threading.RLock()
        self.__dict__["name"] = inner.name

    def __getattr__(self, item: str) -> Any:
        value = getattr(self._inner, item)
        if callable(value) and not isinstance(value, type):
            lock = self._lock

            def locked(*args, **kwargs):
                with lock:
                    return value(*args, **kwargs)

            return locked
        return value

    def generate(self, conversations, params):
        with self._lock:
            return self._inner.generate(conversations, params)

    def option_logprobs(self, conversations, options):
        with self._lock:
            return self._inner.option_logprobs(conversations, options)

    def describe(self) -> dict:
        return self._inner.describe()

    def close(self) -> None:
        self._inner.close()


def policy_files(paths: list[str]) -> list[Path]:
    """The policy files named by ``paths`` (a folder contributes its *.yaml and *.yml files, sorted)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in POLICY_SUFFIXES and f.is_file())
            if not found:
                raise ConfigError(f"Policy folder {p} holds no .yaml policy file.", fix="add a policy file or pass --policy FILE")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"Policy {p} does not exist.", fix="pass an existing policy YAML file or a folder of them")
    return out


def _model_specs(config: Any) -> list[ModelSpec]:
    return [v for _, v in config if isinstance(v, ModelSpec)]


@dataclass
class Policy:
    """One loaded policy: its guard and what replies and the audit log say about it."""

    id: str
    hash: str
    guard: Any
    upstream: str
    fail_mode: str
    source: str


class GuardService:
    """The policies and the worker pool the HTTP side calls into."""

    def __init__(self, config: GuardServerConfig, *, guards: list[Any] | None = None, pool: Any = None):
        self.config = config
        self.pool = pool
        self.policies: dict[str, Policy] = {}
        if guards is None:
            guards = self._build_guards(config)
        for g, source in guards:
            self._add(g, source)
        default = config.default_policy or next(iter(self.policies))
        if default not in self.policies:
            raise ConfigError(f"default_policy '{default}' is not a loaded policy.", fix=f"use one of: {', '.join(self.policies)}")
        self.default_policy = default
        self.executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="cai-guard")
        self._check_queues: dict[str, list] = {}
        self._check_running: set[str] = set()
        #: Sizes of the check batches run so far (for tests and logs).
        self.check_batches: list[int] = []

    def _build_guards(self, config: GuardServerConfig) -> list[tuple[Any, str]]:
        from cai.backends.registry import BackendPool
        from cai.guard.config import GuardConfig
        from cai.guard.core import Guard

        if self.pool is None:
            self.pool = BackendPool()
        out = []
        for f in policy_files(config.policies):
            cfg = GuardConfig.load(f)
            for spec in _model_specs(cfg):
                self.lock_backend(spec)
            out.append((Guard(cfg, pool=self.pool), str(f)))
        return out

    def lock_backend(self, spec: ModelSpec) -> None:
        """Install the pool's backend for ``spec`` behind a lock (HTTP backends are thread-safe and stay as they are)."""
        if spec.backend == "openai":
            return
        backend = self.pool.get(spec)
        if not isinstance(backend, LockedBackend):
            self.pool.put(spec, LockedBackend(backend))

    def _add(self, guard: Any, source: str) -> None:
        cfg = getattr(guard, "config", None)
        pid = guard.policy_id
        if pid in self.policies:
            raise ConfigError(f"Two policies have the id '{pid}' ({self.policies[pid].source} and {source}).",
                              fix="give every policy file its own `id:`")
        spec = getattr(cfg, "policy", None)
        upstream = spec.label() if isinstance(spec, ModelSpec) else str(spec or "unknown")
        fail_mode = getattr(cfg, "on_checker_error", "fail_closed")
        self.policies[pid] = Policy(pid, guard.policy_hash, guard, upstream, fail_mode, source)

    def resolve(self, *candidates: str | None) -> Policy | None:
        """The first named policy among ``candidates`` (None entries skipped), else the default; None if unknown."""
        for name in candidates:
            if name:
                return self.policies.get(name)
        return self.policies[self.default_policy]

    async def run(self, fn: Callable[[], Any], *, phase: str) -> tuple[Any, float]:
        """Run ``fn`` on a worker thread under the request deadline; returns (result, seconds).

        A generation failure becomes :class:`UpstreamError` (502/504); other phases re-raise.
        """
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            result = await asyncio.wait_for(loop.run_in_executor(self.executor, fn), self.config.request_timeout_s)
        except (TimeoutError, asyncio.TimeoutError) as e:
            if phase == "generate":
                raise UpstreamError(504, "upstream model timed out",
                                    f"no answer within {self.config.request_timeout_s:g} s") from e
            raise
        except UserInputError:
            raise
        except (ModelError, OSError) as e:
            if phase == "generate":
                raise upstream_error(e) from e
            raise
        except CaiError as e:
            if phase == "generate":
                raise upstream_error(e) from e
            raise
        return result, time.perf_counter() - t0

    async def check(self, policy: Policy, messages: list[dict], answer: str | None) -> tuple[Any, float]:
        """One check, batched with the other checks of the same policy that are waiting: while a batch runs, new
        requests queue, and the next batch is one ``check_many`` call (one scoring call) for all of them.
        Returns (CheckResult, seconds this request waited and was checked)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        t0 = time.perf_counter()
        queue = self._check_queues.setdefault(policy.id, [])
        queue.append((messages, answer, fut))
        if policy.id not in self._check_running:
            self._check_running.add(policy.id)
            asyncio.ensure_future(self._drain(policy))
        return await fut, time.perf_counter() - t0

    async def _drain(self, policy: Policy) -> None:
        queue = self._check_queues[policy.id]
        try:
            while queue:
                batch = queue[: self.config.check_batch]
                del queue[: len(batch)]
                items = [(m, a) for m, a, _ in batch]
                try:
                    results, _ = await self.run(lambda: policy.guard.check_many(items), phase="check")
                except BaseException as e:  # noqa: BLE001 - every waiting request gets the failure (fail mode applies)
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e if isinstance(e, Exception) else RuntimeError(repr(e)))
                    if not isinstance(e, Exception):
                        raise
                    continue
                self.check_batches.append(len(batch))
                for (_, _, fut), res in zip(batch, results):
                    if not fut.done():
                        fut.set_result(res)
        finally:
            self._check_running.discard(policy.id)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# --- starting the server -------------------------------------------------------------------------------------------
def build_app(config: GuardServerConfig, *, guards: list[tuple[Any, str]] | None = None, pool: Any = None):
    """The app for ``config``: policies loaded, keys read, audit log opened. Returns (app, service)."""
    from cai.guard.app import create_app
    from cai.guard.audit import AuditLog
    from cai.guard.auth import KeyStore

    policy_files(config.policies)  # a missing file is reported before anything else
    keys = None
    if not config.no_auth:
        keys = KeyStore.load(config.keys_file, config.key_env)
        if not len(keys):
            where = f"{config.keys_file}" if config.keys_file else f"${config.key_env}"
            raise ConfigError(f"No API key is configured ({where} holds none).",
                              fix="add one with `cai guard keys add --file keys.jsonl --id NAME` and pass --keys "
                              f"keys.jsonl, or set {config.key_env or 'CAI_GUARD_API_KEY'}")
    service = GuardService(config, guards=guards, pool=pool)
    audit = AuditLog(config.audit_path, max_bytes=config.audit_max_bytes, backups=config.audit_backups,
                     fsync=config.audit_fsync, include_content=config.audit_content)
    return create_app(service, keys=keys, audit=audit), service


class BackgroundServer:
    """uvicorn serving ``app`` on a background thread (tests, benchmarks): ``with BackgroundServer(app) as s: s.url``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the guard server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()


class _NoQueryStrings(logging.Filter):
    """Access-log lines show paths without their query string (a caller may put a key there by mistake)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (args[0], args[1], args[2].split("?", 1)[0] + "?...", args[3], args[4])
        return True


def serve(config: GuardServerConfig) -> None:
    """Run the server in the foreground until interrupted."""
    import uvicorn

    logging.getLogger("uvicorn.access").addFilter(_NoQueryStrings())
    app, service = build_app(config)
    log.info("guard server on http://%s:%s/v1, audit log %s", config.host, config.port, config.audit_path)
    if config.no_auth:
        log.warning("--no-auth: every request is accepted without an API key")
    for p in service.policies.values():
        log.info("policy %s (hash %s, upstream %s, %s) from %s", p.id, p.hash, p.upstream, p.fail_mode, p.source)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", access_log=True)
