"""The two engines a Ray Data pipeline can run a stage's requests on, as ``ray.data.llm`` processors.

* :class:`VllmEngine` - ``build_processor(vLLMEngineProcessorConfig(...))``: vLLM engines started by Ray Data on the
  cluster's GPUs (``num_engines`` x ``tensor_parallel_size``), chat template applied by the processor, prefix caching
  on. Option letters are scored from the *first generated token* (``SamplingParams(max_tokens=1, temperature=0,
  logprob_token_ids=[...])``): ``prompt_logprobs`` would turn prefix caching off.
* :class:`HttpEngine` - ``build_processor(HttpRequestProcessorConfig(...))``: the same requests, as OpenAI-compatible
  ``/chat/completions`` bodies, sent to the role's server (``vllm serve``, Ray Serve, any compatible one) by
  ``num_engines`` Ray workers. Bodies are built exactly as :class:`~cai.backends.openai_backend.OpenAIBackend`
  builds them, so a stage gets the same answers from the same server on either executor.

Each request is one row: ``{"cai_index", "request"}`` where ``request`` is the JSON text of the request (Arrow cannot
hold the varied nested values of requests and responses, so they cross the pipeline as text). ``postprocess`` reduces
every answer to flat columns (``text``, ``finish``, token counts, ``top``: the scored tokens' log-probabilities as
JSON): logprob dicts keyed by token id do not convert to Arrow.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from cai.backends.base import Conversation, GenParams
from cai.backends.openai_http import first_token_logprobs, logsumexp, normalize_option
from cai.backends.openai_penalty import PLUGIN_KEY, ServerPenalty
from cai.backends.spec import ModelSpec
from cai.errors import ConfigError
from cai.executors.config import ExecutorConfig

#: The vLLM logits processor that penalizes only the answer's tokens (cai/resources/vllm/cai_answer_penalty.py).
ANSWER_PENALTY_PROCESSOR = "cai.resources.vllm.cai_answer_penalty:AnswerRepetitionPenalty"

#: Log-probabilities a server returns per scored position (OpenAI's maximum).
TOP_LOGPROBS = 20


def concurrency(ex: ExecutorConfig) -> tuple[int, int]:
    """A fixed pool of ``num_engines`` (an int would start one and autoscale)."""
    return (ex.num_engines, ex.num_engines)


def _messages(conv: Conversation) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in conv]


def _prefill(conv: Conversation) -> bool:
    return bool(conv) and conv[-1]["role"] == "assistant"


# --------------------------------------------------------------------------------------------------- http engine
class HttpEngine:
    """Requests to an OpenAI-compatible server, sent by Ray Data workers."""

    kind = "http"

    def __init__(self, spec: ModelSpec, ex: ExecutorConfig, note: Callable[[str, str], None] = lambda f, w: None):
        if spec.backend != "openai":
            raise ConfigError(
                f"executor engine 'http' sends requests to a server, but the role's model is '{spec.label()}'.",
                fix="give the role as openai:NAME@http://HOST:PORT/v1, or use executor.engine: vllm for a model folder.")
        self.spec, self.ex = spec, ex
        self.model = spec.model
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        self._note = note
        self._penalty: ServerPenalty | None = None

    def penalty(self) -> ServerPenalty:
        """How ``repetition_penalty`` reaches the server: chosen once, as the HTTP backend chooses it."""
        if self._penalty is None:
            import httpx

            self._penalty = ServerPenalty(httpx.Client(headers=self.headers()), self.spec.base_url, self.model,
                                          mode=self.spec.penalty_route, end_of_turn=self.spec.end_of_turn,
                                          end_of_turn_logit=self.spec.end_of_turn_logit, note=self._note)
        return self._penalty

    def headers(self) -> dict[str, str]:
        key = os.environ.get(self.spec.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def config(self) -> Any:
        from ray.data.llm import HttpRequestProcessorConfig

        return HttpRequestProcessorConfig(url=self.url, headers=self.headers(), batch_size=self.ex.batch_size,
                                          concurrency=concurrency(self.ex), max_retries=self.spec.max_retries)

    def processor(self) -> Any:
        from ray.data.llm import build_processor

        return build_processor(self.config(), preprocess=http_preprocess, postprocess=http_postprocess)

    def _payload(self, conv: Conversation, **extra: Any) -> dict:
        payload = {"model": self.model, "messages": _messages(conv), **extra}
        if _prefill(conv):
            payload["continue_final_message"] = True
            payload["add_generation_prompt"] = False
        return payload

    def generate_request(self, conv: Conversation, params: GenParams, seed: int | None) -> dict:
        extra: dict[str, Any] = {"max_tokens": params.max_new_tokens, "temperature": params.temperature,
                                 "top_p": params.top_p}
        if seed is not None:
            extra["seed"] = seed
        if params.stop:
            extra["stop"] = list(params.stop)
        extra.update(self.penalty().fields(params.repetition_penalty, set()))
        return self._payload(conv, **extra)

    def score_request(self, conv: Conversation) -> dict:
        return self._payload(conv, max_tokens=1, temperature=0, logprobs=True, top_logprobs=TOP_LOGPROBS)

    def option_scores(self, top: dict[str, float], options: list[str]) -> list[float | None]:
        """Log-probability of each option from the scored tokens (token text -> logprob), as the HTTP backend reads it."""
        return _match(top, options)


def http_preprocess(row: dict) -> dict:
    return {"cai_index": row["cai_index"], "payload": json.loads(row["request"])}


def http_postprocess(row: dict) -> dict:
    """One server answer as flat columns (see the module docstring)."""
    resp = row.get("http_response")
    resp = resp if isinstance(resp, dict) else {}
    out: dict[str, Any] = {"cai_index": int(row["cai_index"]), "text": "", "has_text": False, "finish": "",
                           "prompt_tokens": 0, "completion_tokens": 0, "top": "", "model": "", "error": ""}
    if "error" in resp and not resp.get("choices"):
        err = resp["error"]
        out["error"] = json.dumps(err)[:500] if not isinstance(err, str) else err[:500]
        return out
    choices = resp.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    if text is not None:
        out["text"], out["has_text"] = str(text), True
    out["finish"] = str(choice.get("finish_reason") or "")
    usage = resp.get("usage") if isinstance(resp.get("usage"), dict) else {}
    out["prompt_tokens"] = int(usage.get("prompt_tokens") or 0)
    out["completion_tokens"] = int(usage.get("completion_tokens") or 0)
    out["model"] = str(resp.get("model") or "")
    lp = choice.get("logprobs")
    if isinstance(lp, dict) and lp.get("content"):
        first = lp["content"][0]
        top = first_token_logprobs(first)
        out["top"] = json.dumps(top)
    return out


# --------------------------------------------------------------------------------------------------- vLLM engine
class VllmEngine:
    """vLLM engines that Ray Data starts and feeds."""

    kind = "vllm"

    def __init__(self, spec: ModelSpec, ex: ExecutorConfig):
        self.spec, self.ex = spec, ex
        self.model_source = model_source(spec)
        self._option_ids: dict[str, list[int]] | None = None

    def engine_kwargs(self) -> dict[str, Any]:
        # The toolkit's logits processor gives repetition_penalty its local meaning (answer tokens only).
        return {"tensor_parallel_size": self.ex.tensor_parallel_size, "enable_prefix_caching": True,
                "logits_processors": [ANSWER_PENALTY_PROCESSOR], **self.ex.engine_kwargs}

    def config(self) -> Any:
        from ray.data.llm import vLLMEngineProcessorConfig

        return vLLMEngineProcessorConfig(model_source=self.model_source, engine_kwargs=self.engine_kwargs(),
                                         batch_size=self.ex.batch_size, concurrency=concurrency(self.ex))

    def processor(self) -> Any:
        from ray.data.llm import build_processor

        return build_processor(self.config(), preprocess=vllm_preprocess, postprocess=vllm_postprocess)

    def generate_request(self, conv: Conversation, params: GenParams, seed: int | None) -> dict:
        sampling: dict[str, Any] = {"max_tokens": params.max_new_tokens, "temperature": params.temperature,
                                    "top_p": params.top_p}
        if params.repetition_penalty != 1.0:
            sampling["extra_args"] = {PLUGIN_KEY: params.repetition_penalty}
        if seed is not None:
            sampling["seed"] = seed
        if params.stop:
            sampling["stop"] = list(params.stop)
        return {"messages": _messages(conv), "sampling_params": sampling}

    def score_request(self, conv: Conversation, options: list[str]) -> dict:
        ids = sorted({i for opt in options for i in self.option_ids(opt)})
        sampling = {"max_tokens": 1, "temperature": 0.0, "logprob_token_ids": ids}
        return {"messages": _messages(conv), "sampling_params": sampling}

    def option_ids(self, option: str) -> list[int]:
        """Token ids that spell ``option`` as one token (``A``, `` A``, ``(A``), from the model's tokenizer."""
        if self._option_ids is None:
            self._option_ids = {}
        if option not in self._option_ids:
            tok = self.tokenizer()
            ids = set()
            for variant in (option, " " + option, "(" + option, " (" + option):
                enc = tok.encode(variant, add_special_tokens=False)
                if len(enc) == 1:
                    ids.add(int(enc[0]))
            self._option_ids[option] = sorted(ids)
        return self._option_ids[option]

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_source)

    def option_scores(self, top: dict[str, float], options: list[str]) -> list[float | None]:
        """Log-probability of each option (summed over the token ids that spell it) from token id -> logprob."""
        out: list[float | None] = []
        for opt in options:
            hits = [top[str(i)] for i in self.option_ids(opt) if str(i) in top]
            out.append(logsumexp(hits) if hits else None)
        return out


