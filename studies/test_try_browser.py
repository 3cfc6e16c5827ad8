"""The "Try it" page works in a real browser, offline.

The site is built by `mkdocs build --strict`, served by `python -m http.server` on
localhost, and loaded in headless Chromium driven by Playwright, which refuses and
records every request to another host. These tests skip without Playwright or Chromium,
except where .ci/run sets MAML_BROWSER_REQUIRED=1 (its newest corner), where that fails
them. With MAML_TRY_SHOTS=FOLDER they save screenshots of the figure there. What the
page computes is checked against maml.py in test_try.py.
"""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from studies.conftest import HANG_S, ROOT

# Chromium as the tests launch it: headless, and asking nothing of the network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
HEIGHT = 800  # of the window: the first screen


def playwright_and_chromium():
    """Playwright's sync API and a Chromium executable: skip without either, except
    where CI requires them (MAML_BROWSER_REQUIRED=1)."""
    required = os.environ.get("MAML_BROWSER_REQUIRED") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            raise
        pytest.skip("Playwright is not installed: pip install -r .ci/browser.txt")
    found = [shutil.which(n) for n in ("chromium", "chromium-browser")]
    chromium = os.environ.get("MAML_CHROMIUM") or next(filter(None, found), None)
    if chromium is None and required:
        pytest.fail("MAML_BROWSER_REQUIRED=1 but there is no chromium on PATH")
    if chromium is None:
        pytest.skip("no Chromium: apt-get install chromium, or set MAML_CHROMIUM")
    return sync_playwright, chromium


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The site built by `mkdocs build --strict`, served on localhost: its address."""
    playwright_and_chromium()
    site = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=HANG_S,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert build.returncode == 0, build.stderr[-3000:]
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
         "--directory", str(site)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = re.search(r" port (\d+) ", server.stdout.readline())[1]
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def browser(served):
    """open_page(path, width, scheme, touch) on headless Chromium, and the trouble its
    pages meet: console errors, uncaught exceptions, requests to another host (refused).
    """
    sync_playwright, chromium = playwright_and_chromium()
    trouble = []

    def route(r):
        if r.request.url.startswith((served, "data:")):
            return r.continue_()
        trouble.append(f"a request to another host: {r.request.url}")
        return r.abort()

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)

        def open_page(path, width, scheme="light", touch=False):
            page = launched.new_page(viewport={"width": width, "height": HEIGHT},
                                     color_scheme=scheme, has_touch=touch)
            page.route("**/*", route)
            page.on("console", lambda m: m.type == "error" and trouble.append(m.text))
            page.on("pageerror", lambda e: trouble.append(f"uncaught: {e}"))
            page.goto(served + path)
            return page
        yield open_page, trouble
        launched.close()


def drawn(page):
    """Wait for the figure: the number of points of each curve, by plot."""
    page.wait_for_selector("#maml-try-pretrained path.after[d]")
    return page.evaluate("""() => Object.fromEntries(
      [...document.querySelectorAll(".maml-try svg")].map((svg) => [svg.id,
        Object.fromEntries(["truth", "before", "after"].map((c) => [c, svg
          .querySelector("path." + c).getAttribute("d").split(/[ML]/).length - 1]))]))
    """)


def visible_points(page, plot):
    return page.locator(f"#maml-try-{plot} .point:visible").count()


@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 390])
def test_the_figure_is_drawn_offline_and_fits_the_width(browser, width):
    """At 1280 and at 390 pixels, in both palettes: both plots draw their three curves
    through 201 points, and K = 5 support points; nothing is wider than the page; no
    console error, no request to another host. The home page's first screen links to
    the figure."""
    open_page, trouble = browser
    for scheme in ("light", "dark"):
        page = open_page("try/", width, scheme)
        counts = drawn(page)
        assert set(counts) == {"maml-try-maml", "maml-try-pretrained"}, counts
        assert all(n == 201 for c in counts.values() for n in c.values()), counts
        assert visible_points(page, "maml") == visible_points(page, "pretrained") == 5
        scroll, client = page.evaluate(
            "() => [document.documentElement.scrollWidth, "
            "document.documentElement.clientWidth]")
        assert scroll <= client == width, (scroll, client)
        box = page.locator("#maml-try").bounding_box()
        assert 0 <= box["x"] and box["x"] + box["width"] <= width, box
        if os.environ.get("MAML_TRY_SHOTS"):  # the figure, clear of the sticky header
            shot = os.path.join(os.environ["MAML_TRY_SHOTS"], f"{width}-{scheme}.png")
            box["y"] += page.evaluate("() => window.scrollY")
            page.screenshot(path=shot, full_page=True, clip=box)
    link = open_page("", width).locator('a[href="try/"]').first.bounding_box()
    assert link and link["y"] + link["height"] <= HEIGHT, link
    assert not trouble, trouble


def changes(page, selector, attribute, act):
    """act(), then wait until selector's attribute has changed and the figure has
    redrawn for the last event (it redraws on the next animation frame)."""
    old = page.get_attribute(selector, attribute)
    act()
    page.wait_for_function(
        "([s, a, old]) => document.querySelector(s).getAttribute(a) !== old",
        arg=[selector, attribute, old], timeout=1000 * HANG_S)  # a hang's bound only
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => "
                  "requestAnimationFrame(done)))")


def coordinates(transform):
    return [float(v) for v in re.findall(r"[-\d.]+", transform)]


@pytest.mark.slow
def test_the_keyboard_moves_a_point_and_sets_n_k_and_a_new_task(browser):
    """A support point takes the focus and the arrow keys move it, which refits the
    network; the arrow keys set n and K; Enter on "new task" draws a new sinusoid."""
    open_page, trouble = browser
    page = open_page("try/", 1280)
    drawn(page)
    point = page.locator("#maml-try-maml .point").first
    point.focus()
    assert page.evaluate("() => document.activeElement.classList.contains('point')")
    after = "#maml-try-maml path.after"
    was = coordinates(point.get_attribute("transform"))
    changes(page, after, "d", lambda: [page.keyboard.press("ArrowUp")
                                       for _ in range(5)])
    now = coordinates(point.get_attribute("transform"))
    assert now[0] == was[0] and now[1] < was[1], (was, now)  # up, by 0.5 of y
    page.locator(".maml-try input[type=range]").nth(2).focus()  # n, from 1
    changes(page, after, "d", lambda: page.keyboard.press("ArrowRight"))
    assert "after 2 steps" in page.text_content(".maml-try-maml .maml-try__mse")
    page.locator(".maml-try input[type=radio]").first.focus()  # K, from 5
    changes(page, after, "d", lambda: page.keyboard.press("ArrowRight"))
    assert visible_points(page, "maml") == 10
    page.locator(".maml-try button").focus()
    changes(page, "#maml-try-maml path.truth", "d",
            lambda: page.keyboard.press("Enter"))
    assert not trouble, trouble


def centre(locator):
    box = locator.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def touch_drag(page, start, end):
    """A finger's drag as Chromium gets one from a touch screen (start, move, end)."""
    cdp = page.context.new_cdp_session(page)
    middle = [(a + b) / 2 for a, b in zip(start, end)]
    for kind, at in (("touchStart", start), ("touchMove", middle), ("touchMove", end),
                     ("touchEnd", None)):
        points = [{"x": at[0], "y": at[1]}] if at else []
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})


