#!/usr/bin/env python3
"""Drives regate's pages for a local account in headless Chromium at 1280 px and at 390 px.

usage: local_pages.py REGATE_URL LOGIN PASSWORD ARTIFACT_DIR
Signs in with the form, creates a CLI password, and on the account page and the tags page checks
that nothing scrolls sideways (the page itself; wide tables scroll in their own box), that the
new password is shown whole (wrapped, not cut off), that size and date cells keep to one line at
1280 px, and that the copy button is there and runs (the page's script is allowed). Screenshots:
local-<width>-account.png, local-<width>-tags.png in ARTIFACT_DIR. Prints "checked <width>".
"""
import os
import shutil
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, login, password, out = sys.argv[1:5]


def browser(width, height):
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={max(width, 800)},{height}"):
        opts.add_argument(a)
    if width < 800:
        # a phone's viewport (a headless window cannot be made that narrow)
        opts.add_experimental_option(
            "mobileEmulation", {"deviceMetrics": {"width": width, "height": height, "pixelRatio": 1}})
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary:
        opts.binary_location = binary
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    d.set_page_load_timeout(30)
    d.implicitly_wait(15)
    return d


def no_sideways_scroll(d, what):
    over = d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert over <= 0, f"{what}: the page scrolls sideways by {over}px"


for width, height in ((1280, 900), (390, 844)):
    d = browser(width, height)
    try:
        d.get(url + "/login")
        inner = d.execute_script("return window.innerWidth")
        assert inner == width, f"viewport is {inner}px, not {width}px"
        d.find_element(By.ID, "username").send_keys(login)
        d.find_element(By.ID, "password").send_keys(password)
        d.find_element(By.ID, "signin-button").click()
        assert d.find_element(By.ID, "login").text == login
        d.find_element(By.NAME, "description").send_keys(f"chromium {width}")
        d.find_element(By.ID, "create-button").click()
        secret = d.find_element(By.ID, "new-password")
        pw = secret.text.strip()
        assert pw.startswith("rg_"), pw
        # shown whole: wrapped inside its box, never cut off behind a scroll bar
        cut = d.execute_script("var e=arguments[0]; return e.scrollWidth - e.clientWidth", secret)
        assert cut <= 0, f"{width}: the new password is cut off by {cut}px"
        button = d.find_element(By.CSS_SELECTOR, "button[data-copy='new-password']")
        assert button.is_displayed(), f"{width}: no copy button (is the script blocked?)"
        button.click()
        assert button.text in ("Copied", "Copy"), button.text
        no_sideways_scroll(d, f"{width} account page")
        d.save_screenshot(os.path.join(out, f"local-{width}-account.png"))
        d.find_element(By.ID, "repos-link").click()
        d.find_element(By.LINK_TEXT, "alice/app").click()
        cells = d.find_elements(By.CSS_SELECTOR, "#tags td.nowrap")
        assert len(cells) >= 2, d.page_source
        if width >= 1280:
            lines = d.execute_script(
                "return arguments[0].map(function(td){var r=document.createRange();r.selectNodeContents(td);"
                "var tops={};Array.prototype.forEach.call(r.getClientRects(),function(x){tops[Math.round(x.top)]=1;});"
                "return Object.keys(tops).length;})", cells)
            assert all(n == 1 for n in lines), f"size/date cells wrap: {lines}"
        no_sideways_scroll(d, f"{width} tags page")
        d.save_screenshot(os.path.join(out, f"local-{width}-tags.png"))
        print(f"checked {width}")
    finally:
        d.quit()
