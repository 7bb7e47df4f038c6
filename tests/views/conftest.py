"""The browser fixtures, shared by every browser test of the views (one Chromium, one server per front end)."""

from tests.harness.browser import browser, opened, page, servers  # noqa: F401  (fixtures)
