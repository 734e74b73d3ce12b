"""Inverse Constitutional AI: infer principles that explain pairwise preferences (``cai constitution infer``)."""

from cai.constitution.infer.config import InferConfig
from cai.constitution.infer.data import Pair, read_pairs
from cai.constitution.infer.run import run_infer
from cai.constitution.infer.synthetic import RULES, make_pairs

__all__ = ["InferConfig", "Pair", "RULES", "make_pairs", "read_pairs", "run_infer"]
