"""The documentation's benchmark charts are drawn from benchmarks/*.json at build time:
each bar's length is its figure to scale and its label prints that figure, read from the
results file; a figure missing from the results fails the build naming file and key."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from benchmarks.charts import BAR_WIDTH, CHARTS, Chart, render

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_each_bar_is_its_figure_to_scale(chart: Chart) -> None:
    scenario = json.loads((RESULTS / chart.source).read_text())["scenarios"][chart.scenario]
    expected = [float(scenario[key]) for _, key in chart.bars]
    root = ET.fromstring(render(chart))
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "bar"]
    printed = [t.text or "" for t in root.iter(f"{SVG}text") if t.get("class") == "figure"]
    assert [r.findtext(f"{SVG}title") for r in bars] == [label for label, _ in chart.bars]
    for bar, value, text in zip(bars, expected, printed, strict=True):
        assert float(bar.get("width", "nan")) == pytest.approx(
            BAR_WIDTH * value / max(expected), abs=0.01
        ), (chart.name, bar.findtext(f"{SVG}title"))
        figure = float(text.split()[0].replace(",", ""))
        assert figure == pytest.approx(value, abs=0.5 if value >= 100 else 0.005), text


def test_a_missing_figure_names_the_file_and_the_key(tmp_path: Path) -> None:
    chart = CHARTS[0]
    document = json.loads((RESULTS / chart.source).read_text())
    missing = chart.bars[1][1]
    del document["scenarios"][chart.scenario][missing]
    (tmp_path / chart.source).write_text(json.dumps(document))
    with pytest.raises(ValueError, match=rf"{chart.source}.*{missing}.*benchmarks\.cycle"):
        render(chart, tmp_path)
