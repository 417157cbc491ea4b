"""The dashboard in a real browser (Debian's chromium, driven by Playwright; nothing is
downloaded). Run by tests/dashboard.rs against a live agent:

    browser.py URL ARTIFACTS LOGDIR CURRENT PREVIOUS

URL is what `hoist dashboard --json` printed, LOGDIR the app's service log directory
(`<root>/logs/demo/web`), CURRENT and PREVIOUS the releases before the rollback. Exits
non-zero (with the reason) on any failed expectation; screenshots go to ARTIFACTS.
"""

import glob
import os
import re
import sys
import time
from urllib.parse import urlsplit

from playwright.sync_api import expect, sync_playwright

URL, ART, LOGDIR, CURRENT, PREVIOUS = sys.argv[1:6]
BASE = "{0.scheme}://{0.netloc}".format(urlsplit(URL))
CHROMIUM = os.environ.get("HOIST_TEST_CHROMIUM", "/usr/bin/chromium")
os.makedirs(ART, exist_ok=True)
expect.set_options(timeout=20_000)


def shot(page, name):
    page.screenshot(path=os.path.join(ART, name + ".png"), full_page=True)


def last_seq():
    """The highest `seq N` any instance has written to its log file so far."""
    top = -1
    for f in glob.glob(os.path.join(LOGDIR, "*.log")):
        with open(f, errors="replace") as fh:
            for m in re.finditer(r"seq (\d+)", fh.read()):
                top = max(top, int(m.group(1)))
    return top


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    try:
        ctx = browser.new_context(viewport={"width": 1200, "height": 900})
        page = ctx.new_page()
        problems = []
        page.on(
            "console",
            lambda m: problems.append(m.text) if m.type == "error" else None,
        )

        # Log in through the printed URL: the token leaves the address bar at once.
        page.goto(URL)
        expect(page.locator("h1")).to_contain_text("Host")
        assert "token" not in page.url, page.url
        cookie = [c for c in ctx.cookies() if c["name"] == "hoist_session"][0]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
        expect(page.locator("#live")).to_contain_text("demo")
        expect(page.locator("#live")).to_contain_text(CURRENT[:12])
        shot(page, "1-host")

        # The app: its current release and its instances.
        page.click("#live a:text('demo')")
        expect(page.locator("h1")).to_contain_text("App demo")
        expect(page.locator("p span.current")).to_have_text(CURRENT[:12])
        expect(page.locator("p span.standby")).to_have_text(PREVIOUS[:12])
        # Two web instances of the current release, healthy (the standby's two stay warm).
        rows = page.locator("#live section:first-child table tr", has_text=CURRENT[:12])
        expect(rows).to_have_count(2)
        for i in range(2):
            expect(rows.nth(i).locator("td").nth(3)).to_have_text("healthy")
        expect(page.locator("#live")).to_contain_text("chain verified")
        expect(page.locator(".chart svg").first).to_be_visible()
        shot(page, "2-app")

        # Live logs with a filter: a line written after the page opened shows up.
        page.goto(BASE + "/apps/demo/logs?service=web&grep=seq")
        expect(page.locator("#logs .l").first).to_be_visible()
        after = last_seq()
        assert after >= 0, "the app writes no `seq` lines"
        want = re.compile(r"seq %d$" % (after + 2))
        expect(page.locator("#logs .l", has_text=want).first).to_be_visible()
        texts = page.locator("#logs .l").all_inner_texts()
        assert texts and all("seq" in t for t in texts), texts[:5]
        shot(page, "3-logs")

        page.goto(BASE + "/events")
        expect(page.locator("#events")).to_contain_text("deploy")
        shot(page, "4-events")

        # Roll back, with the confirmation; the history shows it, by `dashboard`.
        page.goto(BASE + "/apps/demo")
        page.click("a:text('Roll back…')")
        expect(page.locator("#what")).to_contain_text(PREVIOUS)
        shot(page, "5-confirm")
        page.click("#confirm")
        expect(page.locator("h1")).to_contain_text("App demo")
        expect(page.locator(".flash")).to_contain_text("rolled back to " + PREVIOUS)
        expect(page.locator("p span.current")).to_have_text(PREVIOUS[:12])
        last = page.locator("#history tr").nth(1)
        expect(last).to_contain_text("rollback")
        expect(last).to_contain_text("dashboard")
        expect(last).to_contain_text("succeeded")
        shot(page, "6-after-rollback")

        # A phone-sized screen.
        phone = ctx.new_page()
        phone.set_viewport_size({"width": 390, "height": 844})
        phone.goto(BASE + "/apps/demo")
        expect(phone.locator("h1")).to_contain_text("App demo")
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, "the page is %dpx wide on a 390px screen" % width
        shot(phone, "7-phone")

        csp = [m for m in problems if "Content Security Policy" in m]
        assert not csp, csp
        print("browser: ok")
    finally:
        browser.close()