def towards_the_middle(page, plot, point, by):
    """Where a drag from the point, by pixels in x and in y, towards the plot's middle
    ends; and the point's centre, scrolled into the window."""
    point.scroll_into_view_if_needed()
    x, y = centre(point)
    mx, my = centre(page.locator(f"#maml-try-{plot}"))
    return (x, y), (x + (by if x < mx else -by), y + (by if y < my else -by))


@pytest.mark.slow
def test_a_mouse_and_a_finger_drag_a_support_point(browser):
    """Dragged by the mouse, then by a finger on a touch screen, a support point follows
    to where it is let go (to the pixel), in either plot, and the network is refit."""
    open_page, trouble = browser
    page = open_page("try/", 390, touch=True)
    drawn(page)
    point = page.locator("#maml-try-maml .point").nth(2)
    start, end = towards_the_middle(page, "maml", point, 30)

    def mouse():
        page.mouse.move(*start)
        page.mouse.down()
        page.mouse.move(*end, steps=5)
        page.mouse.up()
    changes(page, "#maml-try-maml path.after", "d", mouse)
    assert np.allclose(centre(point), end, atol=1), (centre(point), end)
    twin = page.locator("#maml-try-pretrained .point").nth(3)
    start, end = towards_the_middle(page, "pretrained", twin, 30)
    changes(page, "#maml-try-maml path.after", "d",
            lambda: touch_drag(page, start, end))
    assert np.allclose(centre(twin), end, atol=1), (centre(twin), end)
    assert not trouble, trouble


