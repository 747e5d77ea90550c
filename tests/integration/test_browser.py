"""A person in a browser: log in to the hub, get JupyterLab, run a cell, see its file over SSH."""

from __future__ import annotations

import json
import re
import time

import pytest

from .conftest import SHOTS, ssh_client, ssh_run

pytestmark = [pytest.mark.host, pytest.mark.browser]


def open_lab(page, hub_url: str, name: str, password: str, stack: str | None = None) -> None:
    """Log in through the form; on the spawn form pick `stack` (or keep the default)."""
    page.goto(f"{hub_url}/hub/login", timeout=60_000)
    page.fill("#username_input", name)
    page.fill("#password_input", password)
    page.click("#login_submit")
    page.wait_for_url(re.compile(rf"/(hub/spawn|user/{name}/lab)"), timeout=60_000)
    if "/hub/spawn" in page.url and page.locator("#spawn_form").count():
        if stack:
            page.check(f"label[data-stack='{stack}'] input[type=radio]")
        page.click("#spawn_form [type=submit]")
    page.wait_for_url(f"**/user/{name}/lab**", timeout=180_000)
    page.wait_for_selector(".jp-LauncherCard", timeout=120_000)


def run_first_cell(page, code: str) -> str:
    """Open a new notebook, run `code` in its first cell, return the cell's output text."""
    page.click(".jp-LauncherCard[data-category='Notebook']")
    cell = page.locator(".jp-Notebook .jp-Cell").first
    cell.locator(".cm-content").wait_for(timeout=60_000)
    # The kernel is connected once the status bar says so; a cell run before that can
    # be dropped by JupyterLab, so wait for it rather than for the notebook widget.
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
    cell.locator(".cm-content").click()
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")
    cell.locator(".jp-OutputArea-output").wait_for(timeout=60_000)
    return cell.locator(".jp-OutputArea-output").inner_text().strip()


