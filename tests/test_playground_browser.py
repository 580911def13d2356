"""The playground in a real browser: headless Chromium types a prompt, presses Run, and sees
the answer stream in. Skipped where Chromium or Playwright is missing (.ci/run installs both)."""

import shutil

import pytest
from live_server import LiveServer, slow_down

from tinylm.serve import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="Chromium is not installed")

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_prompt_run_and_streamed_answer(text_runs):
    app = create_app(text_runs["pile-bpe"].path)
    slow_down(app, 0.02)  # slow enough that the answer visibly grows in several steps
    with LiveServer(app) as server, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_function(
                "document.getElementById('model').textContent.includes('parameters')"
            )
            assert "pile-bpe" in page.text_content("#model")
            page.fill("#prompt", "Once upon a time")
            page.eval_on_selector(
                "#max_tokens", "(el) => { el.value = 40; el.dispatchEvent(new Event('input')); }"
            )
            page.click("#run")
            page.wait_for_function("document.getElementById('answer').textContent.length > 0")
            partial = page.text_content("#answer")
            page.wait_for_function(
                "document.getElementById('answer').dataset.finish !== undefined", timeout=30_000
            )
            final = page.text_content("#answer")
            assert final.startswith(partial) and len(final) > len(partial)  # it streamed
            assert page.text_content("#output").startswith("Once upon a time")
            assert page.text_content("#status") == ""
        finally:
            browser.close()


def open_page(p, url):
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
    page = browser.new_page()
    page.goto(url + "/")
    return browser, page


def test_word_completer_suggests_as_you_type(tiny_run):
    with LiveServer(create_app(tiny_run.path)) as server, playwright.sync_playwright() as p:
        browser, page = open_page(p, server.url)
        try:
            page.wait_for_function(
                "document.getElementById('model').textContent.includes('word completer')"
            )
            assert page.is_visible("#suggest-box")
            for prefix in ("c", "ca", "car"):
                page.type("#prefix", prefix[-1], delay=30)
                page.wait_for_function(
                    f"[...document.querySelectorAll('#suggestions .word')].length == 5 && "
                    f"[...document.querySelectorAll('#suggestions .word')].every("
                    f"w => w.textContent.startsWith('{prefix}'))"
                )
            rows = page.query_selector_all("#suggestions li")
            probs = [float(r.get_attribute("data-probability")) for r in rows]
            assert probs == sorted(probs, reverse=True) and 0 < probs[-1] <= probs[0] <= 1
            assert page.text_content("#suggestions li .p").strip().endswith("%")
        finally:
            browser.close()


def test_the_page_asks_for_the_api_key_and_then_works(text_runs):
    app = create_app(text_runs["pile-bpe"].path, api_key="s3cret")
    with LiveServer(app) as server, playwright.sync_playwright() as p:
        browser, page = open_page(p, server.url)
        try:
            page.wait_for_selector("#key-box", state="visible")
            page.fill("#key", "s3cret")
            page.dispatch_event("#key", "change")
            page.wait_for_function(
                "document.getElementById('model').textContent.includes('parameters')"
            )
            page.fill("#prompt", "Once")
            page.click("#run")
            page.wait_for_function(
                "document.getElementById('answer').dataset.finish !== undefined", timeout=30_000
            )
            assert page.text_content("#status") == ""
        finally:
            browser.close()


def test_each_generated_token_shows_its_probability_and_alternatives(text_runs):
    with (
        LiveServer(create_app(text_runs["pile-bpe"].path)) as server,
        playwright.sync_playwright() as p,
    ):
        browser, page = open_page(p, server.url)
        try:
            page.wait_for_function(
                "document.getElementById('model').textContent.includes('text generator')"
            )
            page.fill("#prompt", "Once upon a")
            page.click("#run")
            page.wait_for_function(
                "document.getElementById('answer').dataset.finish !== undefined", timeout=30_000
            )
            spans = page.query_selector_all("#answer .tok")
            assert spans
            probs = [float(s.get_attribute("data-probability")) for s in spans]
            assert all(0 < q <= 1 for q in probs)
            spans[0].click()
            # The five likeliest tokens, best first, and the sampled one after them when it is
            # not among them (OpenAI gives up to logprobs + 1); the playground samples unseeded.
            chosen = page.text_content("#token-info div").split(": p = ")[0]
            rows = [
                r.query_selector("td").text_content()
                for r in page.query_selector_all("#token-info tr")
            ]
            assert rows == rows[:5] + ([] if chosen in rows[:5] else [chosen]) and len(rows) >= 5
            assert "%" in page.text_content("#token-info")
            assert page.text_content("#output").startswith("Once upon a")
        finally:
            browser.close()
