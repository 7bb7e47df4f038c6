"""Checkpoints: their format, safe loading, and random-number state."""
