"""Benchmarks of what the dashboard costs a training step."""
