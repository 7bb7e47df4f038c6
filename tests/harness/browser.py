"""The browser tests' front ends and fixtures: one Chromium and one server per front end for
the whole session, and a factory that opens a notebook in one of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright import sync_api

from tests.harness.jupyter_server import (
    COMMS_OVER_SUBSHELLS_OFF,
    JupyterServer,
    NotebookPage,
    copy_notebook,
    launch_browser,
    slug,
    write_notebook,
)

# name -> (app, user settings, expected frontend commsOverSubshells mode)
FRONTENDS = {
    # JupyterLab >= 4.4 default: widget comms over kernel subshells (no setting written).
    "lab-subshells-on": ("lab", {}, "perCommTarget"),
    # Off: @jupyterlab/apputils-extension:kernels-settings {"commsOverSubshells": "disabled"}
    "lab-subshells-off": ("lab", COMMS_OVER_SUBSHELLS_OFF, "disabled"),
    "notebook7": ("notebook", {}, "perCommTarget"),
}

# servers the scenario does not run on
OTHER_FRONTENDS = {"lab-dark": ("lab", {"@jupyterlab/apputils-extension:themes": {"theme": "JupyterLab Dark"}},
                                "perCommTarget")}



@pytest.fixture(scope="session")
def browser():
    with sync_api.sync_playwright() as pw:
        b = launch_browser(pw)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def servers():
    """Lazily started servers, one per frontend configuration, stopped at session end."""
    started: dict[str, JupyterServer] = {}

    def get(name: str) -> JupyterServer:
        if name not in started:
            app, settings, _ = {**FRONTENDS, **OTHER_FRONTENDS}[name]
            started[name] = JupyterServer(app, settings=settings, name=name).start()
        return started[name]

    try:
        yield get
    finally:
        for srv in started.values():
            srv.cleanup()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = context.new_page()
    p.set_default_timeout(30_000)
    try:
        yield p
    finally:
        context.close()


@pytest.fixture
def opened(page, servers, request):
    """Factory: write/copy a notebook into a server's root, open it; cleans up kernels."""
    used: list[tuple[JupyterServer, NotebookPage]] = []
    probes = []

    def open_nb(frontend: str, cells=None, source: Path | None = None, label: str = "") -> NotebookPage:
        srv = servers(frontend)
        name = f"{slug(request.node.name)}.ipynb"
        if source is not None:
            copy_notebook(source, srv.root_dir / name)
        else:
            write_notebook(srv.root_dir / name, cells)
        nb = NotebookPage(page, srv, name, label=label or request.node.name)
        used.append((srv, nb))
        nb.open()
        nb.probes = probes
        return nb

    yield open_nb
    for p in probes:
        p.close()
    for srv, nb in used:
        nb.save_console()
        # Close the page's sessions and kernels so the next test starts clean.
        try:
            for s in srv.sessions():
                srv.api("DELETE", f"/api/sessions/{s['id']}", timeout=20)
        except Exception:  # noqa: BLE001
            pass
        srv.shutdown_kernels()