COLOURS = """() => {
  const css = (selector, property) => getComputedStyle(document.querySelector(selector))
    .getPropertyValue(property);
  const paths = ["#maml-try-maml path.after", "#maml-try-pretrained path.after",
                 "#maml-try-maml path.truth"];
  return { background: css("body", "background-color"),
           lines: paths.map((p) => [css(p, "stroke"), css(p, "opacity")]),
           point: [css("#maml-try-maml .point .dot", "fill"), "1"] };
}"""


def rgb(colour, opacity, background=(255, 255, 255)):
    """A CSS colour, with its alpha and the element's opacity, over a background."""
    r, g, b, *a = (float(v) for v in re.findall(r"[\d.]+", colour))
    alpha = (a[0] if a else 1.0) * float(opacity)
    return [alpha * c + (1 - alpha) * o for c, o in zip((r, g, b), background)]


def contrast(one, two):
    """WCAG's contrast ratio of two sRGB colours (0 to 255)."""
    def luminance(c):
        lin = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4
               for v in (x / 255 for x in c)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    hi, lo = sorted((luminance(one), luminance(two)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.slow
def test_the_figure_reads_in_the_light_and_the_dark_palette(browser):
    """Switched with the page's own palette toggle: in the light (default) and the dark
    (slate) palette, each model's curve, the true sinusoid and the points stand out from
    the page by WCAG's 3:1 for graphics, in colours of that palette."""
    open_page, trouble = browser
    page = open_page("try/", 1280, "light")
    drawn(page)
    seen = {}
    for _ in range(3):  # the toggle goes round: system preference, light, dark
        page.locator('form[data-md-component="palette"] label:visible').click()
        scheme = page.get_attribute("body", "data-md-color-scheme")
        seen[scheme] = page.evaluate(COLOURS)
    assert set(seen) == {"default", "slate"}, seen
    for scheme, colours in seen.items():
        background = rgb(colours["background"], 1)
        for colour, opacity in colours["lines"] + [colours["point"]]:
            drawn_as = rgb(colour, opacity, background)
            assert contrast(drawn_as, background) >= 3, (scheme, colour, background)
    assert seen["default"]["lines"] != seen["slate"]["lines"]
    assert not trouble, trouble


@pytest.mark.slow
def test_the_console_example_of_the_page_runs_in_the_page(browser):
    """docs/try.md's ```js block, run in the page as a reader runs it in the console,
    adapts MAML's network and returns its three outputs."""
    open_page, trouble = browser
    page = open_page("try/", 1280)
    drawn(page)
    text = (ROOT / "docs" / "try.md").read_text()
    *lines, last = text.split("```js\n", 1)[1].split("\n```", 1)[0].splitlines()
    outputs = page.evaluate("async () => {%s\nreturn %s}" % ("\n".join(lines), last))
    assert len(outputs) == 3 and all(np.isfinite(outputs)), outputs
    assert not trouble, trouble
