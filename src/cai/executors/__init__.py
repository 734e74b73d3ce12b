"""Executors: where a stage's model calls run (this process, or a Ray cluster through Ray Data).

* :mod:`cai.executors.config` - the ``executor:`` setting every sharded stage has (left out of its fingerprint).
* :mod:`cai.executors.local` - :func:`executor_pool`: the backend pool a stage's roles come from under its executor.
* :mod:`cai.executors.raydata` - the ray executor, a backend that runs each call as a Ray Data job.
* :mod:`cai.executors.engines` - its engines: vLLM (``vLLMEngineProcessorConfig``) and OpenAI-compatible HTTP
  (``HttpRequestProcessorConfig``).
* :mod:`cai.executors.versions` - the start-up check of the pinned scale-out versions.
"""
