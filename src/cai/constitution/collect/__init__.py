"""Collective Constitutional AI: a draft constitution from public votes on statements (``cai constitution collect``)."""

from cai.constitution.collect.config import CollectConfig
from cai.constitution.collect.readers import VoteData, read_votes
from cai.constitution.collect.run import apply_filters, run_collect
from cai.constitution.collect.synthetic import make_votes

__all__ = ["CollectConfig", "VoteData", "apply_filters", "make_votes", "read_votes", "run_collect"]
