"""The demo in a real browser: headless system Chromium driven by Playwright, the app served on a free
loopback port with the tiny checkpoint. Each test saves a screenshot under its tmp_path."""

from __future__ import annotations

import re
import shutil
import socket
import time

import pytest

CHROMIUM = "/usr/bin/chromium"
REPLY_TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tiny_checkpoint):
    from omni.demo.app import build_app
    from omni.loading import load_model

    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is not installed (apt-get install ffmpeg); the streaming audio player needs it")
    loaded = load_model(tiny_checkpoint, dtype="fp32")
    app = build_app(loaded, max_new_tokens=16)
    app.queue()
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               allowed_paths=[str(app.omni_media_dir)])
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # the system Chromium (Debian's chromium package): no browser download
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_url, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(app_url)
    page.wait_for_selector("#message textarea", timeout=30_000)
    page.js_errors = errors
    yield page
    page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    context.close()
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def send(page, text: str) -> None:
    box = page.locator("#message textarea")
    box.fill(text)
    box.press("Enter")


def bot_texts(page) -> list[str]:
    return page.locator('#chat [data-testid="bot"]').all_inner_texts()


def wait_reply_done(page) -> str:
    """Waits for the latency line (written when ReplyDone arrives) and returns it."""
    page.wait_for_function("() => /total/.test(document.querySelector('#latency')?.innerText || '')",
                           timeout=REPLY_TIMEOUT_MS)
    return page.locator("#latency").inner_text()


def set_max_tokens(page, tokens: int) -> None:
    number = page.locator('#max-tokens input[type="number"]')
    number.fill(str(tokens))
    number.press("Enter")
    number.blur()


def test_typed_message_streams_into_the_chat(page):
    send(page, "Hello there")
    latency = wait_reply_done(page)
    assert re.search(r"first text \d+\.\d\d s", latency) and "tokens" in latency
    assert page.locator('#chat [data-testid="user"]').first.inner_text().strip() == "Hello there"
    (reply,) = bot_texts(page)
    assert reply.strip()  # the tiny model's (random) words
    assert page.locator("#message textarea").input_value() == ""  # the box was cleared for the next turn
    assert page.js_errors == []


def test_uploaded_audio_turn_is_answered(page, speech_wav):
    page.locator('#message input[data-testid="file-upload"]').set_input_files(str(speech_wav))
    page.wait_for_selector("#message .thumbnail-item, #message [class*='thumbnail']", timeout=20_000)
    send(page, "What did I say?")
    wait_reply_done(page)
    user = page.locator('#chat [data-testid="user"]')
    assert user.count() >= 1
    user_html = page.locator("#chat .user-row").first.inner_html()
    assert "waveform-Audio" in user_html or "<audio" in user_html  # the upload is shown as a player
    assert "What did I say?" in page.locator("#chat").inner_text()
    assert bot_texts(page) and bot_texts(page)[-1].strip()
    assert page.js_errors == []


def test_stop_cancels_a_long_reply_and_keeps_its_text(page):
    set_max_tokens(page, 8000)
    send(page, "Tell me a very long story")
    # the reply streams: its text is seen growing several times before it is stopped
    lengths: list[int] = []
    deadline = time.monotonic() + 60
    while len(set(lengths)) < 4 and time.monotonic() < deadline:
        texts = bot_texts(page)
        if texts and texts[-1].strip():
            lengths.append(len(texts[-1]))
        time.sleep(0.1)
    assert len(set(lengths)) >= 4 and lengths == sorted(lengths), lengths
    page.locator("#stop").click()
    latency = wait_reply_done(page)
    assert latency.endswith("cancelled"), latency
    tokens = int(re.search(r"(\d+) tokens", latency).group(1))
    assert tokens < 8000
    stopped_text = bot_texts(page)[-1]
    time.sleep(1.0)
    assert bot_texts(page)[-1] == stopped_text and stopped_text.strip()  # nothing more arrives
    assert page.js_errors == []


def test_spoken_reply_plays_in_the_streaming_player(page):
    """Needs AudioChunk events from the reply pipeline (the Talker/Token2Wav stages). The reply is
    stopped once the player holds audio (the random tiny Talker would speak for a long time)."""
    speak = page.locator("#speak input[type='checkbox']")
    if not speak.is_checked():
        speak.check()
    send(page, "Say hello")
    page.wait_for_function(
        "() => { const a = document.querySelector('#reply-audio audio'); return a && a.src && a.duration > 0; }",
        timeout=REPLY_TIMEOUT_MS)
    assert page.locator("#reply-audio audio").get_attribute("src")
    page.locator("#stop").click()
    latency = wait_reply_done(page)
    assert re.search(r"first audio \d+\.\d\d s", latency), latency
    assert bot_texts(page)[-1].strip()
    assert page.js_errors == []
