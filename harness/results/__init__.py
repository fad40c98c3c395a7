"""Results: the rows tree, leaderboards, comparisons, plots, published rows, run reports."""
