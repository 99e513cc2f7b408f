"""Charts of the benchmark results, drawn from benchmarks/*.json whenever the documentation
is built: mkdocs loads this file as a hook (mkdocs.yml) and adds each chart to the site as
charts/NAME.svg. Plain SVG, written here: no plotting library, nothing fetched.

    python -m benchmarks.charts DIR     # write the same SVG files into DIR
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

RESULTS = Path(__file__).resolve().parent

# Layout of a chart, in SVG user units.
LABEL_WIDTH = 250  # the bars' labels, left of the bars
BAR_WIDTH = 380  # the longest bar
VALUE_WIDTH = 130  # the figure, right of its bar
BAR_HEIGHT = 22
GAP = 8
TOP = 52  # the title and the subtitle


@dataclass(frozen=True, slots=True)
class Chart:
    """One horizontal bar chart: `bars` are (label, key) pairs, each key a figure of the
    scenario `scenario` in the results file `source`."""

    name: str
    source: str
    scenario: str
    title: str
    unit: str
    bars: tuple[tuple[str, str], ...]


CHARTS = (
    Chart(
        "peers-throughput.svg",
        "peers.json",
        "peers",
        "A 2M-row table offloaded, whole processes: rows per second",
        "rows/s",
        (
            ("offloader, parquet transport", "offloader_parquet_rows_per_s"),
            ("offloader, arrow transport", "offloader_arrow_rows_per_s"),
            ("offloader, native transport", "offloader_native_rows_per_s"),
            ("dlt, its fastest path", "dlt_rows_per_s"),
            ("ClickHouse's own Parquet export", "clickhouse_parquet_export_rows_per_s"),
        ),
    ),
    Chart(
        "peers-memory.svg",
        "peers.json",
        "peers",
        "The same runs: peak memory",
        "MB",
        (
            ("offloader, parquet transport", "offloader_parquet_peak_mb"),
            ("offloader, arrow transport", "offloader_arrow_peak_mb"),
            ("offloader, native transport", "offloader_native_peak_mb"),
            ("dlt, its fastest path", "dlt_peak_mb"),
        ),
    ),
    Chart(
        "bulk.svg",
        "bulk.json",
        "bulk",
        "A 10M-row backfill (parquet transport): seconds, median",
        "s",
        (
            ("ClickHouse's own Parquet export", "export_seconds_median"),
            ("offloader, audit off", "audit_off_seconds_median"),
            ("offloader, audit on (the default)", "audit_on_seconds_median"),
        ),
    ),
    Chart(
        "view.svg",
        "view_bare.json",
        "view",
        "Through the view over both tiers: time against the cold table's",
        "x",
        (
            ("an hour of a cold day", "hour_view_vs_cold"),
            ("a whole cold day", "day_view_vs_cold"),
            ("all rows", "all_view_vs_cold"),
            ("one row by key", "key_view_vs_cold"),
        ),
    ),
)


def figures(chart: Chart, results: Path = RESULTS) -> tuple[str, list[tuple[str, float]]]:
    """The date the results were measured and each bar's (label, figure), read from the
    chart's results file; a missing file, scenario or figure raises ValueError naming it."""
    path = results / chart.source
    redo = f"python -m benchmarks.cycle --scenario {chart.scenario} --json benchmarks/{path.name}"
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the benchmark results ({exc}); run {redo}") from exc
    scenario = document.get("scenarios", {}).get(chart.scenario)
    if not isinstance(scenario, dict):
        raise ValueError(f"{path}: no scenario {chart.scenario!r} in its results; run {redo}")
    bars = []
    for label, key in chart.bars:
        value = scenario.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ValueError(
                f"{path}: scenario {chart.scenario!r} has no figure {key!r} (got {value!r}) "
                f"for the chart {chart.name}; run {redo}, or fix CHARTS in benchmarks/charts.py"
            )
        bars.append((label, float(value)))
    return str(document.get("machine", {}).get("date", "date unknown")), bars


def number(value: float) -> str:
    """A figure as the charts print it: thousands grouped, small ones to two places."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def svg(title: str, subtitle: str, unit: str, bars: list[tuple[str, float]]) -> str:
    """A horizontal bar chart: each bar's length is its figure over the largest one."""
    largest = max((value for _, value in bars), default=0.0) or 1.0
    width = LABEL_WIDTH + BAR_WIDTH + VALUE_WIDTH
    height = TOP + len(bars) * (BAR_HEIGHT + GAP) + GAP
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
        f'<text x="0" y="18" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<text x="0" y="38" fill="#555">{escape(subtitle)}</text>',
    ]
    for i, (label, value) in enumerate(bars):
        y = TOP + i * (BAR_HEIGHT + GAP)
        length = BAR_WIDTH * value / largest
        middle = y + BAR_HEIGHT / 2 + 4
        out += [
            f'<text x="{LABEL_WIDTH - 8}" y="{middle:.1f}" text-anchor="end">'
            f"{escape(label)}</text>",
            f'<rect class="bar" x="{LABEL_WIDTH}" y="{y}" width="{length:.2f}" '
            f'height="{BAR_HEIGHT}" fill="#3f6ec6"><title>{escape(label)}</title></rect>',
            f'<text class="figure" x="{LABEL_WIDTH + length + 6:.2f}" y="{middle:.1f}">'
            f"{number(value)} {escape(unit)}</text>",
        ]
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render(chart: Chart, results: Path = RESULTS) -> str:
    date, bars = figures(chart, results)
    return svg(chart.title, f"benchmarks/{chart.source}, measured {date}", chart.unit, bars)


def on_files(files: Any, config: Any) -> Any:
    """mkdocs hook: add every chart to the site, as charts/NAME.svg."""
    from mkdocs.structure.files import File

    for chart in CHARTS:
        files.append(File.generated(config, f"charts/{chart.name}", content=render(chart)))
    return files


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m benchmarks.charts DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for chart in CHARTS:
        (out / chart.name).write_text(render(chart))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
