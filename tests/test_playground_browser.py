"""The playground in a real browser: headless Chromium types a prompt, presses Run, and sees
the answer stream in. Skipped where Chromium or Playwright is missing (.ci/run installs both)."""

import shutil

import pytest
from test_serve import LiveServer, slow_down

from tinylm.serve import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="Chromium is not installed")

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


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
            page.wait_for_function("document.getElementById('answer').dataset.finish !== undefined",
                                   timeout=30_000)  # fmt: skip
            final = page.text_content("#answer")
            assert final.startswith(partial) and len(final) > len(partial)  # it streamed
            assert page.text_content("#output").startswith("Once upon a time")
            assert page.text_content("#status") == ""
        finally:
            browser.close()
