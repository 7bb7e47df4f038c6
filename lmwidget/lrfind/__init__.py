"""The learning-rate range test and its view."""
