"""The live page in headless Chromium (Debian's `chromium`): it loads without console messages
or page errors, refreshes itself, and after a few calls draws the tasks of both workers and
the memory lines. Skipped where Chromium is not installed."""

from __future__ import annotations

import re
import shutil
import subprocess

import httpx
import pytest

from tests.serve_helpers import ServerProcess, image, png

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install "
                                "chromium)")


def test_the_live_page_shows_the_charts_without_console_errors(zoo_packages, tmp_path):
    repository = zoo_packages(["TinyAlex", "TinyResidual"])
    with ServerProcess([str(repository), "--budget", "64M"], tmp_path) as server:
        server.ready()
        for seed in range(4):
            answer = httpx.post(f"{server.url}/v1/infer",
                                params={"networks": "TinyAlex,TinyResidual"},
                                content=png(image(seed)), headers={"Content-Type": "image/png"},
                                timeout=60)
            assert answer.status_code == 200
        # --virtual-time-budget lets the page's timers run (3 s of page time) before the DOM
        # is dumped; --enable-logging=stderr prints every console message and uncaught error.
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
             "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
             "--dump-dom", f"{server.url}/"],
            capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    dom = done.stdout
    assert re.search(r'<div id="errors">\s*</div>', dom), "the page reported an error"
    refreshed = re.search(r'data-refreshed="(\d+)"', dom)
    assert refreshed and int(refreshed.group(1)) >= 2, "the page did not refresh itself"
    assert re.search(r'id="state">ready<', dom)
    tasks = re.findall(r'<rect [^>]*class="task"', dom)
    assert len(tasks) >= 8, f"{len(tasks)} task bars"
    rows = {round(float(m)) for m in re.findall(r'<rect [^>]*y="([\d.]+)"[^>]*class="task"', dom)}
    assert len(rows) == 2, f"bars in rows {rows}: one row per worker"
    for line in ("ledger", "rss", "queue"):
        assert re.search(rf'class="{line}"', dom), f"no {line} line"
    assert re.search(r'<b id="budget">64\.0 MiB</b>', dom)
