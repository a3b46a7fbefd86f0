"""Sweeps: the same-process cache, the objective, the report and its plots."""
