"""The status page at `/`: fetched and parsed, and rendered by headless Chromium, with hostile names and captions."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from conftest import add_fixture
from emulator import OllamaEmulator
from test_watch import Daemon, config_for, sidecar_caption, start_daemon, wait_for

pytestmark = pytest.mark.subprocess  # every test here starts `python -m captiond`

__all__ = ["start_daemon"]  # the fixture, used by name

HOSTILE_NAMES = ['<script>alert("name")</script>.jpg', "Tom & Jerry's \"best\" <b>.png", "x onerror=alert(1) '.jpg"]
HOSTILE_CAPTION = '<img src=x onerror="alert(1)"> Tom & Jerry <b>chase</b> a \'cat\' </td></table><script>x()</script>.'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page(HTMLParser):
    """Collects the page's elements, attributes and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(body: str) -> Page:
    page = Page()
    page.feed(body)
    page.close()
    return page


@pytest.fixture
def served(tmp_path: Path, originals: Path, emulator: OllamaEmulator,
           start_daemon: Callable[..., Daemon]) -> Any:
    photos = [add_fixture(originals, "Canon_PowerShot_S40.jpg", name) if name.endswith(".jpg")
              else add_fixture(originals, "PNG_plain.png", name) for name in HOSTILE_NAMES]
    (originals / "broken <i>.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    emulator.reply = lambda body: HOSTILE_CAPTION
    daemon = start_daemon(config_for(tmp_path, emulator.url, Listen="127.0.0.1:0"), originals)
    assert wait_for(lambda: "serving /healthz" in daemon.log()), daemon.log()
    match = re.search(r"serving /healthz and /metrics on (http://\S+)", daemon.log())
    assert match is not None
    assert wait_for(lambda: all(sidecar_caption(photo) for photo in photos) and "failed broken" in daemon.log(),
                    timeout=30), daemon.log()
    yield match.group(1), photos
    assert daemon.stop() == 0


def test_the_page_shows_counts_captions_thumbnails_and_failures_all_escaped(served: Any) -> None:
    address, photos = served
    response = httpx.get(f"{address}/", timeout=20)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "script-src" not in response.headers["content-security-policy"]  # default-src 'none': no scripts
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = parse(response.text)
    tags = [tag for tag, _ in page.tags]
    assert "script" not in tags and "b" not in tags and "i" not in tags
    assert not [attributes for _, attributes in page.tags if any(name.startswith("on") for name in attributes)]
    text = " ".join(page.text)
    caption = sidecar_caption(photos[0])
    assert caption == HOSTILE_CAPTION.strip() or caption in text
    assert text.count(caption) == len(photos)
    for name in HOSTILE_NAMES:
        assert name in text
    assert "broken <i>.jpg" in text and "failed" in text
    assert "3 done, 0 queued, 1 failed" in text
    images = [attributes for tag, attributes in page.tags if tag == "img"]
    assert len(images) == len(photos)
    assert all(str(attributes["src"]).startswith("data:image/jpeg;base64,") for attributes in images)
    assert "shows your photos to whoever can reach this address" in text


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_chromium_renders_the_page(served: Any, tmp_path: Path) -> None:
    address, _ = served
    flags = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'chromium'}"]
    screenshot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={screenshot}", "--window-size=1200,1400", f"{address}/"],
                   capture_output=True, timeout=180, check=False)
    assert screenshot.exists(), "chromium wrote no screenshot"
    with Image.open(screenshot) as image:
        assert image.size == (1200, 1400)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # text, tables and thumbnails, not a blank page
    dom = subprocess.run([*flags, "--dump-dom", f"{address}/"], capture_output=True, text=True, timeout=180,
                         check=False).stdout
    rendered = parse(dom)
    assert "script" not in [tag for tag, _ in rendered.tags]
    assert HOSTILE_NAMES[0] in " ".join(rendered.text)
