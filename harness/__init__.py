"""harness: the CLI, the iteration loop, evaluation, metrics, the results store and leaderboards."""
