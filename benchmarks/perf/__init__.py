"""Performance benchmarks (issue 6): each hot path against a naive baseline in the same run; ``xlpref bench``."""
