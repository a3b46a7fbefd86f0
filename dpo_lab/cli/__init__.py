"""Console commands: training's siblings that work on finished runs (generate, merge, compare, report)."""
