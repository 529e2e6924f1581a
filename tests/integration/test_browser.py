"""The web page in a real browser (Debian's chromium, driven by Playwright) against a real stack.

Triton, Redis, one worker and a gateway process with its HTTP port, started the way the other
integration tests start them, and a second gateway beside it with bearer tokens on, for the page's token
field. Each step writes a screenshot to the test's tmp dir (`web-*.png`).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.launch import gateway as launch_gateway
from service.launch.gateway import GatewayProcess
from service.launch.process import ManagedProcess, free_port
from service.launch.triton import TritonServer
from tests.integration.conftest import REPO, spawn_worker, wait_joined

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT_MS = 120_000  # a CPU colorize or a 10-iteration DIP on a shared 2-core machine


TOKEN = "web-token-0123456789abcdef"


@dataclass
class WebStack:
    base: str
    gateway: GatewayProcess
    worker: ManagedProcess
    auth_base: str  # the same stack through a gateway that wants TOKEN


@pytest.fixture(scope="module")
def web_stack(
    triton_server: TritonServer, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebStack]:
    tmp = tmp_path_factory.mktemp("web")
    worker = wait_joined(redis_server.url, spawn_worker(redis_server.url, tmp, "web"))
    http_port = free_port()
    settings = {
        "triton_url": triton_server.grpc_url,
        "triton_shared_memory": "1",
        "health_poll_s": "0.2",
        "redis_url": redis_server.url,
        "http_port": str(http_port),
    }
    tokens = tmp / "tokens"
    tokens.write_text(f"web {TOKEN}\n")
    tokens.chmod(0o600)
    auth_settings = {**settings, "http_port": str(free_port()), "auth_tokens_file": str(tokens)}
    started: list[GatewayProcess] = []
    try:
        started.append(launch_gateway.start_gateway(settings, tmp, name="web-gateway", cwd=REPO))
        started.append(launch_gateway.start_gateway(auth_settings, tmp, name="web-auth-gateway", cwd=REPO))
    except BaseException:
        for gateway in started:
            gateway.stop()
        worker.stop()
        raise
    gateway, auth_gateway = started
    yield WebStack(f"http://127.0.0.1:{http_port}", gateway, worker, auth_gateway.http_url or "")
    auth_gateway.stop()
    gateway.stop()
    worker.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.fail("chromium is not installed: `make test` installs it (Makefile APT_PACKAGES)")
    with playwright_api.sync_playwright() as p:
        # --no-sandbox: the test may run as root (CI containers), where chromium's sandbox refuses.
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def console() -> list[str]:
    """The page's console errors: script errors, CSP violations, failed loads."""
    return []


@contextlib.contextmanager
def opened_page(browser: Any, url: str, console: list[str]) -> Iterator[Any]:
    # The page runs under its real Content-Security-Policy, so the test, too, reads the page through
    # the DOM (locators, evaluate) and never asks the page to eval a string (wait_for_function).
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    opened.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda e: console.append(str(e)))
    opened.goto(url)
    yield opened
    context.close()
    # No script error and no Content-Security-Policy violation (reported as console errors).
    assert not console, console


@pytest.fixture
def page(browser: Any, web_stack: WebStack, console: list[str]) -> Iterator[Any]:
    with opened_page(browser, web_stack.base + "/", console) as opened:
        yield opened


@pytest.fixture
def auth_page(browser: Any, web_stack: WebStack, console: list[str]) -> Iterator[Any]:
    with opened_page(browser, web_stack.auth_base + "/", console) as opened:
        yield opened


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def number(page: Any, selector: str, prop: str = "value") -> float:
    return float(page.eval_on_selector(selector, f"e => Number(e.{prop})"))


def shot(page: Any, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"web-{name}.png"), full_page=True)


def result_version(page: Any) -> int:
    return int(page.get_attribute("#result-img", "data-version") or 0)


def wait_result(page: Any, version: int) -> None:
    wait_until(lambda: result_version(page) >= version, f"result {version}")
    assert "error" not in (page.get_attribute("#colorize-status", "class") or ""), page.inner_text(
        "#colorize-status"
    )


