"""Hyper-parameter search (optuna) on validation splits."""
