"""The constitution at inference time: check answers against its principles, then pass, revise, block or flag.

``Guard`` (:mod:`cai.guard.core`) is the library; ``GuardConfig`` (:mod:`cai.guard.config`) a policy; the result
types live in :mod:`cai.guard.types`.
"""

from cai.guard.config import GuardConfig, PrefilterConfig, RuleConfig
from cai.guard.core import Guard, GuardUpstreamError
from cai.guard.types import CheckResult, GuardResult, PrincipleVerdict

__all__ = ["CheckResult", "Guard", "GuardConfig", "GuardResult", "GuardUpstreamError", "PrefilterConfig",
           "PrincipleVerdict", "RuleConfig"]
