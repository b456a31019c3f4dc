"""``stockflow report``: one static HTML page, checked in headless Chromium
(Debian's ``chromium``; .ci/run installs it)."""

# Fixtures are imported by name, so test parameters "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from connectors.lake import Lake
from dataflows.report.page import write_report
from tests.conftest import cli
from tests.fixtures_explore import EXPLORE_SYMBOLS, explore_lake  # noqa: F401

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
)


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "headless Chromium not found: install Debian's chromium "
        "(apt-get install --no-install-recommends chromium); CI installs it in .ci/run"
    )


def browse(page: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    """Load `page` once in headless Chromium (a fresh profile each time)."""
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *mode, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
    )


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to the console (Chromium logs it as INFO:CONSOLE)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append({k: v or "" for k, v in attrs})
        self._in_h2 = tag == "h2"

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.headings.append(data.strip())
            self._in_h2 = False


def parse(dom: str) -> _Images:
    parser = _Images()
    parser.feed(dom)
    return parser


def decode_png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :])))
    image.load()
    return image


def assert_a_real_chart(image: Image.Image, min_width: int = 800) -> None:
    assert image.format == "PNG"
    assert image.width >= min_width and image.height >= 400, image.size
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(np.uint32)
    inked = (pixels < 235).any(axis=1).mean()
    colours = len(np.unique(pixels[:, 0] << 16 | pixels[:, 1] << 8 | pixels[:, 2]))
    assert inked > 0.03 and colours > 50, (inked, colours)


def test_report_renders_in_headless_chromium_with_its_charts_and_no_console_messages(
    explore_lake: Path, tmp_path: Path
) -> None:
    # Arrange
    out = tmp_path / "site" / "report.html"
    made = cli("report", "--lake", str(explore_lake), "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert "5 charts" in made.stdout

    # Act
    dom = browse(out, tmp_path / "profile-dom", "--dump-dom")
    shot_path = tmp_path / "report.png"
    shot = browse(
        out, tmp_path / "profile-shot", f"--screenshot={shot_path}", "--window-size=1280,2400"
    )

    # Assert: every chart is in the rendered DOM, a real image with alt text ...
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = parse(dom.stdout)
    assert len(page.images) == 1 + len(EXPLORE_SYMBOLS)
    for img in page.images:
        assert len(img.get("alt", "")) > 40, img.get("alt")
        assert_a_real_chart(decode_png(img["src"]))
    assert set(EXPLORE_SYMBOLS) <= set(page.headings), page.headings
    # ... the page as Chromium drew it is not blank ...
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert_a_real_chart(Image.open(shot_path), min_width=1280)
    # ... and nothing was written to the console.
    assert console_messages(dom.stderr) == []
    assert console_messages(shot.stderr) == []


def test_console_check_sees_what_a_page_writes_to_the_console(tmp_path: Path) -> None:
    # The check above can fail: a page with a console error is caught.
    page = tmp_path / "broken.html"
    page.write_text('<html><body><script>console.error("chart failed")</script></body></html>')

    loaded = browse(page, tmp_path / "profile", "--dump-dom")

    messages = console_messages(loaded.stderr)
    assert len(messages) == 1 and "chart failed" in messages[0]


def test_report_charts_only_the_symbols_asked_for(explore_lake: Path, tmp_path: Path) -> None:
    out = tmp_path / "ibm.html"

    summary = write_report(Lake(str(explore_lake)), out, symbols=["ibm"], bars=60)

    page = parse(out.read_text())
    assert summary.symbols == ("IBM",) and summary.charts == 2
    assert [h for h in page.headings if h in EXPLORE_SYMBOLS] == ["IBM"]
    assert len(page.images) == 2
    # The KPI table still lists every symbol, with SPY's change to its previous day.
    text = out.read_text()
    for symbol in EXPLORE_SYMBOLS:
        assert f"<td>{symbol}</td>" in text


def test_report_mistakes_end_in_one_clear_line(explore_lake: Path, tmp_path: Path) -> None:
    empty = cli("report", "--lake", str(tmp_path / "nothing"), "--out", str(tmp_path / "r.html"))
    unknown = cli(
        "report", "--lake", str(explore_lake), "--symbol", "NOPE", "--out", str(tmp_path / "r.html")
    )

    assert empty.returncode == 2
    assert empty.stderr.strip().count("\n") == 0
    assert "has no silver/bars_1m yet" in empty.stderr
    assert unknown.returncode == 2
    assert unknown.stderr.strip().count("\n") == 0
    assert "no bars for NOPE" in unknown.stderr
    assert not (tmp_path / "r.html").exists()
