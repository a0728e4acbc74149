"""The dashboard in a real headless Chromium (Debian's, driven by Playwright): watch, load, stream,
unload, see a crash. Screenshots of the main states go to ``test-artifacts/dashboard/`` (not committed)."""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Server, Servers, start_server

SHOTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("chromium is missing in CI: ./dev.sh test installs it (apt-get install chromium)")
    pytest.skip("chromium is not installed (./dev.sh test installs it when run as root)", allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def srv(module_servers: Servers) -> Server:
    return module_servers.start("--nomodel", "--memory-budget", "200M", "--no-warm-spare", "--loadwait", "2",
                                models={"alpha": 512, "beta": 768})


@pytest.fixture(scope="module")
def browser() -> Iterator:  # type: ignore[type-arg]
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, srv: Server) -> Iterator[Page]:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(srv.url + "/")
    expect(pg.locator("#conn")).to_have_text("live")
    yield pg
    context.close()
    assert errors == []


def card(page: Page, name: str):  # type: ignore[no-untyped-def]
    return page.locator(f'article.card[data-model="{name}"]')


def test_watch_load_stream_unload(page: Page, srv: Server) -> None:
    expect(card(page, "alpha").locator('[data-role="state"]')).to_have_text("unloaded")
    expect(page.locator("#budget-text")).to_contain_text("budget 200 MiB")
    page.screenshot(path=str(SHOTS / "1-catalog.png"))

    page.get_by_role("button", name="Load alpha", exact=True).click()
    state = card(page, "alpha").locator('[data-role="state"]')
    expect(state).to_have_text("ready", timeout=30_000)
    expect(card(page, "alpha").locator('[data-role="handle"]')).to_have_text("alpha@1")
    # The measured PSS (~135 MiB alone; less while another process maps the same GGUF and shares its pages).
    expect(card(page, "alpha").locator('[data-role="memory"]')).to_contain_text(re.compile(r"measured \d+ MiB"),
                                                                               timeout=15_000)
    expect(card(page, "alpha").locator('[data-role="keep"]')).to_contain_text("unloads in")
    page.screenshot(path=str(SHOTS / "2-loaded.png"))

    page.select_option("#play-model", "alpha")
    page.fill("#play-prompt", "Once upon a time")
    page.fill("#play-max", "24")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#play-stats")).to_contain_text("24 tokens", timeout=30_000)
    expect(page.locator("#play-stats")).to_contain_text("tokens/s")
    assert len(page.locator("#play-output").inner_text()) > 20
    page.screenshot(path=str(SHOTS / "3-playground.png"))

    page.get_by_role("button", name="Unload alpha", exact=True).click()
    expect(state).to_have_text("unloaded", timeout=20_000)
    assert srv.pool()["reserved"] == 0


def test_stop_button_aborts_the_stream(page: Page) -> None:
    page.select_option("#play-model", "beta")
    page.fill("#play-max", "2000")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#play-stats")).to_contain_text("tokens/s", timeout=30_000)
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(page.locator("#play-stats")).to_contain_text("length", timeout=20_000)  # KoboldCpp's reason for abort
    tokens = int(page.locator("#play-stats").inner_text().split()[0])
    assert tokens < 1000


def test_swap_and_pin_show_the_server_state(page: Page, srv: Server) -> None:
    page.get_by_role("button", name="Make active alpha", exact=True).click()
    expect(card(page, "alpha").locator(".tag")).to_have_text("active", timeout=30_000)
    page.get_by_role("button", name="Pin alpha", exact=True).click()
    expect(card(page, "alpha").locator('[data-role="keep"]')).to_have_text("pinned", timeout=10_000)
    # The budget holds one model and alpha is pinned: loading beta fails, and the page says why.
    page.get_by_role("button", name="Load beta", exact=True).click()
    expect(page.locator("#toast")).to_contain_text("no room to load model 'beta'", timeout=30_000)
    page.screenshot(path=str(SHOTS / "4-error.png"))
    page.get_by_role("button", name="Unpin alpha", exact=True).click()
    expect(card(page, "alpha").locator('[data-role="keep"]')).not_to_have_text("pinned", timeout=10_000)


def test_a_crashed_worker_shows_its_reason(page: Page, srv: Server) -> None:
    httpx.post(f"{srv.url}/api/models/alpha/unload", timeout=60)  # alone in the pool (not parked beside beta)
    expect(card(page, "alpha").locator('[data-role="state"]')).to_have_text("unloaded", timeout=30_000)
    r = httpx.post(f"{srv.url}/api/models/beta/load", json={}, timeout=60)
    pid = r.json()["pid"]
    expect(card(page, "beta").locator('[data-role="state"]')).to_have_text("ready", timeout=30_000)
    os.kill(pid, signal.SIGSEGV)
    expect(card(page, "beta").locator('[data-role="state"]')).to_have_text("crashed", timeout=10_000)
    expect(card(page, "beta").locator('[data-role="reason"]')).to_contain_text("killed by SIGSEGV")
    expect(page.locator("#budget-text")).to_contain_text("reserved 0 MiB")  # its memory is free again
    page.screenshot(path=str(SHOTS / "5-crashed.png"))


def test_narrow_screen_and_keyboard(browser, srv: Server) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 390, "height": 844})
    pg = context.new_page()
    pg.goto(srv.url + "/")
    expect(pg.locator("#conn")).to_have_text("live")
    width = pg.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # nothing forces sideways scrolling
    pg.screenshot(path=str(SHOTS / "6-phone.png"), full_page=True)
    # Keyboard only: tab to a Load button and press Enter.
    for _ in range(30):
        pg.keyboard.press("Tab")
        if pg.evaluate("document.activeElement.getAttribute('aria-label')") == "Load alpha":
            break
    assert pg.evaluate("document.activeElement.getAttribute('aria-label')") == "Load alpha"
    pg.keyboard.press("Enter")
    expect(card(pg, "alpha").locator('[data-role="state"]')).to_have_text("ready", timeout=30_000)
    context.close()


def test_actions_ask_for_the_admin_key_when_one_is_set(browser, tmp_path: Path, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(["--model", str(model_path), "--contextsize", "512", "--no-warm-spare",
                           "--adminpassword", "open-sesame"], tmp_path)
    name = "SmolLM2-135M-Instruct.Q4_1"

    def set_key(value: str) -> None:
        pg.fill("#admin-key", value)
        pg.locator("#admin-key").dispatch_event("change")

    try:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        pg = context.new_page()
        pg.goto(server.url + "/")
        expect(pg.locator("#conn")).to_contain_text("set the admin key")  # the pool view is locked
        pg.locator(".keys summary").click()
        set_key("open-sesame")
        expect(pg.locator("#conn")).to_have_text("live", timeout=15_000)
        expect(card(pg, name).locator('[data-role="state"]')).to_have_text("ready", timeout=30_000)
        set_key("wrong")  # the action fails: the page says why and asks for the key again
        pg.get_by_role("button", name=f"Unload {name}", exact=True).click()
        expect(pg.locator("#toast")).to_contain_text("Admin key is missing or invalid")
        expect(pg.locator("#admin-key")).to_be_focused()
        set_key("open-sesame")
        pg.get_by_role("button", name=f"Unload {name}", exact=True).click()
        expect(card(pg, name).locator('[data-role="state"]')).to_have_text("unloaded", timeout=20_000)
        context.close()
    finally:
        server.stop()
