"""Every colour a view draws with is readable on a light page and on JupyterLab's dark theme."""

import re
from pathlib import Path

import pytest

from lmwidget.core import palette
from lmwidget.views.charts import EVENT_COLORS
from lmwidget.views.compare import PALETTE
from lmwidget.views.controlbar import STATE_COLORS
from lmwidget.views.dashboard import GHOST_COLOR
from lmwidget.lrfind.view import SUGGESTION_COLORS
from lmwidget.core.schema import COLUMNS, USER_COLORS

PACKAGE = Path(palette.__file__).parent
COLORS = {name: value for name, value in vars(palette).items() if re.fullmatch(r"[A-Z]+", name)
          and isinstance(value, str)}


def test_contrast_is_wcags_ratio():
    assert palette.contrast("#000000", "#ffffff") == pytest.approx(21)
    assert palette.contrast("#777777", "#777777") == 1
    assert palette.contrast("#1565c0", "#ffffff") == pytest.approx(5.75, abs=0.01)
    with pytest.raises(ValueError, match=r"a colour is written #rrggbb; got 'blue'"):
        palette.luminance("blue")


@pytest.mark.parametrize("background", list(palette.BACKGROUNDS))
def test_every_colour_stands_out_on_light_and_dark_pages(background):
    behind = palette.BACKGROUNDS[background]
    faint = {name: round(palette.contrast(color, behind), 2) for name, color in COLORS.items()
             if palette.contrast(color, behind) < palette.MIN_CONTRAST}
    assert not faint, f"below {palette.MIN_CONTRAST}:1 on {background} ({behind}): {faint}"
    assert len(COLORS) >= 12


def test_the_views_draw_only_with_the_palette():
    used = {*[m.color for m in COLUMNS], *USER_COLORS, *EVENT_COLORS.values(), *PALETTE,
            *STATE_COLORS.values(), *SUGGESTION_COLORS.values(), GHOST_COLOR}
    assert used <= set(COLORS.values()), used - set(COLORS.values())
    # and no colour is written anywhere else (the standalone HTML export styles its own light page)
    literal = re.compile(r"#[0-9a-fA-F]{6}\b")
    elsewhere = {path.name: literal.findall(path.read_text()) for path in PACKAGE.glob("*.py")
                 if path.name not in ("palette.py", "export.py")}
    assert not any(elsewhere.values()), {k: v for k, v in elsewhere.items() if v}


def test_the_static_summary_takes_the_pages_text_colour(tiny):
    import lmwidget
    from lmwidget.views.summary import summary_html

    run = lmwidget.train(display=False, **{**tiny, "max_steps": 5})
    run.wait(60)
    page = summary_html(run)
    assert page.count('fill="currentColor"') >= 5  # one per chart: its text follows the theme
    written = set(re.findall(r'(?:fill|stroke)="(#[0-9a-fA-F]{3,6})"', page))
    assert written and written <= set(COLORS.values()), written  # no grey or black of its own
