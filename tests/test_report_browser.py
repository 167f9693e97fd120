"""The report in a real browser: Debian's headless Chromium driven by chromedriver (selenium).

One tiny study with every built-in analysis is run once; its report is opened at 1400 px (a
desktop) and at 400 px (a phone, mobile emulation, so the viewport meta matters). Checked: no
horizontal overflow of the page, every in-page anchor resolves, every image loads and is shown at
its drawn size, no console errors, the verdict table comes first, injected user strings stay
inert, and the budget (under 4 MB, rendered in under 2 s).

Where no browser is installed the tests skip with the reason, unless
``GRADNOISE_REQUIRE_BROWSER=1`` (``.ci/run`` sets it once it installed Chromium): then they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from gradnoise.study.runner import render_run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
BUDGET_BYTES = 4_000_000
BUDGET_RENDER_MS = 2000
WIDTHS = (1400, 400)

INJECTED = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def _missing_browser() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found (apt-get install {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'gradnoise[test]')"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _missing_browser()
    if reason is not None:
        if os.environ.get("GRADNOISE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"GRADNOISE_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(f"no browser: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gradnoise-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    t = time.perf_counter()
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    print(f"\nbrowser: started in {time.perf_counter() - t:.2f} s")
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def report(full_tiny_report):
    return full_tiny_report


def _viewport(driver, width: int, height: int = 900) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def _open(driver, path: Path, width: int) -> dict:
    _viewport(driver, width)
    driver.get(path.as_uri())
    driver.get_log("browser")  # drop messages of earlier pages
    driver.refresh()
    return driver.execute_script(
        """
        const nav = performance.getEntriesByType('navigation')[0];
        const doc = document.documentElement;
        const wide = [];
        for (const el of document.querySelectorAll('body *')) {
          if (el.closest('.scroll') || el.closest('nav.toc')) continue;
          const r = el.getBoundingClientRect();
          if (r.right > window.innerWidth + 0.5 && r.width > 0) {
            wide.push(el.tagName + (el.id ? '#' + el.id : '') + ' ' + Math.round(r.right));
          }
        }
        const anchors = [...document.querySelectorAll('a[href^="#"]')].map(a => a.getAttribute('href'));
        const imgs = [...document.images].map(i => ({
          ok: i.complete && i.naturalWidth > 0, natural: i.naturalWidth, shown: i.clientWidth,
          attr: Number(i.getAttribute('width')), displayed: i.getClientRects().length > 0,
          fallback: i.closest('figure.fallback') !== null}));
        const shown = el => el.getClientRects().length > 0;
        return {
          innerWidth: window.innerWidth, scrollWidth: doc.scrollWidth, wide: wide.slice(0, 10),
          anchors: anchors,
          unresolved: anchors.filter(h => !document.getElementById(decodeURIComponent(h.slice(1)))),
          images: imgs,
          loadMs: nav.loadEventEnd - nav.startTime,
          domMs: nav.domContentLoadedEventEnd - nav.startTime,
          firstSection: document.querySelector('main section').id,
          navPosition: getComputedStyle(document.querySelector('nav.toc')).position,
          navLinkHeights: [...document.querySelectorAll('nav.toc a')].map(a => a.getBoundingClientRect().height),
          csv: document.querySelectorAll('a.csv[href^="data:text/csv"]').length,
          tables: document.querySelectorAll('div.scroll[id] > table').length,
          pwned: window.__pwned === undefined ? null : window.__pwned,
          charts: document.querySelectorAll('.chart').length,
          drawn: document.querySelectorAll('.chart .uplot canvas').length,
          chartsShown: [...document.querySelectorAll('.chart-box')].filter(shown).length,
          charted: document.querySelectorAll('.block.charted').length,
          chartedDrawn: document.querySelectorAll('.block.charted.drawn').length,
          fallbacksShown: [...document.querySelectorAll('figure.fallback')].filter(shown).length,
          tailsCharts: document.querySelectorAll('#tails .chart .uplot canvas').length,
        };
        """
    )


def test_report_in_a_browser_at_desktop_and_phone_widths(browser, report):
    size = report.stat().st_size
    print(f"browser: report.html {size:,} bytes")
    assert size < BUDGET_BYTES
    for width in WIDTHS:
        m = _open(browser, report, width)
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        print(
            f"browser: {width} px: innerWidth {m['innerWidth']}, scrollWidth {m['scrollWidth']}, "
            f"{len(m['anchors'])} anchors ({len(m['unresolved'])} unresolved), "
            f"{len(m['images'])} images ({sum(not i['ok'] for i in m['images'])} not loaded), "
            f"{len(errors)} console errors, DOMContentLoaded {m['domMs']:.0f} ms, load "
            f"{m['loadMs']:.0f} ms, {m['tables']} tables, {m['csv']} CSV links, {m['drawn']} of "
            f"{m['charts']} charts drawn, {m['fallbacksShown']} of {m['charted']} charted PNGs "
            f"shown, {sum(i['displayed'] for i in m['images'])} images shown"
        )
        assert m["innerWidth"] == width  # the viewport meta makes a phone lay out at 400 px
        assert m["scrollWidth"] <= width, f"page overflows at {width} px: {m['wide']}"
        assert not m["wide"], m["wide"]
        assert m["anchors"] and not m["unresolved"], m["unresolved"]
        assert m["images"] and all(i["ok"] for i in m["images"])
        # one figure per curve: with JavaScript every chart is drawn and shown and the PNGs of
        # charted figures (their fallback) are not displayed; figures without charts are shown
        assert m["charted"] >= 10 and m["chartedDrawn"] == m["charted"]
        assert m["fallbacksShown"] == 0
        assert m["chartsShown"] == m["charts"]
        assert m["tailsCharts"] == 6  # the tails CCDFs, interactive
        plain = [i for i in m["images"] if not i["fallback"]]
        assert plain and all(i["displayed"] for i in plain)
        assert all(not i["displayed"] for i in m["images"] if i["fallback"])
        assert not errors, errors
        assert m["loadMs"] < BUDGET_RENDER_MS
        assert m["firstSection"] == "verdicts"
        assert m["navPosition"] == "sticky"
        assert m["tables"] and m["csv"] == m["tables"]  # each section's table has its CSV
        assert m["charts"] >= 20 and m["drawn"] == m["charts"]  # interactive plots drawn
        if width == 1400:
            # figures are drawn at their display size: shown at their own pixels
            scaled = [i for i in m["images"] if i["displayed"] and i["shown"] != i["natural"]]
            assert not scaled, scaled
            # table of contents entries on one line each (no mid-title wrap)
            assert max(m["navLinkHeights"]) < 1.9 * min(m["navLinkHeights"])


def test_interactive_plots_hover_and_log_switch(browser, report):
    """Hovering a plot shows values in its legend; the log/linear switch redraws it."""
    from selenium.webdriver.common.action_chains import ActionChains

    _open(browser, report, 1400)
    browser.execute_script("document.getElementById('training-chart-1').scrollIntoView()")
    over = browser.find_element("css selector", "#training-chart-1 .u-over")
    values = "return [...document.querySelectorAll('#training-chart-1 .u-value')].map(e => e.textContent)"
    assert set(browser.execute_script(values)) == {"–"}
    ActionChains(browser).move_to_element(over).perform()
    shown = browser.execute_script(values)
    assert any(v != "–" for v in shown), shown
    browser.find_element("css selector", "#training-chart-1 .logtoggle").click()
    log = browser.execute_script(
        "return document.querySelector('#training-chart-1 .chart').getAttribute('data-log')"
    )
    assert log == "0"  # the loss starts on a log axis
    assert browser.find_elements("css selector", "#training-chart-1 .uplot")
    # a tails CCDF: log-log axes, values on hover, a legend entry hides its series
    browser.execute_script("document.getElementById('tails-chart-1').scrollIntoView()")
    spec = browser.execute_script(
        "return JSON.parse(document.querySelector('#tails-chart-1 .chart').dataset.spec)"
    )
    assert spec["logx"] and spec["log"] and any(spec["dashed"])
    over = browser.find_element("css selector", "#tails-chart-1 .u-over")
    ActionChains(browser).move_to_element(over).perform()
    shown = browser.execute_script(values.replace("training", "tails"))
    assert any(v != "–" for v in shown), shown
    hidden = "return document.querySelectorAll('#tails-chart-1 .u-legend .u-off').length"
    assert browser.execute_script(hidden) == 0
    browser.find_element("css selector", "#tails-chart-1 .u-legend .u-series:nth-child(2)").click()
    assert browser.execute_script(hidden) == 1
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors


def test_without_javascript_the_pngs_are_the_figures(browser, report):
    """Where scripts do not run, the charts (which need them) are hidden and every PNG,
    including those of charted figures, is shown at its drawn size."""
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        _viewport(browser, 1400)
        browser.get(report.as_uri())
        m = browser.execute_script(
            """
            const shown = el => el.getClientRects().length > 0;
            return {
              js: document.documentElement.classList.contains('js'),
              fallbacks: document.querySelectorAll('figure.fallback').length,
              fallbacksShown: [...document.querySelectorAll('figure.fallback')].filter(shown).length,
              chartsShown: [...document.querySelectorAll('.chart-box')].filter(shown).length,
              images: document.images.length,
              imagesShown: [...document.images].filter(i => shown(i) && i.clientWidth === i.naturalWidth).length,
            };
            """
        )
    finally:
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
    # execute_script runs even with page scripts disabled; the page's own script did not
    assert not m["js"]
    assert m["fallbacks"] >= 10 and m["fallbacksShown"] == m["fallbacks"]
    assert m["chartsShown"] == 0
    assert m["imagesShown"] == m["images"]


def test_comparison_report_in_a_browser(browser, compare_report):
    for width in WIDTHS:
        m = _open(browser, compare_report / "report.html", width)
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        print(
            f"browser: compare, {width} px: scrollWidth {m['scrollWidth']}, {m['drawn']} of "
            f"{m['charts']} plots drawn, {len(errors)} console errors, load {m['loadMs']:.0f} ms"
        )
        assert m["scrollWidth"] <= width and not m["wide"], m["wide"]
        assert not m["unresolved"] and not errors
        assert m["charts"] >= 4 and m["drawn"] == m["charts"]


def test_injected_user_strings_stay_inert(browser, report, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(report.parent, run)
    summary = json.loads((run / "summary.json").read_text())
    summary["config"]["model"] = INJECTED
    summary["data"]["name"] = f"/home/someone/secret/{INJECTED}.npz"
    summary["verdicts"] = []
    # one section is enough (re-rendering every figure costs seconds)
    summary["analyses"] = {"training": summary["analyses"]["training"]}
    summary["config"]["analyses"] = ["training"]
    (run / "summary.json").write_text(json.dumps(summary))
    render_run(run)
    html = (run / "report.html").read_text()
    assert "/home/someone" not in html  # no absolute paths in a shared report
    assert "<script>window.__pwned" not in html
    m = _open(browser, run / "report.html", 1400)
    assert m["pwned"] is None
    title = browser.find_element("css selector", "h1").text
    assert "<script>window.__pwned = 1</script>" in title  # shown as text, not run


def test_browser_suite_can_fail(browser, tmp_path):
    """The overflow measurement sees a page that does overflow (the checks are not vacuous)."""
    page = tmp_path / "wide.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta name="viewport" content="width=device-width">'
        '</head><body><table><tr><td style="white-space:nowrap">' + "wide " * 400 + "</td></tr>"
        '</table><a href="#nowhere">x</a><nav class="toc"></nav><main><section id="s">'
        "</section></main></body></html>"
    )
    m = _open(browser, page, 400)
    assert m["scrollWidth"] > 400 and m["wide"]
    assert m["unresolved"] == ["#nowhere"]


def test_chromium_is_what_ci_installs():
    """``.ci/run`` installs Debian's chromium and chromium-driver with apt-get."""
    script = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    assert "apt-get" in script and "chromium-driver" in script
    if shutil.which("chromium"):
        out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=30)
        assert "Chromium" in out.stdout
