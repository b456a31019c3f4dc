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
import pandas as pd
import pytest
from PIL import Image

from connectors.lake import Lake
from dataflows.report import charts
from dataflows.report.page import DAILY_VOLATILITY_DAYS, load_report_data, write_report
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
    assert "has no bars yet" in empty.stderr
    assert unknown.returncode == 2
    assert unknown.stderr.strip().count("\n") == 0
    assert "no bars for NOPE" in unknown.stderr
    assert not (tmp_path / "r.html").exists()


# --- a lake filled by a daily backfill ---------------------------------------------------

DAILY_START = "2020-01-01"
SMA_200 = (0x37, 0x47, 0x4F)  # charts.OVERLAYS' colour of SMA 200


@pytest.fixture(scope="module")
def daily_lake(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SPY's daily bars since 2020 backfilled into a lake (only ``1d`` tables)."""
    lake = tmp_path_factory.mktemp("daily") / "lake"
    done = cli(
        "backfill",
        "--source",
        str(real_data / "daily" / "SPY.csv.gz"),
        "--start",
        DAILY_START,
        "--lake",
        str(lake),
    )
    assert done.returncode == 0, done.stderr
    return lake


@pytest.fixture(scope="module")
def spy_daily(real_data: Path) -> pd.DataFrame:
    """The daily file as pandas reads it, from DAILY_START on."""
    frame = pd.read_csv(real_data / "daily" / "SPY.csv.gz")
    return frame[frame["date"] >= DAILY_START].reset_index(drop=True)


def near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 10) -> int:
    """Pixels of `image` within `tolerance` of `colour` on every channel."""
    pixels = np.asarray(image.convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(colour)) <= tolerance).all(axis=2).sum())


def test_report_of_a_daily_backfill_charts_its_daily_bars_in_headless_chromium(
    daily_lake: Path, spy_daily: pd.DataFrame, tmp_path: Path
) -> None:
    out = tmp_path / "daily.html"

    made = cli("report", "--lake", str(daily_lake), "--resolution", "1d", "--out", str(out))
    dom = browse(out, tmp_path / "profile", "--dump-dom")

    assert made.returncode == 0, made.stderr
    assert "2 charts, symbols SPY" in made.stdout
    assert dom.returncode == 0 and console_messages(dom.stderr) == []
    page = parse(dom.stdout)
    assert len(page.images) == 2 and "SPY" in page.headings
    for img in page.images:
        assert_a_real_chart(decode_png(img["src"]))
    # The SMA 200 line is drawn: it has values for the last 115 of the 300 bars
    # charted (~250 pixels of its colour; a chart without it, legend entry
    # included, has none).
    chart = decode_png(page.images[1]["src"])
    assert near(chart, SMA_200) > 100, near(chart, SMA_200)
    assert "SMA 20/50/200" in page.images[1]["alt"] and "volume" in page.images[1]["alt"]
    # The KPI table: the last close and the one before, from the file itself.
    last, previous = spy_daily["close"].iloc[-1], spy_daily["close"].iloc[-2]
    assert f"<td>{last:,.2f}</td><td>{previous:,.2f}</td>" in dom.stdout


def test_daily_report_figures_equal_pandas_on_the_daily_file(
    daily_lake: Path, spy_daily: pd.DataFrame
) -> None:
    data = load_report_data(Lake(str(daily_lake)), ["SPY"], "1d", bars=300)
    fig = charts.technical_chart(data.series["SPY"], data.signals.get("SPY"), "SPY")

    # Volatility over the latest 20 daily closes (pandas: sample std / mean).
    closes = spy_daily["close"].tail(DAILY_VOLATILITY_DAYS)
    row = data.volatility.set_index("symbol").loc["SPY"]
    assert row["price_std_pct"] == pytest.approx(100 * closes.std() / closes.mean(), rel=1e-12)
    assert row["volume"] == spy_daily["volume"].tail(DAILY_VOLATILITY_DAYS).sum()
    # The chart: SMA 200 on the price panel, volume in a panel of its own.
    price, volume = fig.axes[0], fig.axes[1]
    (sma_200,) = [line for line in price.get_lines() if line.get_label() == "SMA 200"]
    expected = spy_daily["close"].rolling(200).mean().tail(300).to_numpy()
    np.testing.assert_allclose(np.asarray(sma_200.get_ydata(), float), expected, rtol=1e-9)
    assert volume.get_ylabel() == "volume"
    heights = [bar.get_height() for bar in volume.patches]  # type: ignore[attr-defined]
    assert heights == spy_daily["volume"].tail(300).astype(float).tolist()


def test_report_at_a_resolution_the_lake_lacks_names_the_ones_it_has(
    daily_lake: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.html"

    result = cli("report", "--lake", str(daily_lake), "--out", str(out))  # default 1m

    assert result.returncode == 2 and not out.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stockflow: error: "), result.stderr
    assert "has no 1m bars" in lines[0] and "it has 1d: use --resolution 1d" in lines[0]
