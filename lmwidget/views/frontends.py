"""What the notebook front end and kernel allow: Colab's widget manager and notice, whether a cell runs."""

from __future__ import annotations

import sys
import threading
import warnings

from IPython import get_ipython

from lmwidget.errors import LmwidgetWarning

# Colab shows widget state sent from a thread other than the kernel's main one only once a
# cell runs (googlecolab/colabtools#3373, open since 2023), and every redraw of a dashboard
# comes from its updater thread
COLAB_NOTICE = ("In Colab, this dashboard's live updates may not show until a cell runs "
                "(googlecolab/colabtools#3373): run a cell, such as run.wait(), to see them, "
                "or open the notebook in JupyterLab or on Binder to watch training live.")

_lock = threading.Lock()
_prepared = False
_tracking = False
_cell_running = threading.Event()  # a cell is executing on the kernel's main thread


def in_colab() -> bool:
    """Whether this kernel is Google Colab's.

    Returns:
        True in a Colab kernel (its `google.colab` package is imported at start-up).
    """
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
            warnings.warn(f"could not enable Colab's custom widget manager ({e!r}): the charts "
                          f"may not draw. Run `from google.colab import output; "
                          f"output.enable_custom_widget_manager()` yourself", LmwidgetWarning,
                          stacklevel=3)


def frontend_notice() -> str | None:
    """What a view should tell the user about this front end, in one line of plain text.

    Returns:
        In a Colab kernel, COLAB_NOTICE: Colab draws the redraws a view's updater thread
        sends only once a cell runs, so the dashboard must say that it is not live there.
        Elsewhere, None.
    """
    return COLAB_NOTICE if in_colab() else None


def cell_running() -> bool:
    """Whether a cell executes on the kernel's main thread now.

    Returns:
        True while one does: the main thread then reads no widget message unless comms
        run over subshells (see track_cells).
    """
    return _cell_running.is_set()


def track_cells() -> None:
    """Once per kernel: follow when cells start and end (IPython's pre/post_run_cell).
    Called from a cell on the main thread, that cell is running now."""
    global _tracking
    shell = get_ipython()
    with _lock:
        if _tracking or shell is None or not hasattr(shell, "events"):
            return
        _tracking = True
    shell.events.register("pre_run_cell", lambda *_: _cell_running.set())
    shell.events.register("post_run_cell", lambda *_: _cell_running.clear())
    if threading.current_thread() is threading.main_thread():
        _cell_running.set()
