"""Colab: lmwidget turns its custom widget manager on, once and only there, and says live updates wait for a cell."""

import sys
import types

import pytest

import lmwidget
from lmwidget.magics import load_ipython_extension
from lmwidget.views import frontends


@pytest.fixture
def colab(monkeypatch):
    """A stand-in for Colab's `google.colab.output`, counting the calls."""
    calls = []
    google = types.ModuleType("google")
    colab = types.ModuleType("google.colab")
    output = types.ModuleType("google.colab.output")
    output.enable_custom_widget_manager = lambda: calls.append("enabled")
    google.colab, colab.output = colab, output
    for name, module in (("google", google), ("google.colab", colab), ("google.colab.output", output)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(frontends, "_prepared", False)
    return calls


class Shell:
    def __init__(self):
        self.magics = []

    def register_magics(self, magics):
        self.magics.append(magics)


def test_loading_the_extension_in_colab_enables_its_widget_manager_once(colab):
    shell = Shell()
    load_ipython_extension(shell)
    load_ipython_extension(shell)
    assert colab == ["enabled"]
    assert shell.magics  # the magics are registered as well


def test_a_dashboard_shown_in_colab_without_the_extension_enables_it(colab, monkeypatch, tiny):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: shown.append(a))
    run = lmwidget.train(max_steps=2, display=False, **tiny)
    run.wait(30)
    run.dashboard.show()
    assert colab == ["enabled"] and shown


def test_a_dashboard_in_colab_says_its_redraws_may_not_show_until_a_cell_runs(colab, tiny):
    run = lmwidget.train(max_steps=2, display=False, **tiny)
    run.wait(30)
    assert "colabtools#3373" in run.dashboard.title.value


def test_outside_colab_a_dashboard_says_nothing_of_it(monkeypatch, tiny):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    run = lmwidget.train(max_steps=2, display=False, **tiny)
    run.wait(30)
    assert "colab" not in run.dashboard.title.value.lower()


def test_outside_colab_nothing_is_called(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(frontends, "_prepared", False)
    frontends.prepare()
    assert not frontends.in_colab() and frontends._prepared is False


def test_a_failing_colab_call_warns_and_never_breaks_the_display(colab, monkeypatch):
    def broken():
        raise RuntimeError("no widget manager here")

    monkeypatch.setattr(sys.modules["google.colab.output"], "enable_custom_widget_manager", broken)
    with pytest.warns(lmwidget.LmwidgetWarning, match="could not enable Colab's custom widget manager"):
        frontends.prepare()
    frontends.prepare()  # tried once only: no second warning
    assert frontends._prepared is True


def test_in_colab_the_notice_says_live_updates_wait_for_a_cell_and_what_to_do(colab):
    notice = frontends.frontend_notice()
    assert notice == frontends.COLAB_NOTICE and "\n" not in notice
    assert "googlecolab/colabtools#3373" in notice  # why
    assert "run.wait()" in notice and "JupyterLab" in notice and "Binder" in notice  # what to do


def test_outside_colab_there_is_no_notice(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert frontends.frontend_notice() is None
