"""The colours every view draws with, each readable (3:1 or more) on a light page and on JupyterLab's dark theme."""

from __future__ import annotations

BLUE = "#1e88e5"
ORANGE = "#e65100"
GREEN = "#388e3c"
PURPLE = "#9575cd"
RED = "#e53935"
TEAL = "#00897b"
AMBER = "#c77700"
PINK = "#e91e63"
BROWN = "#a1887f"
OLIVE = "#689f38"
INDIGO = "#7986cb"
SLATE = "#78909c"   # throughput, resources
GREY = "#757575"    # stopped
MUTED = "#8a8a8a"   # earlier runs' ghosts, routine markers

# the page behind a chart: a light notebook, JupyterLab Dark's page and its raised panels
BACKGROUNDS = {"light": "#ffffff", "dark": "#111111", "dark, raised": "#212121"}
MIN_CONTRAST = 3.0  # WCAG's ratio for graphics and large text


def luminance(color: str) -> float:
    """The relative luminance of a #rrggbb colour (WCAG 2)."""
    if not (isinstance(color, str) and len(color) == 7 and color[0] == "#"):
        raise ValueError(f"a colour is written #rrggbb; got {color!r}")
    channels = [int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """WCAG's contrast ratio of two colours, 1 to 21."""
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)
