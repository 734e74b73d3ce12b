"""The one shard loop of every stage that works through a list of items with a model (pairs, bestofn; revise, label
and eval can use it the same way).

A stage describes its work; :func:`run_sharded` runs it::

    def run_pairs(cfg, run_dir, *, pool=None, overwrite=False, on_progress=None, on_ready=None):
        items = ...                                     # the FULL input, read and checked first
        pool = pool or BackendPool()

        def work(shard: Shard, policy: Backend, progress: Progress) -> list[dict]:
            comps = policy.generate(..., GenParams(seed=shard.seed()))   # one batch per shard
            progress.advance(len(shard.items), sum(c.completion_tokens for c in comps))
            return rows                                  # one or more rows per item, any JSON

        def finish(result: ShardedResult[Backend]) -> dict:
            result.stage.write_output("pairs.jsonl", result.rows)
            return {"model": result.resources.describe(), "timing": result.timing(), ...}   # the manifest

        return run_sharded(run_dir, "pairs", items, shard_size=cfg.shard_size, seed=cfg.seed,
                           identity={"pairs": cfg.model_dump(mode="json")}, load=lambda: pool.get(cfg.policy),
                           work=work, finish=finish, overwrite=overwrite, on_progress=on_progress, on_ready=on_ready)

What :func:`run_sharded` guarantees, in order:

1. Fixed shards: ``items`` (the full input, never only what is left) are cut into consecutive shards of
   ``shard_size``; shard ``i`` always holds the same items, and :meth:`Shard.seed` derives its seeds from the run
   seed and ``i`` alone (:func:`cai.seeding.shard_seed`), so a resumed run computes exactly what an uninterrupted one
   would.
2. Backends before the stage begins: unless the stage is already complete, ``load()`` runs *before*
   :meth:`cai.runs.StageDir.begin` records the configuration, so a model that fails to load leaves no half-started
   stage behind. A finished stage is returned as it is, with nothing loaded (``identity`` still has to match).
3. Resume: shards already written (:meth:`StageDir.shard_done`) are skipped; each new shard is written atomically
   (:meth:`StageDir.write_shard`) as soon as ``work`` returns it.
4. Progress: a :class:`~cai.progress.Progress` counts units (``units(items)``, default one per item) of the whole
   input, starting at what earlier sessions finished; ``on_ready`` sees it once before the first shard, ``on_progress``
   after every advance. ``work`` may advance it itself (e.g. tokens after each model call); whatever units of a
   shard it did not count are counted when the shard is written.
5. Finish: every shard is read back in order (:meth:`StageDir.read_shards`) into :attr:`ShardedResult.rows`;
   ``finish(result)`` writes the stage's outputs (:meth:`StageDir.write_output`) and returns the manifest body, which
   :meth:`StageDir.finish` writes last, once it is checked against the stage's typed model
   (:func:`cai.manifests.load_manifest`) where there is one.

Executors: where ``work``'s model calls run is decided by the backends ``load()`` returns, not here. Under
``executor: {kind: ray}`` (:mod:`cai.executors`) a stage's pool hands out backends that run each call as a Ray Data
job; the shards, seeds, resume, shard writes and manifest above are the same on either executor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Sequence, TypeVar

from cai.progress import Progress
from cai.runs import StageDir
from cai.seeding import shard_seed

R = TypeVar("R")


@dataclass
class Shard:
    """One fixed slice of a stage's input."""

    index: int
    items: list[dict]
    run_seed: int

    def seed(self, step: int = 0) -> int:
        """The seed of model call ``step`` inside this shard (depends only on the run seed, the index and the step)."""
        return shard_seed(self.run_seed, self.index, step)


