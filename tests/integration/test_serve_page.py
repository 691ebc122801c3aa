"""The chat page at `/` in a real headless Chromium (Debian's chromium + chromedriver, driven by
Selenium) against a real Serve application on 127.0.0.1: a person types, reads the reply and its
ER/IP/EX bars, continues the dialogue, asks for candidates, and sees a bad input named.

`.ci/run` installs the browser; elsewhere `make browser` does (the test skips, naming it, without one).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ppo_inputs import tiny_config
from processes import free_port

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())


@pytest.fixture(scope="module")
def page_service(ray_cluster: None, ppo_run: Path) -> Iterator[str]:
    from ray import serve

    from actors.serving.app import serving

    run = ppo_run
    cfg = tiny_config(serve__port=free_port(), serve__policy_cpus=0.25, serve__identifier_cpus=0.25,
                      serve__max_text_chars=200)  # fmt: skip
    serve.shutdown()  # HTTP options are global to a Serve instance: this module starts its own
    with serving(cfg, run / "sft" / "policy", run / "identifiers") as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        message = "needs Debian's chromium and chromium-driver: `make browser` (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them: a missing browser there is a broken setup
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1280,900", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    # an explicit driver: Selenium Manager never looks for (or downloads) one
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_idle(driver: Any) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(
        lambda d: d.find_element("tag name", "body").get_attribute("data-state") == "idle"
    )


def type_and_send(driver: Any, text: str) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element("id", "message")
    box.clear()
    box.send_keys(text)
    box.send_keys(Keys.ENTER)  # Enter sends
    WebDriverWait(driver, 10).until(
        lambda d: (
            d.find_element("tag name", "body").get_attribute("data-state") == "busy"
            or d.find_element("id", "error").text
            or len(d.find_elements("css selector", ".turn")) > 0
        )
    )
    wait_idle(driver)


def page_levels(driver: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for block in driver.find_elements("css selector", "#levels [data-mechanism]"):
        fills = block.find_elements("css selector", ".fill")
        out[block.get_attribute("data-mechanism")] = {
            "level": int(block.get_attribute("data-level")),
            "label": block.get_attribute("data-label"),
            "probs": [float(f.get_attribute("data-prob")) for f in fills],
            "widths": [f.size["width"] / f.find_element("xpath", "..").size["width"] for f in fills],
        }
    return out


def test_a_person_chats_and_sees_the_levels(page_service: str, browser: Any) -> None:
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(page_service + "/")
    WebDriverWait(browser, 30).until(lambda d: "run/sft" in d.find_element("id", "model-name").text)
    Select(browser.find_element("id", "emotion")).select_by_value("excited")
    browser.find_element("id", "seed").send_keys("7")
    type_and_send(browser, "I finally got the job I wanted!")
    assert browser.find_element("id", "error").text == ""
    turns = browser.find_elements("css selector", ".turn")
    assert [t.get_attribute("class").split()[-1] for t in turns] == ["speaker", "listener"]
    reply = turns[1].find_element("css selector", ".text").text
    # the page shows what the API answers for the same dialogue, seed and temperature
    expected = post(f"{page_service}/v1/respond", {"turns": ["I finally got the job I wanted!"], "emotion": "excited",
                                                   "sampling": {"seed": 7, "temperature": 0.9}})  # fmt: skip
    assert reply == expected["response"]
    levels = page_levels(browser)
    assert set(levels) == {"er", "ip", "ex"}
    for m, shown in levels.items():
        assert (
            shown["level"] == expected["levels"][m]["level"]
            and shown["label"] == expected["levels"][m]["label"]
        )
        assert shown["probs"] == pytest.approx(expected["levels"][m]["probs"], abs=1e-5)
        assert shown["widths"] == pytest.approx(shown["probs"], abs=0.02)  # each bar is its probability

    # the second message carries the history: the API answers the same 3 turns with the same seed
    type_and_send(browser, "Thanks, I start on Monday.")
    texts = [
        t.find_element("css selector", ".text").text for t in browser.find_elements("css selector", ".turn")
    ]
    assert len(texts) == 4
    again = post(f"{page_service}/v1/respond", {"turns": texts[:3], "emotion": "excited",
                                                "sampling": {"seed": 7, "temperature": 0.9}})  # fmt: skip
    assert texts[3] == again["response"]

    # n candidates with a target: every candidate is listed, the chosen one marked and shown
    n = browser.find_element("id", "n-candidates")
    n.clear()
    n.send_keys("3")
    Select(browser.find_element("id", "target-er")).select_by_value("2")
    browser.find_element("id", "show-candidates").click()
    type_and_send(browser, "I am a bit nervous though.")
    candidates = browser.find_elements("css selector", "#candidates .candidate")
    assert len(candidates) == 3
    chosen = browser.find_elements("css selector", "#candidates .candidate.chosen")
    assert len(chosen) == 1
    last = browser.find_elements("css selector", ".turn .text")[-1].text
    assert chosen[0].find_element("css selector", ".text").text == last
    shots = os.environ.get("EMPRL_SCREENSHOT_DIR")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(shots) / "chat_page.png"))


def test_a_bad_input_is_named_and_the_typed_text_kept(page_service: str, browser: Any) -> None:
    browser.get(page_service + "/")
    wait_idle(browser)
    too_long = "x" * 201
    type_and_send(browser, too_long)
    error = browser.find_element("id", "error").text
    assert "422" in error and "turns.0" in error and "200" in error
    assert browser.find_element("id", "message").get_attribute("value") == too_long
    assert browser.find_elements("css selector", ".turn") == []