def result_rgb(page: Any, x: int, y: int) -> tuple[float, float, float]:
    """The mean colour of the result's 5x5 pixels around (x, y), read back from the page."""
    mean = page.evaluate(
        """([x, y]) => {
            const img = document.getElementById('result-img');
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const context = canvas.getContext('2d');
            context.drawImage(img, 0, 0);
            const data = context.getImageData(x - 2, y - 2, 5, 5).data;
            const sum = [0, 0, 0];
            for (let i = 0; i < data.length; i += 4) for (let c = 0; c < 3; c++) sum[c] += data[i + c];
            return sum.map((s) => s / 25);
        }""",
        [x, y],
    )
    return (mean[0], mean[1], mean[2])


def distance(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return float(sum((p - q) ** 2 for p, q in zip(a, b, strict=True)) ** 0.5)


def rgb_of(color: str) -> tuple[float, float, float]:
    return (int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16))


def test_colorize_suggest_and_hint(page: Any, samples: Path, tmp_path: Path) -> None:
    page.set_input_files("#colorize-file", str(samples / "aitzgorri.jpg"))
    wait_result(page, 1)
    assert page.eval_on_selector("#result-img", "i => [i.naturalWidth, i.naturalHeight]") == [900, 599]
    assert "checkpoint" in page.inner_text("#result-caption")
    shot(page, tmp_path, "1-colorized")

    page.select_option("#model", "siggraph17")  # the hint model; the result is redrawn with it
    wait_result(page, 2)

    box = page.locator("#input-img").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.30, box["y"] + box["height"] * 0.80)
    swatches = page.locator("#swatches .swatch")
    swatches.first.wait_for()
    assert swatches.count() == 5  # k, the page's default
    x, y = (int(v) for v in re.findall(r"\d+", page.inner_text("#picker-title"))[:2])
    assert 0 < x < 900 and 0 < y < 599
    shot(page, tmp_path, "2-suggestions")

    before = result_rgb(page, x, y)
    colors = [swatches.nth(i).get_attribute("data-color") or "" for i in range(swatches.count())]
    target = max(colors, key=lambda c: distance(rgb_of(c), before))  # the clearest change to see
    swatches.nth(colors.index(target)).click()
    wait_result(page, 3)
    after = result_rgb(page, x, y)
    assert page.locator("#hint-layer .hint").count() == 1
    assert distance(after, rgb_of(target)) < distance(before, rgb_of(target)) - 5, (before, after, target)
    shot(page, tmp_path, "3-hinted")

    # Move the hint: drag its marker; the result is recomputed.
    marker = page.locator("#hint-layer .hint").bounding_box()
    page.mouse.move(marker["x"] + 9, marker["y"] + 9)
    page.mouse.down()
    page.mouse.move(marker["x"] + 60, marker["y"] - 40, steps=5)
    page.mouse.up()
    wait_result(page, 4)
    assert page.inner_text("#colorize-status").startswith("1 hint(s)")

    # Delete it: click the marker, then "delete hint".
    marker = page.locator("#hint-layer .hint").bounding_box()
    page.mouse.click(marker["x"] + 9, marker["y"] + 9)
    page.click("#picker-delete")
    wait_result(page, 5)
    assert page.locator("#hint-layer .hint").count() == 0
    assert page.get_attribute("#download", "href", timeout=1000)


def test_a_bad_photo_shows_the_servers_message(page: Any, console: list[str], tmp_path: Path) -> None:
    bad = tmp_path / "not-a-photo.png"
    bad.write_bytes(b"this is not an image")
    page.set_input_files("#colorize-file", str(bad))
    page.wait_for_selector("#colorize-status.error")
    assert "image is not a valid file" in page.inner_text("#colorize-status")
    assert "INVALID_ARGUMENT" in page.inner_text("#colorize-status")
    assert console == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    console.clear()


