"""The docs site: it builds with ``mkdocs build --strict``, holds every generated reference, loads
nothing from another host, and every page opens in headless Chromium with no console error and no
broken internal link or image.

The site is built once per run into a temporary directory (never into the checkout). The browser
tests need Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them where missing);
without them they skip, saying so. The page is served by a local ``http.server`` on 127.0.0.1, and
Chromium resolves no other host name, so a request to anywhere else fails and shows as an error too.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest

import kvmap
from kvmap import cli

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_BROWSER = Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()

#: Attributes that make a browser load something (not <a href>, which it only links to).
LOADING = {
    "script": ("src",),
    "link": ("href",),
    "img": ("src", "srcset"),
    "iframe": ("src",),
    "source": ("src", "srcset"),
    "video": ("src", "poster"),
    "audio": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "track": ("src",),
    "image": ("href", "xlink:href"),
    "use": ("href", "xlink:href"),
}


class _Refs(HTMLParser):
    """The ids, the links (``<a href>``) and the loaded resources of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.loads: list[tuple[str, str]] = []  # (tag, URL)
        self.styles: list[str] = []  # inline style attributes and <style> text
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v for k, v in attrs if v is not None}
        if "id" in values:
            self.ids.add(values["id"])
        if "name" in values and tag == "a":
            self.ids.add(values["name"])
        if tag == "a" and "href" in values:
            self.links.append(values["href"])
        for attr in LOADING.get(tag, ()):
            if attr in values:
                for part in values[attr].split(","):  # srcset: "URL 1x, URL 2x"
                    if part.strip():
                        self.loads.append((tag, part.split()[0]))
        if "style" in values:
            self.styles.append(values["style"])
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def _parse(page: Path) -> _Refs:
    refs = _Refs()
    refs.feed(page.read_text(encoding="utf-8"))
    return refs


def _external(url: str) -> bool:
    """Whether ``url`` (as written in a page) would be fetched from another host."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "javascript", "mailto"):
        return False
    return bool(parts.netloc) or parts.scheme not in ("", "http", "https")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built by ``mkdocs build --strict`` into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert "WARNING" not in done.stderr, done.stderr
    return out


def _pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def test_every_nav_page_is_built(site: Path) -> None:
    for name in [
        "getting-started",
        "concepts",
        "compose",
        "howto-patch",
        "howto-redirect",
        "howto-kerchunk",
        "howto-huge",
        "howto-dask",
        "howto-allow",
        "cli",
        "api",
        "spec",
        "benchmarks",
        "benchmark-notes",
        "guide",
        "reliability",
    ]:
        assert (site / name / "index.html").is_file(), name
    assert (site / "index.html").is_file()


def test_the_cli_reference_has_every_command_and_option(site: Path) -> None:
    page = (site / "cli" / "index.html").read_text(encoding="utf-8")
    parser = cli._parser()
    (commands,) = (a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert len(commands.choices) >= 8
    for name, sub in commands.choices.items():
        assert f'id="kvmap-{name}"' in page, name
        for action in sub._actions:
            for option in action.option_strings:
                assert (
                    f"<code>{option}" in page
                    or f"<code>{option.replace('-', '&#45;')}" in page
                    or (f"{option}" in page)
                ), (name, option)


def test_the_api_reference_has_everything_kvmap_exports(site: Path) -> None:
    page = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in kvmap.__all__:
        obj = getattr(kvmap, name)
        assert f'id="{obj.__module__}.{obj.__qualname__}"' in page, name
    assert "kvmap.errors.ManifestError" in page
    # The docstrings' reST became Markdown: doctests are code blocks, roles are code, not text.
    assert ":class:`" not in page
    assert ":func:`" not in page
    assert ":meth:`" not in page
    assert "&gt;&gt;&gt;" in page
    assert "<blockquote>" not in page


def test_the_spec_and_benchmark_notes_are_the_repository_files(site: Path) -> None:
    spec = (site / "spec" / "index.html").read_text(encoding="utf-8")
    assert 'id="115-security-policy"' in spec
    assert "kvmap manifest format, version 1" in spec
    assert "<code>spec/conformance/</code> in the repository" in spec  # a link the site cannot follow
    notes = (site / "benchmark-notes" / "index.html").read_text(encoding="utf-8")
    assert "kvmap benchmarks" in notes
    assert "bench_store.py" in notes


def test_the_site_loads_nothing_from_another_host(site: Path) -> None:
    fonts = [p for pattern in ("*.woff", "*.woff2", "*.ttf", "*.otf", "*.eot") for p in site.rglob(pattern)]
    assert not fonts, fonts
    found = []
    for page in _pages(site):
        refs = _parse(page)
        found += [(page.relative_to(site), tag, url) for tag, url in refs.loads if _external(url)]
        found += [(page.relative_to(site), "style", s) for s in refs.styles if "url(" in s and "//" in s]
    for css in site.rglob("*.css"):
        text = css.read_text(encoding="utf-8")
        found += [
            (css.relative_to(site), "css", m)
            for m in ("@import", "url(http", "url(//", "url('http", 'url("http')
            if m in text
        ]
    assert not found, found
    for page in _pages(site):  # and the pages ask for no web fonts
        assert "fonts.googleapis.com" not in page.read_text(encoding="utf-8"), page


def test_every_internal_link_and_image_resolves_to_a_built_file(site: Path) -> None:
    ids: dict[Path, set[str]] = {}
    broken = []
    for page in _pages(site):
        refs = _parse(page)
        base = "http://site/" + page.relative_to(site).as_posix()
        for kind, url in [("link", u) for u in refs.links] + [(tag, u) for tag, u in refs.loads]:
            if _external(url) or url.startswith(("data:", "mailto:", "javascript:")):
                continue
            parts = urlsplit(urljoin(base, url))
            target = site / unquote(parts.path).lstrip("/")
            if parts.path.endswith("/") or target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append((page.relative_to(site), kind, url))
            elif parts.fragment and target.suffix == ".html" and kind == "link":
                if target not in ids:
                    ids[target] = _parse(target).ids
                if unquote(parts.fragment) not in ids[target]:
                    broken.append((page.relative_to(site), "anchor", url))
    assert not broken, broken


# -- in the browser -------------------------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if not HAVE_BROWSER:
        pytest.skip(f"no Chromium here ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in [
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no other host resolves
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        "--window-size=1280,900",
    ]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


_BROKEN_IMAGES = """
return Array.from(document.images)
    .filter(i => !i.complete || i.naturalWidth === 0)
    .map(i => i.currentSrc || i.src);
