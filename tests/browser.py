"""Opening an HTML file in headless Chromium (Debian's ``chromium``, which .ci/run installs)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--allow-file-access-from-files"]
# Sets the title, once the page has loaded, to how many of its images decoded.
COUNT_IMAGES = (
    "<script>window.addEventListener('load', () => { const all = [...document.images]; "
    "document.title = 'images ' + all.filter(i => i.complete && i.naturalWidth > 0).length + '/' + all.length; });</script>"
)


def chromium() -> str:
    """The browser's path; skips where it is missing, except on CI, where it must be there."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def _run(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"HOME": str(home)}  # the profile and crash dumps stay in the test's folder
    command = [chromium(), *FLAGS, f"--user-data-dir={home / 'profile'}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)


def loaded_images(html: Path, work: Path) -> tuple[int, int]:
    """(images decoded, images on the page) of ``html`` opened in the browser."""
    probe = work / "probe.html"
    probe.write_text(html.read_text(encoding="utf-8").replace("</body>", COUNT_IMAGES + "</body>"), encoding="utf-8")
    done = _run(["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], work)
    match = re.search(r"<title>images (\d+)/(\d+)</title>", done.stdout)
    assert match, f"no image count in the rendered page: {done.stderr[-2000:]}"
    return int(match.group(1)), int(match.group(2))


def screenshot(html: Path, out: Path, width: int = 1200, height: int = 3000) -> Path:
    done = _run([f"--window-size={width},{height}", f"--screenshot={out}", html.as_uri()], out.parent)
    assert out.exists(), f"no screenshot: {done.stderr[-2000:]}"
    return out
