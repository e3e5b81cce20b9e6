#!/usr/bin/env python3
"""Drives regate's Gitee sign-in in headless Chromium (selenium + Debian's chromedriver).

usage: gitee_login.py REGATE_URL LOGIN PASSWORD SCREENSHOT.png
Opens REGATE_URL/login, signs in on the Gitee stand-in's page, checks regate's page shows the
account and the docker login line, creates a CLI password with the page's form, saves a
screenshot of the signed-in page and prints CLI_PASSWORD=<the new password>.
"""
import shutil
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, login, password, shot = sys.argv[1:5]
opts = webdriver.ChromeOptions()
for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1000"):
    opts.add_argument(a)
binary = shutil.which("chromium") or shutil.which("chromium-browser")
if binary:
    opts.binary_location = binary
driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
driver.set_page_load_timeout(30)
# a click starts a navigation (here through several redirects) that find_element must not race:
# look for elements for up to 15 s
driver.implicitly_wait(15)
try:
    driver.get(url + "/")
    driver.find_element(By.LINK_TEXT, "Sign in with Gitee").click()
    # the stand-in's authorize page
    driver.find_element(By.ID, "user_login").send_keys(login)
    driver.find_element(By.ID, "user_password").send_keys(password)
    driver.find_element(By.ID, "authorize").click()
    # back on regate, signed in
    shown = driver.find_element(By.ID, "login").text
    assert shown == login, f"page shows {shown!r}"
    line = driver.find_element(By.ID, "docker-login").text
    assert line.startswith("docker login ") and line.endswith(f"-u {login}"), line
    cookies = {c["name"]: c for c in driver.get_cookies()}
    s = cookies["regate_session"]
    assert s["httpOnly"] and s.get("sameSite") == "Lax", s
    driver.find_element(By.NAME, "description").send_keys("chromium")
    driver.find_element(By.ID, "create-button").click()
    pw = driver.find_element(By.ID, "new-password").text.strip()
    assert pw.startswith("rg_"), pw
    assert "chromium" in driver.page_source
    driver.save_screenshot(shot)
    # reload: the secret is not shown again
    driver.get(url + "/")
    assert pw not in driver.page_source
    # the repositories page, and a repository's tags
    driver.find_element(By.ID, "repos-link").click()
    driver.find_element(By.LINK_TEXT, "team/app").click()
    rows = driver.find_elements(By.CSS_SELECTOR, "#tags tr")
    assert len(rows) >= 2, driver.page_source
    assert "docker pull " in driver.find_element(By.ID, "tags").text
    assert pw not in driver.page_source
    driver.save_screenshot(shot.replace(".png", "-tags.png"))
    print("CLI_PASSWORD=" + pw)
finally:
    driver.quit()
