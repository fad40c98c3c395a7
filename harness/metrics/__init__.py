"""Metrics: annotations read, win rate, length-controlled win rate, instruction difficulty, paired bootstrap."""
