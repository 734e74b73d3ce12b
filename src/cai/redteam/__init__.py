"""Automated red-teaming (``cai redteam``): a model writes attacks per harm category of the constitution, the
target answers them, judges score the answers, and the successful attacks become prompts for training and
regression evaluation.

Modules: :mod:`~cai.redteam.config` (settings), :mod:`~cai.redteam.prompts` (what the attacker is asked, converters),
:mod:`~cai.redteam.methods` (the methods and one shard of work), :mod:`~cai.redteam.supervised` (fine-tuning the
attacker on successes), :mod:`~cai.redteam.metrics` (rates, judge correction, diversity, clusters),
:mod:`~cai.redteam.stage` (the stage).
"""
