"""Notebook frontends that need a word before they draw third-party widgets (Colab)."""

from __future__ import annotations

import sys
import threading
import warnings

_lock = threading.Lock()
_prepared = False


def in_colab() -> bool:
    """True in a Google Colab kernel (its `google.colab` package is imported at start-up)."""
    return "google.colab" in sys.modules


def prepare() -> None:
    """Once per kernel: turn on Colab's custom widget manager, which draws widgets of
    packages other than ipywidgets (bqplot's charts); elsewhere, nothing."""
    global _prepared
    with _lock:
        if _prepared or not in_colab():
            return
        _prepared = True  # tried once, whatever happens
        try:
            from google.colab import output  # only imported where it exists

            output.enable_custom_widget_manager()
        except Exception as e:  # a run may already be training: never fail its display
            from .run import LmwidgetWarning

            warnings.warn(f"could not enable Colab's custom widget manager ({e!r}): the charts "
                          f"may not draw. Run `from google.colab import output; "
                          f"output.enable_custom_widget_manager()` yourself", LmwidgetWarning,
                          stacklevel=3)
