"""The cells showing a view, and closing a tree of widgets."""

import bqplot as bq
import ipywidgets as w
from ipywidgets.widgets.widget import _instances as registered  # ipywidgets' registry

from lmwidget.views.cells import Cells, close_widgets

from tests.views.test_dashboard import FakePublisher


def test_each_cell_gets_an_update_once_per_key(monkeypatch):
    import IPython

    pub = FakePublisher()
    monkeypatch.setattr(IPython, "get_ipython", lambda: type("Shell", (), {"display_pub": pub})())
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append(kw["display_id"]))
    cells = Cells("view-7")
    assert cells.up_to_date("anything")  # no cell: nothing to update
    cells.show({"text/plain": "a"})
    pub.parent_header = {"msg_id": "cell-2"}
    cells.show({"text/plain": "b"})
    assert [i.startswith("view-7-") for i in shown] == [True, True] and shown[0] != shown[1]
    assert not cells.up_to_date("k1")
    made = []
    cells.update(lambda: made.append(1) or {"text/html": "k1"}, "k1")
    assert made == [1] and cells.up_to_date("k1") and not cells.up_to_date("k2")
    assert [(t["display_id"], parent) for _, t, _, parent in pub.published] == [
        (shown[0], {"msg_id": "cell-1"}), (shown[1], {"msg_id": "cell-2"})]
    cells.update(lambda: made.append(1), "k1")  # every cell has it: not made, not sent
    assert made == [1] and len(pub.published) == 2
    cells.update(lambda: {"text/html": "k2"}, "k2")
    assert len(pub.published) == 4 and cells.up_to_date("k2")


def test_without_a_kernel_nothing_is_sent():
    cells = Cells("view")
    cells.update(lambda: 1 / 0, "k")  # never made
    assert cells.up_to_date("k")


def test_close_widgets_closes_what_the_traits_reach():
    x, y = bq.LinearScale(), bq.LinearScale()
    line = bq.Lines(x=[0, 1], y=[1, 2], scales={"x": x, "y": y}, tooltip=w.HTML("tip"))
    figure = bq.Figure(marks=[line], axes=[bq.Axis(scale=x)])
    box = w.VBox([w.HBox([w.Button()]), figure])
    apart = w.IntText()
    ids = {v.model_id for v in (x, y, line, figure, box, apart, figure.layout, line.tooltip)}
    assert ids <= set(registered)
    n = close_widgets(box, [apart])
    assert n >= 10 and not ids & set(registered)