@dataclass
class ShardedResult(Generic[R]):
    """What ``finish`` gets: every row in input order, the loaded resources, and this session's figures."""

    stage: StageDir
    rows: list[dict]
    resources: R | None
    """What ``load()`` returned (None only when nothing was loaded because every shard was already written)."""
    progress: Progress
    resumed: int
    """Units finished by earlier sessions."""
    seconds: float
    """Wall time of this session's shards."""

    @property
    def tokens(self) -> int:
        """Tokens generated in this session (as counted by ``work``)."""
        return self.progress.tokens

    def timing(self, rows: int | None = None) -> dict[str, Any]:
        """The manifest's usual ``timing`` block. ``rows``: rows in the output (default: all rows read back)."""
        n = len(self.rows) if rows is None else rows
        return {
            "seconds_this_session": round(self.seconds, 2),
            "rows_this_session": n - self.resumed,
            "generated_tokens_per_s": round(self.tokens / self.seconds, 2) if self.seconds > 0 else None,
            "resumed_rows": self.resumed,
        }


def cut_shards(items: Sequence[dict], shard_size: int, seed: int) -> list[Shard]:
    """Consecutive shards of ``shard_size`` items (the last may be shorter)."""
    return [Shard(i, list(items[start : start + shard_size]), seed)
            for i, start in enumerate(range(0, len(items), shard_size))]


def run_sharded(
    run_dir: str | Path,
    name: str,
    items: Sequence[dict],
    *,
    shard_size: int,
    seed: int,
    identity: dict[str, Any],
    load: Callable[[], R],
    work: Callable[[Shard, R, Progress], list[dict]],
    finish: Callable[[ShardedResult[R]], dict[str, Any]],
    units: Callable[[list[dict]], int] = len,
    inputs: Any = None,
    load_when_done: bool = True,
    overwrite: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    on_ready: Callable[[Progress], None] | None = None,
) -> dict:
    """Run (or resume, or return when finished) the sharded stage ``name`` in ``run_dir``. Returns the manifest.

    ``identity``: the settings that must match for a rerun to resume (files the settings name are fingerprinted by
    content anyway). ``inputs``: records whose content is fingerprinted too (e.g. ``items``, when they do not all
    come from such files): when they changed since the stage began, the stage starts again, saying so.
    ``load_when_done``: when every shard is already written (a kill between the last shard and the manifest), still
    call ``load()`` (set it to False when ``finish`` does not need the resources).
    """
    stage = StageDir(run_dir, name)
    shards = cut_shards(items, shard_size, seed)
    loaded: list[R] = []

    def resources() -> R:
        if not loaded:
            loaded.append(load())
        return loaded[0]

    if overwrite or not stage.is_complete():
        # looked up without side effects: shards are verified (and damaged ones removed) only once the stage begins
        pending = overwrite or any(not stage.shard_path(s.index).exists() for s in shards)
        if pending or load_when_done:
            resources()  # before begin: a model that fails to load must not leave a half-started stage behind
    state = stage.begin(identity, overwrite=overwrite, inputs=inputs)
    if state == "complete":
        return stage.manifest()
    try:
        todo = [s for s in shards if not stage.shard_done(s.index)]
        if todo or load_when_done:
            resources()
        waiting = {s.index for s in todo}
        already = sum(units(s.items) for s in shards if s.index not in waiting)
        prog = Progress(total=sum(units(s.items) for s in shards), done=already, callback=on_progress)
        prog.extra["resumed_rows"] = already
        if on_ready:
            on_ready(prog)
        t0 = time.perf_counter()
        for shard in todo:
            before = prog.done
            rows = work(shard, resources(), prog)
            stage.write_shard(shard.index, rows)
            left = units(shard.items) - (prog.done - before)
            if left > 0:
                prog.advance(left, 0)
        seconds = time.perf_counter() - t0
        result = ShardedResult(stage=stage, rows=stage.read_shards(len(shards)),
                               resources=loaded[0] if loaded else None, progress=prog, resumed=already, seconds=seconds)
        body = finish(result)
        stage.finish(body)  # checked against the stage's typed manifest model before it is written
    except BaseException:
        stage.release()
        raise
    return body