"""


def _fetched_elsewhere(url: str, served: str) -> bool:
    """Whether a request the browser made for a page went over the network to another place
    (``chrome://`` and the like are the browser's own, and the start page's)."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https", "ws", "wss", "ftp") and not url.startswith(served)


def _open(driver: object, url: str) -> None:
    """Open ``url`` and wait until it has loaded (the wait is for the event; its bound only stops a hang)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)  # type: ignore[attr-defined]
    WebDriverWait(driver, 120).until(lambda d: d.execute_script("return document.readyState") == "complete")  # type: ignore[no-untyped-call]


def _requests(driver: object) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):  # type: ignore[attr-defined]
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_every_page_loads_in_chromium_without_errors(site: Path, served: str, browser: object) -> None:
    driver = browser
    pages = [p.relative_to(site).as_posix() for p in _pages(site)]
    assert len(pages) >= 20
    errors, images, outside = [], [], []
    driver.get_log("performance")  # type: ignore[attr-defined]  # the start page's
    for page in pages:
        url = served + page.removesuffix("index.html")
        _open(driver, url)
        images += [(page, src) for src in driver.execute_script(_BROKEN_IMAGES)]  # type: ignore[attr-defined]
        for entry in driver.get_log("browser"):  # type: ignore[attr-defined]
            if entry["level"] in ("SEVERE", "ERROR", "WARNING"):
                errors.append((page, entry["level"], entry["message"]))
        outside += [(page, u) for u in _requests(driver) if _fetched_elsewhere(u, served)]
    assert not errors, errors
    assert not images, images
    assert not outside, outside


def test_the_browser_check_sees_errors(site: Path, served: str, browser: object, tmp_path: Path) -> None:
    """The page test would fail: a page with a broken image and an external script shows both."""
    bad = site / "broken-on-purpose.html"
    bad.write_text(
        '<html><body><img src="missing.svg"><script src="https://cdn.example.com/x.js"></script></body></html>',
        encoding="utf-8",
    )
    try:
        driver = browser
        _open(driver, served + "broken-on-purpose.html")
        assert driver.execute_script(_BROKEN_IMAGES)  # type: ignore[attr-defined]
        messages = [e["message"] for e in driver.get_log("browser")]  # type: ignore[attr-defined]
        assert any("missing.svg" in m for m in messages), messages
        assert any("cdn.example.com" in u for u in _requests(driver)), "the external request is not seen"
    finally:
        bad.unlink()


# -- the benchmark plots --------------------------------------------------------------------------


def _plots() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_plots", ROOT / "bench" / "plots.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_committed_plots_are_what_plots_py_makes_of_the_committed_results(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "plots.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    made = sorted(p.name for p in tmp_path.glob("*.svg"))
    assert made == ["bench-load-memory.svg", "bench-ratios.svg", "bench-store.svg"]
    for name in made:
        committed = ROOT / "docs" / "assets" / name
        assert committed.read_bytes() == (tmp_path / name).read_bytes(), f"{committed}: run python bench/plots.py"
        svg = committed.read_text(encoding="utf-8")
        assert 'href="http' not in svg, name  # no external resource
        assert "url(http" not in svg, name


def test_the_benchmarks_page_says_which_command_made_each_result() -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    results = sorted((ROOT / "bench" / "results").glob("*.txt"))
    assert len(results) >= 5
    for path in results:
        command = path.read_text(encoding="utf-8").splitlines()[0].removeprefix("$ ")
        assert f"`{command}`" in page, (path.name, command)
    for name in ["bench-ratios.svg", "bench-store.svg", "bench-load-memory.svg"]:
        assert f"(assets/{name})" in page


def test_plots_parses_the_benchmark_tables() -> None:
    plots = _plots()
    text = (ROOT / "bench" / "results" / "bench_store.txt").read_text(encoding="utf-8")
    result = plots.parse(text, "bench_store.txt")  # type: ignore[attr-defined]
    assert result.command == "python bench/bench_store.py --quick"
    assert [t.unit for t in result.tables] == ["us/chunk", "us/chunk"]
    row = result.tables[0].rows[0]
    assert row.case == "windows, whole array: vs ObjectStore (dir)"
    assert abs(row.kvmap / row.baseline - row.ratio) < 0.01  # the medians, not the spreads
    labels = [label for label, _ in plots.peer_rows(result.tables[0])]  # type: ignore[attr-defined]
    assert "overhead, no-op I/O: redirect vs windows (kvmap)" not in labels  # kvmap against itself
    with pytest.raises(ValueError, match="first two lines"):
        plots.parse("== t ==\n", "x.txt")  # type: ignore[attr-defined]
