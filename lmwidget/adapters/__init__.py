"""Training loops that are not lmwidget's: your own loop, the Hugging Face Trainer, Lightning."""
