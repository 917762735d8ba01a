"""Offline evaluation: holdout splits, ranking metrics and baselines, cold-start simulation."""
