"""compare(): several runs overlaid, live, labelled by what differs, with a table."""

import re

import numpy as np
import pytest

import lmwidget
from lmwidget.views.compare import labels_for

from tests.conftest import TINY, wait_for


def finished(**options):
    run = lmwidget.train(display=False, **{**TINY, "eval_interval": 20, "max_steps": 60, **options})
    run.wait(60)
    return run


def test_labels_name_what_differs():
    a, b = finished(lr=3e-3), finished(lr=3e-2)
    assert labels_for([a, b]) == [f"run {a.id}: lr=0.003", f"run {b.id}: lr=0.03"]
    c = finished(lr=3e-3)
    assert labels_for([a, c]) == [f"run {a.id}", f"run {c.id}"]
    # a vocabulary left to the tokenizer (vocab_size=0) is named by its size, not by 0
    words = finished(lr=3e-3, tokenizer="word", vocab_size=200)
    assert labels_for([a, words])[0] == f"run {a.id}: tokenizer=char, vocab_size={a.tokenizer.vocab_size}"


def test_two_finished_runs_and_one_still_training():
    a, b = finished(lr=3e-3), finished(lr=3e-2)
    live = lmwidget.train(display=False, concurrent=True, **{**TINY, "eval_interval": 20,
                                                              "max_steps": 10**6, "lr": 1e-3})
    view = lmwidget.compare(a, b, live, display=False)
    la, lb, ll = view.legend  # the charts' series; view.labels in full in the table
    marks = view.charts["loss"].marks
    wait_for(lambda: len(marks[la].x) == 60 and len(marks[lb].x) == 60, 10)
    np.testing.assert_allclose(marks[la].y, a.history.loss, rtol=1e-6)
    assert len(view.charts["val_loss"].marks[la].x) == 3  # steps 20, 40, 60
    n = len(marks[ll].x)
    wait_for(lambda: len(marks[ll].x) > n + 10, 10)  # the live run's curve grows
    assert view.charts["lr"].marks[lb].y[0] == pytest.approx(3e-2)
    live.stop()
    live.wait(30)
    wait_for(lambda: not view.updater.running, 10)  # all ended: the view stops redrawing
    table = re.sub(r"<[^>]+>", "|", view.table.value)
    assert f"run {live.id}: lr=0.001, max_steps=1000000||stopped|" in table and "|finished||60|" in table
    best = a.history.dropna(subset=["val_loss"]).val_loss.min()
    assert f"{best:.4f}" in table


def test_compare_checks_its_arguments():
    with pytest.raises(ValueError, match="at least one run"):
        lmwidget.compare(display=False)
    with pytest.raises(TypeError, match="compare\\(\\) takes lmwidget runs .*; got int"):
        lmwidget.compare(3, display=False)
    a = finished()
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        lmwidget.compare(a, labels=["x", "y"], display=False)


def test_ghosts_are_earlier_runs_drawn_faintly_on_the_dashboard():
    earlier = finished(lr=3e-2)
    run = lmwidget.train(display=False, ghosts=2, **{**TINY, "max_steps": 20, "lr": 1e-3})
    d = run.dashboard
    run.wait(30)
    (label,) = [g for g in d._ghost_labels if g.startswith(f"run {earlier.id}:")]
    assert "lr=0.03" in label and len(d._ghost_labels) == 2  # the two latest finished runs
    wait_for(lambda: not d.updater.running, 10)
    ghost = d.charts["loss"].marks[label]
    assert len(ghost.x) == 60 and ghost.opacities == [0.6]
    np.testing.assert_allclose(ghost.y, earlier.history.loss, rtol=1e-6)
    with pytest.raises(ValueError, match="ghosts must be an integer >= 0"):
        lmwidget.train(display=False, ghosts=-1)


class Shell:
    """Just enough of a kernel's shell for display: a kernel and an execution count."""
    kernel = object()
    execution_count = 1


def test_compare_on_its_own_line_draws_one_view_per_cell(monkeypatch):
    import IPython
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell)
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: shown.append(obj))
    run = finished(max_steps=5)
    view = lmwidget.compare(run)   # displays it ...
    view._ipython_display_()       # ... and IPython displays the cell's value: not again
    assert len(shown) == 1
    assert shown[0]["application/vnd.jupyter.widget-view+json"]["model_id"] == view.model_id
    Shell.execution_count = 2      # a later cell showing `view` draws it there
    view._ipython_display_()
    assert len(shown) == 2


def test_legends_show_labels_short_enough_to_read_the_table_names_runs_in_full():
    from lmwidget.views.compare import LEGEND_CHARS, legend_labels

    runs = [type("R", (), {"id": i})() for i in (1, 2)]
    full = ["run 1: lr=0.003, max_steps=150, eval_interval=25", "run 2: lr=0.001, max_steps=60, eval_interval=100"]
    assert legend_labels(full, runs) == ["run 1: lr=0.003…", "run 2: lr=0.001…"]  # whole options only
    assert all(len(label) <= 40 for label in legend_labels(full, runs, max_chars=40)) and LEGEND_CHARS < 40
    assert legend_labels(["run 1: lr=0.003"], runs[:1]) == ["run 1: lr=0.003"]  # short: as it is
    same_start = ["the same long prefix of a label: A", "the same long prefix of a label: B"]
    assert legend_labels(same_start, runs) == ["run 1", "run 2"]  # cut alike: by run instead