def test_login_jupyterlab_cell_writes_a_file_seen_over_ssh(browser, users, hub_url, cfg):
    name, password = users.add("c")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    SHOTS.mkdir(parents=True, exist_ok=True)
    # What goes wrong on the way, as a person's browser console would show it.
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
    page.on(
        "response",
        lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    try:
        open_lab(page, hub_url, name, password)
        page.wait_for_load_state("networkidle")
        assert problems == [], problems
        # A new user is not asked about Jupyter's news feed (the announcements plugin is
        # off in the images), nor told of a newer JupyterLab: nothing pops up.
        toasts = page.locator(".Toastify__toast")
        assert toasts.count() == 0, toasts.all_inner_texts()
        page.screenshot(path=str(SHOTS / "jupyterlab.png"))
        code = "open('workspace/from-browser.txt', 'w').write('written in a cell')"
        out = run_first_cell(page, code)
        assert out == "17"
        page.screenshot(path=str(SHOTS / "cell.png"))
    finally:
        page.screenshot(path=str(SHOTS / "last.png"))
        page.close()
    client = ssh_client(cfg, name, password)
    path = "~/workspace/from-browser.txt"
    try:
        deadline = time.monotonic() + 20
        while True:
            rc, out, _ = ssh_run(client, f"cat {path}; echo; stat -c %U {path}")
            if rc == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        client.close()
    assert rc == 0
    assert out.split("\n")[:2] == ["written in a cell", name]


def test_choosing_the_older_obspy_stack_gives_that_obspy(browser, users, hub_url, cfg, host):
    stack = "seismology-obspy14"
    if stack not in cfg["hub"]["images"]:
        pytest.skip(f"the site config does not offer {stack}")
    images = json.loads(host.file(f"{cfg['paths']['etc']}/images.json").content_string)
    want = images["scirepo_images"]["stacks"][stack]["manifest"]["packages"]["obspy"]
    name, password = users.add("o")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        open_lab(page, hub_url, name, password, stack=stack)
        out = run_first_cell(page, "import obspy; obspy.__version__")
        page.screenshot(path=str(SHOTS / "obspy14.png"))
    finally:
        page.close()
    assert out.strip("'") == want


def test_launcher_does_not_wait_for_the_workspace_save(browser, users, hub_url, cfg):
    """scirepo-lab opens the launcher once the layout is restored. JupyterLab itself opens
    it only after the workspace is saved: with every save held back, only the extension can
    show it. Once saves go through there is one launcher, not two; and a URL that opens a
    document gets that document and no launcher."""
    name, password = users.add("w")
    client = ssh_client(cfg, name, password)
    try:
        rc, _, err = ssh_run(client, "echo 'kept in the workspace' > ~/workspace/notes.txt")
    finally:
        client.close()
    assert rc == 0, err
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    held = []

    def hold(route):
        if route.request.method == "PUT":
            held.append(route)  # answered only at the end of the first part
        else:
            route.continue_()

    page.route(re.compile(r"/lab/api/workspaces/"), hold)
    try:
        open_lab(page, hub_url, name, password)  # the launcher is there, no save is through
        # JupyterLab does save (its debouncer is due now): the hold was real.
        deadline = time.monotonic() + 30
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        assert held, "JupyterLab saved no workspace: the hold proves nothing"
        assert page.locator(".jp-FileBrowser.jp-mod-restoring").count() == 1
        for route in held:
            route.continue_()
        page.unroute(re.compile(r"/lab/api/workspaces/"))
        # Saves go through now. JupyterLab's own check runs as the file browser leaves its
        # restoring state; a second launcher would be there a moment later.
        page.wait_for_selector(".jp-FileBrowser:not(.jp-mod-restoring) .jp-DirListing-item",
                               timeout=60_000)  # fmt: skip
        page.wait_for_timeout(1500)
        assert page.locator(".jp-Launcher").count() == 1
        # A new workspace (no saved layout) at a URL that opens a file: the file, alone.
        page.goto(f"{hub_url}/user/{name}/lab/workspaces/w2/tree/workspace/notes.txt")
        page.get_by_text("kept in the workspace").wait_for(timeout=60_000)
        page.wait_for_selector(".jp-FileBrowser:not(.jp-mod-restoring)", timeout=60_000)
        page.wait_for_timeout(1500)
        assert page.locator(".jp-Launcher").count() == 0
    finally:
        page.screenshot(path=str(SHOTS / "launcher.png"))
        page.close()


def test_settings_a_user_wrote_are_still_checked(browser, users, hub_url, cfg):
    """scirepo-lab leaves a settings schema uncompiled while the user's settings for it are
    empty ({}), where the check cannot fail. What a user does write is checked as before:
    valid settings apply, invalid ones are refused and the defaults stay."""
    name, password = users.add("s")
    folder = "~/.jupyter/lab/user-settings/@jupyterlab/apputils-extension"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        open_lab(page, hub_url, name, password)
        page.wait_for_load_state("networkidle")
        skipped = page.get_attribute("body", "data-scirepo-settings-skipped")
        assert skipped and int(skipped) >= 50, skipped
        assert page.get_attribute("body", "data-jp-theme-name") == "JupyterLab Light"
        for settings, theme in [
            ('{"theme": "JupyterLab Dark"}', "JupyterLab Dark"),
            ('{"theme": "JupyterLab Dark", "theme-scrollbars": "yes"}', "JupyterLab Light"),
        ]:
            client = ssh_client(cfg, name, password)
            try:
                write = f"mkdir -p {folder} && cat > {folder}/themes.jupyterlab-settings"
                rc, _, err = ssh_run(client, f"{write} <<'END'\n{settings}\nEND")
            finally:
                client.close()
            assert rc == 0, err
            page.reload()
            page.wait_for_selector(".jp-LauncherCard", timeout=120_000)
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(1000)
            shown = page.get_attribute("body", "data-jp-theme-name")
            assert shown == theme, f"{settings}: {shown}"
    finally:
        page.screenshot(path=str(SHOTS / "settings.png"))
        page.close()
