"""lmwidget's exceptions and warning: one base, LmwidgetError, under every error it raises of its own."""

from __future__ import annotations

import warnings


class LmwidgetError(Exception):
    """The base of lmwidget's own errors: `except lmwidget.LmwidgetError` catches any of them.

    Each specific error also derives from the built-in exception it refines (a
    `CheckpointError` is a `ValueError`), so code that catches `ValueError` keeps working.
    """


class CheckpointError(LmwidgetError, ValueError):
    """A file that cannot be used as a checkpoint; the message names it and says why."""


class ModelDirError(LmwidgetError, ValueError):
    """A model directory refused before anything was built; the message names the file and why."""


class LmwidgetWarning(UserWarning):
    """A warning from lmwidget that the user should act on."""


# Python shows a warning once per call site by default; these must show every time.
warnings.simplefilter("always", LmwidgetWarning)
