"""Evaluation: model outputs, judging against reference outputs, capability suites."""
