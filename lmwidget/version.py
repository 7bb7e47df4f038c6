"""lmwidget's version: recorded in its checkpoints and exports."""

__version__ = "0.2.0"
