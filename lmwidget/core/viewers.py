"""Where the views a source shows itself with are found: the views attach them from above, so
that core never imports a view."""

from __future__ import annotations

from typing import Callable

from IPython import get_ipython

_viewers: dict[str, Callable] = {}
KINDS = ("dashboard", "export", "to_html")


def use(**viewers: Callable) -> None:
    """Attach the views a source uses (lmwidget's package does, when it is imported).

    Args:
        **viewers: by kind (dashboard, export, to_html), the class or function that makes it
            from a source.

    Raises:
        ValueError: a kind that is not one of KINDS.
    """
    unknown = sorted(set(viewers) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown view kind {unknown[0]!r}; one of: {', '.join(KINDS)}")
    _viewers.update(viewers)


def get(kind: str) -> Callable:
    """The view of `kind` attached with use().

    Raises:
        RuntimeError: none is attached (lmwidget's views were not imported).
    """
    try:
        return _viewers[kind]
    except KeyError:
        raise RuntimeError(f"no {kind} view is attached: import lmwidget (its views attach "
                           f"themselves to every source)") from None


class Viewable:
    """What a source shows itself with: its dashboard, in a cell or as a widget, its export
    and its HTML page; each made by the view attached with use()."""

    _dashboard = None
    _shown_in = None  # the execution count of the cell that displayed the dashboard

    @property
    def dashboard(self):
        """The dashboard widget (created on first use, on the calling thread)."""
        with self._lock:
            if self._dashboard is None:
                self._dashboard = get("dashboard")(self)
        return self._dashboard

    def show(self) -> None:
        """Display the dashboard in the running cell (once per cell); in a script, nothing."""
        shell = get_ipython()
        if shell is None or not hasattr(shell, "kernel"):
            return  # not in a notebook kernel: nothing to draw on
        if self._shown_in == shell.execution_count:
            return
        self._shown_in = shell.execution_count
        self.dashboard.show()

    def _ipython_display_(self) -> None:
        self.show()

    def export(self, directory) -> dict:
        """Write the run's record into `directory` and return {name: path}: history.csv
        (and .parquet with pyarrow), events.csv, resources.csv, samples.json, config.json,
        and TensorBoard event files under tensorboard/ when tensorboard is installed."""
        return get("export")(self, directory)

    def to_html(self, path):
        """Write one standalone HTML page with the run's curves (drawn without a kernel or
        network) and the dashboard's widget state; returns its path."""
        return get("to_html")(self, path)
