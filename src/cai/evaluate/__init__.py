"""Evaluation: a local refusal classifier, pluggable judges, statistics with confidence intervals, benchmark readers."""
