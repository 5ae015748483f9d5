"""``report.html``: one static page with the run's metadata, metric means and pictures.

Pictures are embedded as base64 PNGs and the style is inline, so the file opens from disk,
moves around alone, and needs no server and no network.
"""

from __future__ import annotations

import base64
import html
from typing import Any

import numpy as np

from camkit.experiment.config import ExperimentConfig
from camkit.experiment.data import Source
from camkit.experiment.files import dumps_toml, png_bytes
from camkit.viz import overlay, to_pil

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #f3f3f3; }
td.name, th.name { text-align: left; }
.grid td { text-align: center; font-size: 12px; }
.grid img { width: 128px; height: auto; image-rendering: pixelated; display: block; }
.muted { color: #777; }
"""


def render(
    config: ExperimentConfig,
    source: Source,
    results: dict[str, dict[str, np.ndarray]],
    maps: dict[str, np.ndarray],
    summary: dict[str, Any],
) -> str:
    """The report's HTML.

    Args:
        results: per method, the shards' arrays (without maps).
        maps: per method, ``(N, H, W)`` maps of the first ``N`` images, those shown.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>camkit report</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>camkit experiment report</h1>",
        _metadata(config, summary),
        "<h2>Metrics (mean, with the number of images)</h2>",
        _summary_table(config, summary),
        "<h2>Images</h2>",
        _grid(config, source, results, maps),
        "<details><summary>resolved configuration</summary><pre>",
        _e(dumps_toml(config.resolved())),
        "</pre></details>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _metadata(config: ExperimentConfig, summary: dict[str, Any]) -> str:
    rows = {
        "config": config.source or "(in code)",
        "model": config.model.source,
        "data": f"{config.data.source} ({summary['images']} images)",
        "methods": ", ".join(f"{m.id} ({m.name})" for m in config.methods),
        "targets": config.targets,
        **summary.get("run", {}),
    }
    if "model_accuracy" in summary:
        rows["model accuracy"] = f"{summary['model_accuracy']:.3f}"
    body = "".join(
        f'<tr><th class="name">{_e(k)}</th><td class="name">{_e(v)}</td></tr>'
        for k, v in rows.items()
    )
    return f"<table>{body}</table>"


#: Which direction is better, shown in the table's header.
_BETTER = {
    "average_drop": "lower is better",
    "increase_in_confidence": "higher is better",
    "deletion": "lower is better",
    "insertion": "higher is better",
    "pointing_game": "higher is better",
    "energy_pointing_game": "higher is better",
}


def _summary_table(config: ExperimentConfig, summary: dict[str, Any]) -> str:
    names = list(config.metrics.compute)
    head = '<tr><th class="name">method</th>' + "".join(
        f'<th title="{_BETTER[n]}">{_e(n)} {"↓" if _BETTER[n].startswith("lower") else "↑"}</th>'
        for n in names
    )
    rows = [head + "</tr>"]
    entries = list(summary["methods"].items())
    entries += [(f"{k} baseline", v) for k, v in summary.get("baselines", {}).items()]
    for method, stats in entries:
        cells = []
        for name in names:
            stat = stats.get(name)
            if stat is None or stat["mean"] is None:
                cells.append('<td class="muted">–</td>')
            else:
                cells.append(
                    f'<td>{stat["mean"]:.4f} <span class="muted">({stat["count"]})</span></td>'
                )
        rows.append(f'<tr><td class="name">{_e(method)}</td>{"".join(cells)}</tr>')
    return f"<table>{''.join(rows)}</table>"


def _img(picture: Any) -> str:
    data = base64.b64encode(png_bytes(picture)).decode("ascii")
    return f'<img alt="" src="data:image/png;base64,{data}">'


def _grid(
    config: ExperimentConfig,
    source: Source,
    results: dict[str, dict[str, np.ndarray]],
    maps: dict[str, np.ndarray],
) -> str:
    count = min(config.output.report_images, len(source))
    if count == 0:
        return '<p class="muted">(no images: output.report_images is 0)</p>'
    batch = source.batch(range(count))
    classes = source.classes
    methods = list(results)
    head = "<tr><th>image</th>" + "".join(f"<th>{_e(m)}</th>" for m in methods) + "</tr>"
    rows = [head]
    for row in range(count):
        first = results[methods[0]]
        label = int(first["label"][row])
        caption = _e(batch.ids[row])
        if label >= 0:
            caption += f"<br>label: {_e(_class(classes, label))}"
        cells = [f"<td>{_img(to_pil(batch.images[row]))}{caption}</td>"]
        for method in methods:
            data = results[method]
            picture = overlay(
                batch.images[row], maps[method][row].astype(np.float32),
                alpha=config.output.alpha, cmap=config.output.colormap,
            )  # fmt: skip
            lines = [
                f"predicted {_e(_class(classes, int(data['predicted'][row])))}, "
                f"target {_e(_class(classes, int(data['target'][row])))}"
            ]
            for name in config.metrics.compute:
                value = float(data[f"metric_{name}"][row])
                if not np.isnan(value):
                    lines.append(f"{_e(name)}: {value:.3f}")
            cells.append(f"<td>{_img(picture)}{'<br>'.join(lines)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="grid">{"".join(rows)}</table>'


def _class(classes: tuple[str, ...] | None, index: int) -> str:
    return classes[index] if classes is not None and 0 <= index < len(classes) else str(index)
