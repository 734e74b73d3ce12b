"""Rollouts on vLLM for ``cai rl`` with GRPO or RLOO, through TRL's own vLLM mode (GPU only).

``rl.vllm: {mode: colocate}`` starts vLLM inside the training process and shares the GPU with it (TRL's
``vllm_mode="colocate"``; ``gpu_memory_utilization`` bounds vLLM's share, ``enable_sleep_mode`` frees its memory
during the optimizer step). ``rl.vllm: {mode: server, server_base_url: http://HOST:8000}`` sends rollouts to a
``trl vllm-serve --model POLICY`` server running on other GPUs, which receives the updated weights after each step.
Our own PPO generates with the policy itself and has no vLLM mode.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VllmRollouts(BaseModel):
    """How GRPO/RLOO rollouts run on vLLM (TRL's ``use_vllm``)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["colocate", "server"] = Field(
        default="colocate",
        description="colocate: vLLM in the training process on the same GPU; server: a `trl vllm-serve` server",
    )
    gpu_memory_utilization: float = Field(default=0.3, gt=0, le=1, description="colocate: GPU memory share of vLLM")
    enable_sleep_mode: bool = Field(default=False, description="colocate: free vLLM's memory during optimizer steps")
    tensor_parallel_size: int = Field(default=1, ge=1, description="colocate: GPUs per vLLM engine")
    server_base_url: str | None = Field(
        default=None, description="server: base URL of `trl vllm-serve` (e.g. http://10.0.0.5:8000)"
    )
    server_timeout: float = Field(default=240.0, gt=0, description="server: seconds to wait for the server at start")

    @model_validator(mode="after")
    def _server_needs_url(self) -> "VllmRollouts":
        if self.mode == "server" and not self.server_base_url:
            raise ValueError("vllm.mode 'server' needs vllm.server_base_url, the address of `trl vllm-serve` "
                             "(e.g. http://10.0.0.5:8000)")
        return self


def trl_vllm_kwargs(v: VllmRollouts | None) -> dict[str, Any]:
    """The GRPOConfig/RLOOConfig arguments for these settings (none when rollouts stay on the policy)."""
    if v is None:
        return {}
    kw: dict[str, Any] = {"use_vllm": True, "vllm_mode": v.mode}
    if v.mode == "colocate":
        kw.update(vllm_gpu_memory_utilization=v.gpu_memory_utilization, vllm_enable_sleep_mode=v.enable_sleep_mode,
                  vllm_tensor_parallel_size=v.tensor_parallel_size)
    else:
        kw.update(vllm_server_base_url=v.server_base_url, vllm_server_timeout=v.server_timeout)
    return kw
