"""The ray executor: a :class:`~cai.backends.base.Backend` whose calls run as Ray Data pipelines.

Why a backend: every stage already hands each model call to a backend as one batch (a shard's answers, critiques,
revisions, label questions), and :func:`cai.stages.sharded.run_sharded` already owns fixed shards, resume, atomic
shard writes and manifests. Putting the executor behind the backend protocol gives every sharded stage (revise,
pairs, label, eval, bestofn, and any stage added later) Ray Data without touching its code, and keeps those
guarantees as they are: a shard is still written when its calls return, on either executor.

One call = one Ray Data job over the call's requests:

* request ``i`` is one row, seeded with ``GenParams.seed_for(i)`` exactly as the local backends seed it, so K samples
  of one prompt are K rows with distinct seeds (a vLLM request keeps only ``outputs[0]``: ``n > 1`` would drop
  samples) and the same seeds give the same rows;
* rows of one conversation (the K samples of a prompt) are put in one block, so they reach one engine together and
  its prefix cache serves them; blocks hold about ``batch_size`` rows;
* results are put back in input order by the row's index (Ray Data does not keep order);
* an empty answer is sent again with the next attempt's seed, as the HTTP backend does, then returned as a failed row.

``engine: vllm`` starts its engines for each job (a Ray Data pipeline owns its actors): give such stages large
shards (``shard_size`` in the thousands) so the start-up is paid rarely, or serve the model once (``vllm serve``,
Ray Serve) and use ``engine: http``, whose workers are cheap to start.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from cai.backends.base import Backend, Completion, Conversation, GenParams, empty_reason, failed_completion
from cai.backends.openai_http import FIELD_RE, OPTIONAL_FIELDS
from cai.backends.spec import ModelSpec
from cai.errors import ModelError
from cai.executors.config import ExecutorConfig
from cai.executors.engines import HttpEngine, VllmEngine
from cai.executors.versions import check_versions

_RAY_LOCK = threading.Lock()


def ensure_ray(ex: ExecutorConfig) -> None:
    """Join the cluster ``ex.address`` names, or start a local one, once per process (an existing session is used)."""
    import ray

    with _RAY_LOCK:
        if not ray.is_initialized():
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(address=ex.address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the stage's own progress line reports progress
        ctx.print_on_execution_start = False


def blocks_of(conversations: list[Conversation], batch_size: int) -> list[list[int]]:
    """Row indices cut into consecutive blocks of about ``batch_size`` rows, never splitting a run of rows that share
    one conversation (the K samples of a prompt)."""
    out: list[list[int]] = []
    cur: list[int] = []
    prev = None
    for i, conv in enumerate(conversations):
        key = json.dumps(conv, sort_keys=True)
        if cur and key != prev and len(cur) >= batch_size:
            out.append(cur)
            cur = []
        cur.append(i)
        prev = key
    if cur:
        out.append(cur)
    return out


class RayDataBackend(Backend):
    """One role's model on the ray executor (see the module docstring)."""

    name = "ray"

    def __init__(self, spec: ModelSpec, ex: ExecutorConfig, *, empty_retries: int = 2):
        super().__init__(spec.model)
        self.spec, self.ex = spec, ex
        self.versions = check_versions(ex.engine)
        self.engine: HttpEngine | VllmEngine = (
            HttpEngine(spec, ex, note=lambda f, why: self.stats.not_applied.setdefault(f, why))
            if ex.engine == "http" else VllmEngine(spec, ex))
        self.empty_retries = max(0, empty_retries)
        self.ray_seconds = 0.0
        self.jobs = 0
        self._processor: Any = None
        self._dropped: set[str] = set()  # optional request fields the server refused (http engine)

    # ------------------------------------------------------------------ protocol
    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        if params.seeds is not None and len(params.seeds) != len(conversations):
            raise ModelError(f"GenParams.seeds has {len(params.seeds)} seed(s) for {len(conversations)} conversation(s)")
        t0 = time.perf_counter()
        results: list[Completion | None] = [None] * len(conversations)
        last: dict[int, tuple[str, int, int]] = {}
        todo = list(range(len(conversations)))
        for attempt in range(self.empty_retries + 1):
            if not todo:
                break
            self.stats.retries += len(todo) if attempt else 0
            reqs = [self.engine.generate_request(conversations[i], params, params.seed_for(i, attempt)) for i in todo]
            left = []
            for i, row in zip(todo, self._run(reqs, [conversations[i] for i in todo])):
                p, c = self._count(row)
                finish = row["finish"]
                if finish == "content_filter":
                    reason = "the server filtered the completion (finish_reason content_filter)"
                else:
                    reason = empty_reason(row["text"] if row["has_text"] else None)
                if reason is None:
                    results[i] = Completion(text=row["text"].strip(), prompt_tokens=p, completion_tokens=c,
                                            finish_reason="length" if finish == "length" else "stop")
                else:
                    self.stats.empty_completions += 1
                    last[i] = (reason, p, c)
                    left.append(i)
            todo = left
        for i in todo:
            reason, p, c = last[i]
            self.stats.failed_requests += 1
            results[i] = failed_completion(f"{reason}; {self.empty_retries + 1} attempt(s)", p, c)
        self.stats.calls += 1
        self.stats.generate_seconds += time.perf_counter() - t0
        return [r for r in results if r is not None]

    def option_logprobs(self, conversations: list[Conversation], options: list[list[str]]) -> list[list[float | None]]:
        """Each option's log-probability as the reply's first token (vLLM: ``logprob_token_ids``; http: the
        server's top log-probabilities, matched as the HTTP backend matches them)."""
        if len(conversations) != len(options):
            raise ModelError("option_logprobs needs one option list per conversation")
        if isinstance(self.engine, VllmEngine):
            reqs = [self.engine.score_request(c, o) for c, o in zip(conversations, options)]
        else:
            reqs = [self.engine.score_request(c) for c in conversations]
        out: list[list[float | None]] = []
        for row, opts in zip(self._run(reqs, conversations), options):
            if row["error"] and "logprob" in row["error"].lower():  # callers fall back to parsing written answers
                self.stats.not_applied.setdefault("logprobs", f"the server refused the logprobs request: {row['error'][:200]}")
                out.append([None] * len(opts))
                continue
            self._count(row)
            top = json.loads(row["top"]) if row["top"] else {}
            out.append(self.engine.option_scores(top, opts))
        return out

    def describe(self) -> dict:
        d = super().describe()
        d.update(engine=self.ex.engine, executor=self.ex.model_dump(mode="json"), versions=dict(self.versions),
                 throughput=self.throughput())
        if isinstance(self.engine, VllmEngine):
            d["model_source"] = self.engine.model_source
            d["repetition_penalty_route"] = "plugin (answer tokens only, as locally)"
        else:
            d["model"] = self.spec.label()
            if self.engine._penalty is not None:
                d.update(self.engine._penalty.describe())
        return d

    def throughput(self) -> dict[str, Any]:
        """Generated tokens per second of Ray Data time, in all and per engine."""
        rate = self.stats.completion_tokens / self.ray_seconds if self.ray_seconds > 0 else None
        return {"jobs": self.jobs, "ray_seconds": round(self.ray_seconds, 2),
                "generated_tokens": self.stats.completion_tokens, "num_engines": self.ex.num_engines,
                "tokens_per_s": round(rate, 2) if rate is not None else None,
                "tokens_per_s_per_engine": round(rate / self.ex.num_engines, 2) if rate is not None else None}

    # ------------------------------------------------------------------ internals
    def _count(self, row: dict) -> tuple[int, int]:
        if row["error"]:
            where = getattr(self.engine, "url", self.spec.label())
            raise ModelError(f"{where} refused a request: {row['error']}",
                             fix="check the role's model name and server (the same request works with executor: local?).")
        got = row.get("model") or ""
        if got and got != self.spec.model:
            self.stats.model_mismatches[got] = self.stats.model_mismatches.get(got, 0) + 1
        p, c = int(row["prompt_tokens"]), int(row["completion_tokens"])
        self.stats.requests += 1
        self.stats.prompt_tokens += p
        self.stats.completion_tokens += c
        return p, c

    def _run(self, requests: list[dict], conversations: list[Conversation]) -> list[dict]:
        """Run ``requests`` as one Ray Data job; the answers' flat rows, in input order.

        Rows a server refused for an optional field (``repetition_penalty``, the prefill fields, ``seed``) are sent
        again without it, and every later request goes without it, as the HTTP backend does; the manifest lists it.
        """
        sent = [{k: v for k, v in r.items() if k not in self._dropped} for r in requests]
        rows = self._job(sent, conversations)
        for _ in OPTIONAL_FIELDS:
            refused = [i for i, row in enumerate(rows) if self._refused_field(sent[i], row["error"])]
            if not refused:
                break
            for i in refused:
                sent[i] = {k: v for k, v in requests[i].items() if k not in self._dropped}
            self.stats.retries += len(refused)
            for i, row in zip(refused, self._job([sent[i] for i in refused], [conversations[i] for i in refused])):
                rows[i] = dict(row, cai_index=i)
        return rows

    def _refused_field(self, sent: dict, error: str) -> bool:
        """Whether ``error`` refuses an optional field of the request as ``sent``; that field (with the fields that
        work with it) is then left out of this and every later request."""
        for f, what in OPTIONAL_FIELDS.items():
            if error and f in sent and FIELD_RE[f].search(error):
                self._dropped.update(g for g, w in OPTIONAL_FIELDS.items() if w == what)
                self.stats.not_applied.setdefault(what, f"the server rejected `{f}` ({error[:200]}); sent without it")
                return True
        return False

    def _job(self, requests: list[dict], conversations: list[Conversation]) -> list[dict]:
        if not requests:
            return []
        import pyarrow as pa
        import ray

        ensure_ray(self.ex)
        if self._processor is None:
            self._processor = self.engine.processor()
        rows = [{"cai_index": i, "request": json.dumps(r)} for i, r in enumerate(requests)]
        tables = [pa.Table.from_pylist([rows[i] for i in block]) for block in blocks_of(conversations, self.ex.batch_size)]
        t0 = time.perf_counter()
        out = self._processor(ray.data.from_arrow(tables)).take_all()
        self.ray_seconds += time.perf_counter() - t0
        self.jobs += 1
        out.sort(key=lambda r: int(r["cai_index"]))
        if [int(r["cai_index"]) for r in out] != list(range(len(requests))):
            raise ModelError(f"the Ray Data job returned {len(out)} answers for {len(requests)} requests",
                             fix="rerun the stage (finished shards are kept); report it if it repeats.")
        return out
