"""GRPO/RLOO rollouts on vLLM go through TRL's own vLLM mode: the settings become GRPOConfig/RLOOConfig arguments.

vLLM needs a GPU, so these tests check what reaches TRL (a real GRPOConfig/RLOOConfig is built) and the errors, not
a rollout."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cai.errors import UserInputError
from cai.stages.rl import RLStageConfig, _identity, run_rl
from cai.train.vllm_rollouts import VllmRollouts, trl_vllm_kwargs


def test_colocate_and_server_modes_become_trl_arguments():
    from trl import GRPOConfig, RLOOConfig

    colo = trl_vllm_kwargs(VllmRollouts(mode="colocate", gpu_memory_utilization=0.4, enable_sleep_mode=True))
    assert colo == {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.4,
                    "vllm_enable_sleep_mode": True, "vllm_tensor_parallel_size": 1}
    server = trl_vllm_kwargs(VllmRollouts(mode="server", server_base_url="http://10.0.0.5:8000"))
    assert server == {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": "http://10.0.0.5:8000",
                      "vllm_server_timeout": 240.0}
    assert trl_vllm_kwargs(None) == {}
    args = GRPOConfig(output_dir="/tmp/cai-grpo-args", use_cpu=True, **colo)  # every name is one TRL knows
    assert (args.use_vllm, args.vllm_mode, args.vllm_gpu_memory_utilization) == (True, "colocate", 0.4)
    args = RLOOConfig(output_dir="/tmp/cai-rloo-args", use_cpu=True, **server)
    assert (args.vllm_mode, args.vllm_server_base_url) == ("server", "http://10.0.0.5:8000")


def test_server_mode_needs_its_url():
    with pytest.raises(ValidationError, match="server_base_url"):
        RLStageConfig(vllm={"mode": "server"})


def test_ppo_has_no_vllm_mode(tmp_path):
    with pytest.raises(UserInputError, match="grpo or rloo"):
        run_rl(RLStageConfig(algorithm="ppo", vllm={"mode": "colocate"}), tmp_path)
    assert not (tmp_path / "rl").exists()


def test_where_rollouts_run_is_not_part_of_the_fingerprint():
    assert _identity(RLStageConfig(vllm={"mode": "colocate"})) == _identity(RLStageConfig())
