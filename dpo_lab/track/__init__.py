"""Tracking: the W&B run lifecycle and the per-step log history."""