def vllm_preprocess(row: dict) -> dict:
    req = json.loads(row["request"])
    return {"cai_index": row["cai_index"], "messages": req["messages"], "sampling_params": req["sampling_params"],
            "max_tokens": int(req["sampling_params"]["max_tokens"])}


def vllm_postprocess(row: dict) -> dict:
    """One engine output as flat columns; the first token's logprob dict (token id -> info) becomes JSON text."""
    n = int(row.get("num_generated_tokens") or 0)
    top: dict[str, float] = {}
    lps = row.get("logprobs")
    if lps is not None and len(lps) > 0 and lps[0]:
        for tid, info in dict(lps[0]).items():
            value = info.get("logprob") if isinstance(info, dict) else info
            if value is not None:
                top[str(int(tid))] = float(value)
    text = row.get("generated_text")
    return {"cai_index": int(row["cai_index"]), "text": str(text or ""), "has_text": text is not None,
            "finish": "length" if n >= int(row["max_tokens"]) else "stop", "prompt_tokens": int(row.get("num_input_tokens") or 0),
            "completion_tokens": n, "top": json.dumps(top) if top else "", "model": "", "error": ""}


def model_source(spec: ModelSpec) -> str:
    """What vLLM loads for a role: a Hugging Face folder or hub name (the embedded model's converted folder)."""
    if spec.backend != "transformers":
        raise ConfigError(
            f"executor engine 'vllm' loads the model itself, but the role's model is '{spec.label()}'.",
            fix="give the role a Hugging Face folder or hub name (or 'embedded'); for a server use executor.engine: http.")
    if spec.model == "embedded":
        from cai.backends.embedded import embedded_model_dir

        return str(embedded_model_dir())
    if spec.model == "teacher" or spec.model.lower().endswith(".gguf") or spec.model.startswith("gguf:"):
        raise ConfigError(f"executor engine 'vllm' needs a Hugging Face model folder, not the GGUF '{spec.model}'.",
                          fix="convert it once (cai runs it through transformers and caches the folder) and name that folder.")
    return os.path.expanduser(spec.model) if os.path.exists(os.path.expanduser(spec.model)) else spec.model


def _match(top: dict[str, float], options: list[str]) -> list[float | None]:
    """Token text -> logprob, matched to each option as the HTTP backend matches them (`` A`` and ``(A`` are ``A``)."""
    out: list[float | None] = []
    for opt in options:
        want = normalize_option(opt)
        hits = [lp for tok, lp in top.items() if want and normalize_option(tok) == want]
        out.append(logsumexp(hits) if hits else None)
    return out

