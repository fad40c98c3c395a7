"""Metrics: win rate, length-controlled win rate, paired bootstrap, instruction difficulty."""
