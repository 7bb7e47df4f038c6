"""Corpora, tokenizers and token directories."""
