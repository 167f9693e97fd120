"""The report's text: one number formatter, pipeline order, verdicts first and in summary.json,
no absolute paths, no references to files outside the project."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from gradnoise.report import fmt_num
from gradnoise.report.html import Table, table_csv
from gradnoise.study.registry import BUILTIN_ANALYSES, pipeline_order
from gradnoise.study.runner import display_name


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (1.5807352088707018, "", "1.581"),
        (0.32121212121212117, "", "0.3212"),
        (0.0001412, "", "1.412e-4"),
        (1810, "", "1,810"),
        (-12000, "", "-12,000"),
        (12345.6, "", "12,350"),
        (9.99996, "", "10"),
        (0.5, "", "0.5"),
        (2e20, "", "2e20"),
        (float("nan"), "", "n/a"),
        (None, "", "n/a"),
        (float("inf"), "", "inf"),
        (np.float32(0.25), "", "0.25"),
        (np.int64(4096), "B", "4,096 B"),
        (1.234567, "s", "1.235 s"),
        (0.321, "%", "32.1%"),
        (True, "", "yes"),
        ("already text", "", "already text"),
    ],
)
def test_fmt_num(value, unit, text):
    assert fmt_num(value, unit) == text


def test_fmt_num_digits_and_csv():
    assert fmt_num(3.14159, digits=3) == "3.14"
    table = Table(["a", "b"], [[1.23456789, "x, y"], [None, 12000]])
    assert table_csv(table) == 'a,b\n1.235,"x, y"\nn/a,"12,000"\n'


def test_pipeline_order_and_display_name():
    assert pipeline_order(["variance", "escape", "training", "tails"]) == [
        "training",
        "tails",
        "variance",
        "escape",
    ]
    assert list(BUILTIN_ANALYSES)[:2] == ["training", "gradients"]
    assert display_name("/home/me/data/my.npz") == "my.npz"
    assert display_name("C:\\Users\\me\\my.npz") == "my.npz"
    assert display_name("digits") == "digits"


def _text(page: str) -> str:
    page = re.sub(r'data:[a-z/]+[;,][^"]*', "DATA", page)
    page = re.sub(r"<(style|script)>.*?</\1>", "", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def _significant(number: str) -> int:
    mantissa = number.split("e")[0].replace(",", "").replace(".", "").lstrip("-0")
    return len(mantissa)


def test_report_text(full_tiny_report):
    page = full_tiny_report.read_text(encoding="utf-8")
    text = _text(page)
    # every decimal number a reader sees has at most 4 significant digits (one formatter)
    raw = [n for n in re.findall(r"-?\d[\d,]*\.\d+(?:e-?\d+)?", text) if _significant(n) > 4]
    assert not raw, raw[:10]
    assert "methods.md" not in text and "§" not in text
    assert "not reached" not in text or "never reached" in text
    # sections in pipeline order, the verdicts first
    ids = re.findall(r'<section id="([^"]+)"', page)
    assert ids == [
        "verdicts",
        "training",
        "gradients",
        "tails",
        "noise_model",
        "spectra",
        "variance",
        "config",
        "files",
    ]
    # summary.json holds the verdicts the report shows, the existing keys untouched
    summary = json.loads((full_tiny_report.parent / "summary.json").read_text())
    rows = summary["verdicts"]
    assert rows and {r["verdict"] for r in rows} <= {"supports", "contradicts", "inconclusive"}
    assert page.count('<span class="verdict verdict-') == len(rows)
    assert {r["analysis"] for r in rows} == {"tails", "noise_model", "spectra", "variance"}
    for row in rows:
        assert html.escape(row["claim"], quote=False) in page
    assert set(summary) >= {"config", "data", "model", "final", "analyses", "verdicts"}
    assert '<a href="summary.json">' in page


def test_partial_results_survive_a_failing_analysis(tmp_path):
    """Each analysis's results are committed when it finishes: a later failure leaves a report
    of what completed, the failure in its section; ``analyze`` finishes the rest."""
    from cases import TINY_STUDY
    from gradnoise.report import Section
    from gradnoise.study import Analysis, StudyConfig, register_analysis, registry

    def boom(ctx):
        raise RuntimeError("disk on fire")

    register_analysis(
        Analysis("boom", "Boom", boom, lambda view: Section("boom", "Boom")), overwrite=True
    )
    config = StudyConfig(**{**TINY_STUDY, "analyses": ("training", "boom", "gradients")})
    try:
        _partial(config, tmp_path / "run")
    finally:
        registry._ANALYSES.pop("boom", None)


def _partial(config, run):
    import gradnoise
    from gradnoise.study import run_study

    with pytest.raises(RuntimeError, match="disk on fire"):
        run_study(config, run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["analyses"]["training"]["recorded_steps"] == 20
    assert "disk on fire" in summary["analyses"]["boom"]["unavailable"]
    assert "gradients" not in summary["analyses"]
    page = (run / "report.html").read_text()
    sections = re.findall(r'<section id="([^"]+)"', page)
    assert sections[:3] == ["training", "boom", "gradients"]  # no verdicts: none measured yet
    assert "the analysis failed (RuntimeError: disk on fire)" in page
    assert "Not computed: the study stopped before it." in page
    assert "training-table-1" in page  # the completed section is rendered in full
    gradnoise.analyze(run, ["gradients"])
    page = (run / "report.html").read_text()
    assert "gradients-table-1" in page and "Not computed" not in page


def test_compare_labels_runs_by_what_differs(compare_report):
    page = (compare_report / "report.html").read_text(encoding="utf-8")
    assert "<title>gradnoise compare: lr 0.1 vs lr 0.03</title>" in page
    ids = re.findall(r'<section id="([^"]+)"', page)
    assert ids == ["runs", "verdicts", "headlines", "curves", "config"]
    # the verdicts side by side: the second run did not measure the tails
    assert page.count("not measured") >= 3
    specs = [json.loads(html.unescape(s)) for s in re.findall(r'data-spec="([^"]+)"', page)]
    titles = [s["title"] for s in specs]
    assert titles[:3] == ["Minibatch loss", "Test accuracy", "Minibatch gradient norm ||g_B||"]
    assert "NGV" in titles
    assert specs[0]["labels"] == ["lr 0.1", "lr 0.03"]
    assert all(set(s["labels"]) <= {"lr 0.1", "lr 0.03"} for s in specs)
    # the second run has no tails or spectra: those overlays hold the first run alone
    spectrum = next(s for s in specs if s["title"].startswith("Gradient covariance spectrum"))
    assert spectrum["labels"] == ["lr 0.1"] and spectrum["logx"]
    assert any(s["title"].startswith("Power law plausible") for s in specs)
    links = re.findall(r'href="([^"#][^"]*report\.html)"', page)
    assert "../slow/report.html" in links and len(links) == 2
    assert not [link for link in links if link.startswith(("/", "file:"))]  # relative only
    assert str(compare_report.parent) not in page


def test_run_labels():
    from gradnoise.study.compare import run_labels

    a = {"lr": 0.1, "seed": 0, "threads": 1, "options": {"variance": {"every": 4}}}
    b = {"lr": 0.1, "seed": 1, "threads": 2, "options": {"variance": {"every": 8}}}
    assert run_labels([a, b], ["x", "y"]) == [
        "options.variance.every 4, seed 0",
        "options.variance.every 8, seed 1",
    ]
    assert run_labels([a, a], ["x", "y"]) == ["x", "y"]
    assert run_labels([a, a], ["run", "run"]) == ["run 1: run", "run 2: run"]


def _spectra_tables(page: str) -> str:
    start = page.index('<section id="spectra"')
    return page[start : page.index("</section>", start)]


def test_spectra_tables_drop_an_empty_trace_column_and_mark_vacuous_bounds(
    full_tiny_report, tmp_path
):
    import shutil

    from gradnoise.study.runner import render_run

    section = _spectra_tables(full_tiny_report.read_text(encoding="utf-8"))
    assert "<th>tr(H)</th>" in section  # the tiny study estimates it (hessian_trace = 10)
    summary = json.loads((full_tiny_report.parent / "summary.json").read_text())
    bounds = [s["davis_kahan_bound"] for s in summary["analyses"]["spectra"]["stability"]]
    assert section.count("(vacuous)") == sum(b >= 1 for b in bounds)

    run = tmp_path / "run"
    shutil.copytree(full_tiny_report.parent, run)
    for row in summary["analyses"]["spectra"]["hessian"]:  # as a study without hessian_trace
        row.pop("trace", None)
        row.pop("trace_stderr", None)
    (run / "summary.json").write_text(json.dumps(summary))
    section = _spectra_tables(render_run(run).read_text(encoding="utf-8"))
    assert "<th>tr(H)</th>" not in section
    assert "tr(H) was not estimated (option hessian_trace = 0" in section


def test_one_batch_size_is_drawn_along_training_not_on_a_one_point_axis(full_tiny_report):
    page = full_tiny_report.read_text(encoding="utf-8")
    summary = json.loads((full_tiny_report.parent / "summary.json").read_text())
    sizes = {r["batch_size"] for r in summary["analyses"]["noise_model"]["battash"]["rows"]}
    assert len(sizes) == 1  # the tiny study measures the study's batch size only
    assert "along training (one batch size was measured" in page


def test_reclusterings_are_drawn_where_snapshot_lines_cannot_hide_them(full_tiny_report):
    summary = json.loads((full_tiny_report.parent / "summary.json").read_text())
    assert summary["analyses"]["variance"]["comparators"]["reclusterings"] >= 1
    assert "red triangles on the top edge mark re-clusterings" in full_tiny_report.read_text(
        encoding="utf-8"
    )


class _Tree(HTMLParser):
    """A minimal element tree of a page: ``(tag, attrs, children, text)`` nodes."""

    VOID = frozenset({"img", "meta", "br", "hr", "input", "link", "source"})

    def __init__(self) -> None:
        super().__init__()
        self.root: dict = {"tag": "root", "attrs": {}, "children": [], "text": ""}
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = {"tag": tag, "attrs": dict(attrs), "children": [], "text": ""}
        self.stack[-1]["children"].append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        while len(self.stack) > 1:
            if self.stack.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for node in self.stack:
            node["text"] += data


def _nodes(node, tag=None):
    for child in node["children"]:
        if tag is None or child["tag"] == tag:
            yield child
        yield from _nodes(child, tag)


def _classes(node) -> set[str]:
    return set((node["attrs"].get("class") or "").split())


#: the sections whose figures reproduce a paper, and the paper their prose must cite
PAPERS = {
    "tails": "Xie et al.",
    "noise_model": ("Simsekli et al.", "Panigrahi et al.", "Battash"),
    "spectra": "Xie et al.",
    "variance": "Faghri et al.",
}


def _prose_problems(sections: dict) -> list[str]:
    """Each figure or chart not introduced as issue 12 asks, in words (empty: all are)."""
    problems = []
    for key, section in sections.items():
        figures = list(_nodes(section, "figure"))
        blocks = [d for d in _nodes(section, "div") if "block" in _classes(d)]
        in_blocks = {id(f) for b in blocks for f in _nodes(b, "figure")}
        problems += [
            f"{key}: figure {f['attrs'].get('id')} outside a block"
            for f in figures
            if id(f) not in in_blocks
        ]
        for block in blocks:
            names = [f["attrs"].get("id") for f in _nodes(block, "figure")]
            first = block["children"][0] if block["children"] else None
            if first is None or first["tag"] != "p" or "intro" not in _classes(first):
                problems.append(f"{key}: {names} not preceded by an intro paragraph")
                continue
            intro = " ".join(first["text"].split())
            if len(intro.split()) < 40:  # says what, why and how to read it
                problems.append(f"{key}: {names}: intro too short: {intro}")
            if not names:
                problems.append(f"{key}: an intro without a figure: {intro}")
            papers = PAPERS.get(key, ())
            papers = (papers,) if isinstance(papers, str) else papers
            if papers and not any(p in intro for p in papers):
                problems.append(f"{key}: {names}: intro cites none of {papers}: {intro}")
            charts = [d for d in _nodes(block, "div") if "chart" in _classes(d)]
            specs = [json.loads(html.unescape(c["attrs"]["data-spec"])) for c in charts]
            loglog = any(spec["logx"] and spec["log"] for spec in specs)
            if loglog and not ("log–log" in intro and "straight line" in intro):
                problems.append(f"{key}: {names}: log-log chart, intro says not how to read it")
    return problems


def _sections(path) -> dict:
    tree = _Tree()
    tree.feed(path.read_text(encoding="utf-8"))
    return {s["attrs"]["id"]: s for s in _nodes(tree.root, "section")}


def test_every_figure_and_chart_is_preceded_by_prose_in_its_section(full_tiny_report):
    """Issue 12: prose that says what a figure shows and why it matters, in the section, before
    the figure. Every figure (PNG or interactive chart) of the report sits in a block that opens
    with an intro paragraph; in the sections that reproduce a paper the intro cites it, and the
    intros of log-log charts (CCDFs, rank spectra) say how to read them."""
    sections = _sections(full_tiny_report)
    assert not _prose_problems(sections)
    with_figures = {k for k, s in sections.items() if list(_nodes(s, "figure"))}
    assert with_figures == {"training", "gradients", "tails", "noise_model", "spectra", "variance"}
    assert sum(len(list(_nodes(s, "figure"))) for s in sections.values()) >= 30
    # the tails CCDFs are interactive log-log charts: data as markers, fits dashed
    tails = [d for d in _nodes(sections["tails"], "div") if "chart" in _classes(d)]
    specs = [json.loads(html.unescape(d["attrs"]["data-spec"])) for d in tails]
    assert len(specs) == 6 and all(s["logx"] and s["log"] for s in specs)
    assert all(any(s["dashed"]) and any(s["points"]) for s in specs if s["labels"])


def test_the_prose_check_sees_a_figure_without_prose(tmp_path):
    """The prose check is not vacuous: an unintroduced figure, a short intro, an intro that
    cites no paper are each found."""
    from gradnoise.report import Figure, Section, render_report
    from gradnoise.report.figures import figure, save_figure

    with figure() as (fig, ax):
        ax.plot([1, 2], [1, 2])
        png = save_figure(fig, tmp_path / "f.png")
    long = "A figure of the gradient noise, drawn here to be read carefully. " * 5
    sections = [
        Section("tails", "Tails", paragraphs=["text"], figures=[Figure(png, "caption")]),
        Section("training", "Training", figures=[Figure(png, "c", intro="Too short.")]),
        Section("variance", "Variance", figures=[Figure(png, "c", intro=long)]),
        Section("gradients", "Gradients", figures=[Figure(png, "c", intro=long)]),
    ]
    page = render_report(tmp_path / "r.html", title="t", config={}, sections=sections)
    problems = _prose_problems(_sections(page))
    assert len(problems) == 3, problems
    assert "tails: ['tails-figure-1'] not preceded by an intro" in problems[0]
    assert "training" in problems[1] and "too short" in problems[1]
    assert "variance" in problems[2] and "cites none" in problems[2]


def test_ccdf_thinning_keeps_the_tail_and_bounds_the_size():
    """The charts' thinning spreads points along the drawn log-log curve: a heavy tail keeps
    points down to its last value (thinning by index would leave it almost none), and the
    count stays near the budget however large the sample."""
    from gradnoise.report.figures import ccdf, thin, thin_loglog

    values = np.abs(np.random.default_rng(0).standard_t(1.5, 200_000))
    x, p = ccdf(values)
    tx, tp = thin_loglog(x, p, 100)
    assert 50 <= tx.size <= 101
    assert tx[0] == x[0] and tx[-1] == x[-1] and tp[-1] == p[-1]
    assert np.all(np.diff(tx) > 0) and np.all(np.diff(tp) < 0)
    # the last decade of probability (p < 1e-4: 20 of the 200,000 values) keeps points
    assert (tp < 1e-4).sum() >= 5
    _, ip = thin(x, p, 100)
    assert (ip < 1e-4).sum() <= 2  # by index: the tail is nearly empty
    short = thin_loglog(np.array([1.0, 2.0, 0.0, 3.0]), np.array([1.0, 0.5, 0.4, np.nan]))
    assert short[0].tolist() == [1.0, 2.0]  # non-positive and non-finite points dropped


def test_chart_spec_marks_dashed_series_and_figures_take_charts(tmp_path):
    from gradnoise.report import Chart, Figure, Section
    from gradnoise.report.html import chart_spec, section_blocks

    chart = Chart(
        "c", "x", "y", [("data", [1, 2], [1, 0.5]), ("fit", [1, 2], [1, 0.4])], dashed=["fit"]
    )
    spec = json.loads(chart_spec(chart))
    assert spec["dashed"] == [False, True] and spec["points"] == [False, False]
    section = Section(
        "s",
        "S",
        charts=[Chart("alone", "x", "y", [("a", [1], [1])], intro="about it")],
        figures=[
            Figure(
                tmp_path / "a.png", intro="why", charts=[chart, Chart("e", "x", "y", []), chart]
            ),
            Figure(tmp_path, charts=[Chart("empty", "x", "y", [])]),
        ],
    )
    blocks = section_blocks(section)
    assert [[i for i, _ in b.charts] for b in blocks] == [
        ["s-chart-1"],
        ["s-chart-2", "s-chart-3"],
        [],
    ]
    assert [b.intro for b in blocks] == ["about it", "why", ""]
    assert [b.figure_id for b in blocks] == ["", "s-figure-1", "s-figure-2"]