def test_restore_with_a_painted_mask_and_live_progress(page: Any, samples: Path, tmp_path: Path) -> None:
    page.set_input_files("#restore-file", str(samples / "aitzgorri_96.png"))
    page.select_option("#restore-task", "inpaint")
    wait_until(lambda: number(page, "#mask-canvas", "width") == 96, "the mask canvas")
    canvas = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(canvas["x"] + canvas["width"] * 0.2, canvas["y"] + canvas["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(canvas["x"] + canvas["width"] * 0.8, canvas["y"] + canvas["height"] * 0.55, steps=8)
    page.mouse.up()
    page.fill("#restore-iterations", "10")
    page.click("#restore-submit")
    wait_until(lambda: number(page, "#restore-progress") >= 100, "the progress bar at 100 %")
    page.wait_for_selector("#compare-figure:not([hidden])")
    assert "done: 10 iterations" in page.inner_text("#restore-progress-text")
    assert "done in" in page.inner_text("#restore-status")
    assert page.get_attribute("#restore-preview-img", "src", timeout=1000), "no live preview arrived"
    page.fill("#compare-slider", "30")
    shot(page, tmp_path, "4-restored")


def test_cancel_a_running_restore(page: Any, samples: Path, tmp_path: Path) -> None:
    page.set_input_files("#restore-file", str(samples / "aitzgorri_96.png"))
    page.select_option("#restore-task", "denoise")
    page.fill("#restore-iterations", "5000")
    page.click("#restore-submit")
    wait_until(lambda: number(page, "#restore-progress") > 0, "progress")
    assert re.search(r"iteration \d+/5000", page.inner_text("#restore-progress-text"))
    page.click("#restore-cancel")
    page.wait_for_selector("#restore-status.error")
    assert "CANCELLED" in page.inner_text("#restore-status")
    assert "was cancelled" in page.inner_text("#restore-status")
    shot(page, tmp_path, "5-cancelled")


def test_with_tokens_the_page_shows_the_401_and_sends_the_token(
    auth_page: Any, console: list[str], samples: Path, tmp_path: Path
) -> None:
    page = auth_page
    # The page itself is public; its first API call (the model list) is refused with the server's message.
    page.wait_for_selector("#colorize-status.error")
    refused = page.inner_text("#colorize-status")
    assert "Bearer <token>" in refused and "UNAUTHENTICATED, HTTP 401" in refused, refused
    assert "needed" in (page.get_attribute("#token", "class") or "")
    shot(page, tmp_path, "6-token-wanted")
    assert console == ["Failed to load resource: the server responded with a status of 401 (Unauthorized)"]
    console.clear()

    page.fill("#token", TOKEN)
    page.press("#token", "Tab")  # "change": stored for this tab, and the models are asked for again
    wait_until(lambda: page.locator("#model option").count() == 3, "the model list")
    assert page.evaluate("() => sessionStorage.getItem('priorlab.token')") == TOKEN
    assert TOKEN not in page.url

    page.set_input_files("#colorize-file", str(samples / "aitzgorri_96.png"))
    wait_result(page, 1)

    # Restore: the submit, and the event stream read with fetch (EventSource could not send the token).
    page.set_input_files("#restore-file", str(samples / "aitzgorri_96.png"))
    page.select_option("#restore-task", "denoise")
    page.fill("#restore-iterations", "10")
    page.click("#restore-submit")
    wait_until(lambda: number(page, "#restore-progress") >= 100, "the progress bar at 100 %")
    page.wait_for_selector("#compare-figure:not([hidden])")
    assert "done in" in page.inner_text("#restore-status")
    shot(page, tmp_path, "7-with-token")


def test_a_dropped_event_stream_is_resumed_where_it_stopped(page: Any, samples: Path, tmp_path: Path) -> None:
    """The page reads the stream with fetch, so it reconnects itself (EventSource did): after the cut,
    again with Last-Event-ID, and the server sends only what came after."""
    asked: list[str | None] = []

    def cut_the_first(route: Any) -> None:
        asked.append(route.request.headers.get("last-event-id"))
        if len(asked) > 1:
            route.continue_()
            return
        # One event, then the connection ends, as a proxy that cut the stream would leave it.
        queued = 'id: 1\nevent: queued\ndata: {"queued": {"position": 7, "queue_length": 7}}\n\n'
        route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"}, body="retry: 100\n\n" + queued
        )

    page.route(re.compile(r"/v1/restore/\w+/events$"), cut_the_first)
    page.set_input_files("#restore-file", str(samples / "aitzgorri_96.png"))
    page.select_option("#restore-task", "denoise")
    page.fill("#restore-iterations", "10")
    page.click("#restore-submit")
    wait_until(lambda: number(page, "#restore-progress") >= 100, "the progress bar at 100 %")
    page.wait_for_selector("#compare-figure:not([hidden])")
    assert "done in" in page.inner_text("#restore-status")
    assert asked == [None, "1"]
