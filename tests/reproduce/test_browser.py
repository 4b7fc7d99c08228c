"""Render the quick report in headless Chromium: every image must load."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "") if p and Path(p).exists()), None)

# Appended to a copy of index.html: once everything has loaded, write the image check into the DOM.
CHECK_SCRIPT = """
<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter(img => !(img.complete && img.naturalWidth > 0));
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = `IMAGES total=${images.length} broken=${broken.length}`;
  document.body.appendChild(out);
});
</script>
"""


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y chromium)")
def test_report_renders_with_every_image_loaded(quick_report, tmp_path):
    html = (quick_report["out"] / "index.html").read_text()
    page = tmp_path / "check.html"
    page.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", page.as_uri(), profile=tmp_path / "profile1")
    match = re.search(r"IMAGES total=(\d+) broken=(\d+)", dom.stdout)
    assert match, dom.stderr[-2000:]
    total, broken = int(match.group(1)), int(match.group(2))
    n_figures = sum(len(e["figures"]) for e in quick_report["document"]["experiments"])
    assert (total, broken) == (n_figures, 0)

    screenshot = tmp_path / "report.png"
    _chromium(f"--screenshot={screenshot}", "--window-size=1280,2000", (quick_report["out"] / "index.html").as_uri(),
              profile=tmp_path / "profile2")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
