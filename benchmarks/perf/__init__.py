"""Performance benchmarks: each hot path against a naive baseline in the same run; ``xlpref bench``."""
