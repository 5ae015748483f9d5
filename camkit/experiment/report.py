"""``report.html``: one static page a reader can use in a minute.

What it shows: the metric table (mean, 95% bootstrap interval, the best method per metric
marked, chance levels beside it, each method's layers and time), the deletion and insertion
curves (mean and interquartile band over the images, inline SVG), each metric's distribution
per method, a colour bar with the normalization stated, the settings that change the
numbers, the images that could not be read (``data.on_error = "skip"``), and a browser over
every image (sortable, filterable, worst cases, click to enlarge).

The page's style, script and plots are inline: it needs no network and no server. Pictures
are files beside it in ``report/`` (the input image and the colour-mapped map of every image
and method; overlays are linked from ``overlays/`` where the run wrote PNGs, else written to
``report/`` too), lazily loaded: embedding them as base64 would make the page grow ~10 KB per
64-px picture (~50 MB for 1,000 images and four methods), linking keeps it near 0.6 KB per image.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camkit.experiment import files
from camkit.experiment.compute import ARCC_PARTS, SANITY
from camkit.experiment.config import ExperimentConfig, MetricsSpec
from camkit.experiment.data import Source
from camkit.experiment.folder import REPORT, REPORT_INPUT
from camkit.experiment.stats import LOWER_IS_BETTER, RESAMPLES
from camkit.experiment.task import EXPLAINED_COLOUR, TRUTH_COLOUR, ground_truth_of, outline
from camkit.viz import colormap, overlay, to_pil

ASSETS = REPORT
_HERE = Path(__file__).parent
#: Method colours (Okabe & Ito's palette, told apart with colour-blindness); baselines grey.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
CHANCE = "#8a8a8a"
#: Readable names of the metrics, used once per table or plot.
LABELS = {
    "average_drop": "average drop",
    "increase_in_confidence": "increase in confidence",
    "deletion": "deletion AUC",
    "insertion": "insertion AUC",
    "pointing_game": "pointing game",
    "energy_pointing_game": "energy pointing game",
    "road_morf": "ROAD MoRF",
    "road_lerf": "ROAD LeRF",
    "road_combined": "ROAD combined",
    "cam_mult_confidence_change": "confidence change, map-multiplied",
    "arcc": "ARCC",
    "arcc_coherency": "ARCC coherency",
    "arcc_complexity": "ARCC complexity",
    "arcc_confidence": "ARCC confidence",
    "sanity_cascading_spearman": "sanity, cascading: Spearman",
    "sanity_cascading_ssim": "sanity, cascading: SSIM",
    "sanity_independent_spearman": "sanity, independent: Spearman",
    "sanity_independent_ssim": "sanity, independent: SSIM",
}


def write(
    folder: Path,
    config: ExperimentConfig,
    source: Source,
    results: dict[str, dict[str, np.ndarray]],
    chance: dict[str, dict[str, np.ndarray]],
    map_files: dict[str, list[Path]],
    summary: dict[str, Any],
) -> None:
    """Write ``report.html`` and its pictures into ``folder``.

    Args:
        source: the images that were explained (those skipped left out), in ``results``'
            order.
        results: per method, the shards' arrays (without maps), in image order.
        chance: per baseline, its shards' arrays (``{}`` without baselines).
        map_files: per method, its shard files, from which the maps are read one at a time.
        summary: what ``summary.json`` holds.
    """
    count = len(source)
    if config.output.report_images is not None:
        count = min(count, config.output.report_images)
    kept = next(iter(results.values()))["index"][:count]
    overlays = _write_pictures(folder, config, source, map_files, kept.tolist())
    page = render(config, source, results, chance, summary, count, overlays)
    files.write_text(folder / "report.html", page)


def _write_pictures(
    folder: Path,
    config: ExperimentConfig,
    source: Source,
    map_files: dict[str, list[Path]],
    shown: list[int],
) -> str:
    """Input, map and overlay pictures of the images ``shown`` (their indices in the data,
    the first of ``source``); returns the overlays' folder relative to the report
    (``overlays`` or ``report``).

    Pictures that exist are kept: they follow from the shards, which never change once
    written, so a resumed run only adds the new ones.
    """
    linked = config.output.overlays and "png" in config.output.formats
    position = {index: row for row, index in enumerate(shown)}
    for method, paths in map_files.items():
        for path in paths:
            with np.load(path, allow_pickle=False) as data:
                indices, maps = data["index"], data["maps"]
                truth = {k: data[k] for k in _TRUTH if k in data.files}
            wanted = [(i, int(k)) for i, k in enumerate(indices) if int(k) in position]
            if not wanted:
                continue
            batch = source.batch([position[k] for _, k in wanted])
            images = dict(zip(batch.indices, batch.images))
            rows = {index: row for row, index in enumerate(batch.indices)}
            for i, index in wanted:
                if index not in images:  # unreadable since the run: the page shows no picture
                    continue
                name = f"{index:06d}.png"
                image = images[index]
                targets = [
                    folder / ASSETS / REPORT_INPUT / name,
                    folder / ASSETS / method / f"map-{name}",
                ]
                if not linked:
                    targets.append(folder / ASSETS / method / name)
                heat = maps[i].astype(np.float32)
                drawn = None
                if config.task.kind != "classification":
                    arrays = {k: v[i : i + 1] for k, v in truth.items()}
                    masks = batch.masks
                    sub = None if masks is None else masks[rows[index] : rows[index] + 1]
                    drawn = ground_truth_of(config.task.kind, sub, arrays, 0)
                for kind, target in enumerate(targets):
                    if not target.exists():
                        picture = _picture(kind, image, heat, config)
                        if drawn is not None and kind != 1:  # the map itself stays clean
                            picture = outline(picture, **drawn)
                        files.write_image(target, picture)
    return "overlays" if linked else ASSETS


#: The shard arrays the pictures' ground-truth outlines come from.
_TRUTH = ("box", "explained_box", "target")


def _picture(kind: int, image: Any, heat: np.ndarray, config: ExperimentConfig) -> Any:
    """The input (0), the colour-mapped map (1) or the overlay (2) of one image."""
    cmap = config.output.colormap
    if kind == 0:
        return to_pil(image)
    if kind == 1:
        return to_pil(colormap(heat, cmap))
    return overlay(image, heat, config.output.alpha, cmap)


def render(
    config: ExperimentConfig,
    source: Source,
    results: dict[str, dict[str, np.ndarray]],
    chance: dict[str, dict[str, np.ndarray]],
    summary: dict[str, Any],
    count: int,
    overlays: str = "overlays",
) -> str:
    """The report's HTML, its pictures linked under ``report/`` and ``overlays``.

    Example:
        Not run by the tests: it needs a finished run's results and summary, which
        :func:`camkit.experiment.run` passes.
        >>> page = render(config, source, results, {}, summary, 8)  # doctest: +SKIP
    """
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(results)}
    size = config.data.image_size
    height = size if isinstance(size, int) else (size or (64, 64))[0]
    sanity_link = '<a href="#sanity">sanity checks</a> · ' if summary.get("sanity_steps") else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>camkit report: {_e(config.source.name if config.source else 'experiment')}"
        "</title>",
        f"<style>{_read('report.css')}</style></head><body>",
        "<header><h1>camkit experiment report</h1>",
        f"<p>{_headline(config, summary)}</p></header>",
        '<nav aria-label="sections"><a href="#metrics">metrics</a> · <a href="#curves">'
        f'curves</a> · {sanity_link}<a href="#distributions">distributions</a> · '
        '<a href="#images">images</a> · <a href="#settings">settings</a></nav>',
        '<section id="metrics"><h2>Metrics</h2>',
        _metric_table(config, summary, results),
        "</section>",
        '<section id="curves"><h2>Deletion and insertion curves</h2>',
        _curves(config, results, chance, colours),
        "</section>",
        _sanity(config, summary),
        '<section id="distributions"><h2>Distributions over the images</h2>',
        _distributions(config, results, chance, colours),
        "</section>",
        '<section id="images"><h2>Images</h2>',
        _skipped(summary),
        _colour_bar(config),
        _browser(config, source, results, count, overlays, pixelated=height <= 128),
        "</section>",
        '<section id="settings"><h2>Settings</h2>',
        _settings(config, summary),
        "<details><summary>resolved configuration</summary><pre>",
        _e(files.dumps_toml(config.resolved())),
        "</pre></details></section>",
        f"<script>{_read('report.js')}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _arrow(name: str) -> str:
    return "↓" if name in LOWER_IS_BETTER else "↑"


def _headline(config: ExperimentConfig, summary: dict[str, Any]) -> str:
    bits = [
        f"{summary['images']} images of {_e(config.data.source)}"
        + (f" ({len(summary['skipped'])} unreadable, left out)" if summary.get("skipped") else ""),
        f"model {_e(config.model.source)}",
        f"{len(config.methods)} methods",
        f"targets: {_e(config.targets)}",
    ]
    if "model_accuracy" in summary:
        bits.append(f"model accuracy {summary['model_accuracy']:.3f}")
    run = summary.get("run", {})
    if "finished" in run:
        bits.append(f"finished {_e(run['finished'])} (camkit {_e(run.get('camkit', '?'))})")
    return " · ".join(bits)


def _number(stat: dict[str, Any] | None) -> str:
    if stat is None or stat.get("mean") is None:
        return '<td class="muted">–</td>'
    ci = stat.get("ci95")
    band = f' <span class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</span>' if ci else ""
    return f"<td>{stat['mean']:.3f}{band}</td>"


def _metric_table(
    config: ExperimentConfig, summary: dict[str, Any], results: dict[str, dict[str, np.ndarray]]
) -> str:
    names = list(config.metrics.compute)
    best = summary.get("best", {})
    head = "".join(f'<th scope="col">{_e(LABELS[n])} {_arrow(n)}</th>' for n in names)
    rows = [
        '<tr><th scope="col" class="name">method</th><th scope="col" class="name">layer</th>'
        f'<th scope="col">time (s)</th>{head}</tr>'
    ]
    for method, stats in summary["methods"].items():
        spec = next(m for m in config.methods if m.id == method)
        layers = summary.get("layers", {}).get(method) or [spec.layer or "auto"]
        seconds = summary.get("seconds", {}).get(method)
        cells = []
        for name in names:
            cell = _number(stats.get(name))
            if best.get(name) == method:
                cell = cell.replace("<td>", '<td class="best"><span class="sr">best: </span>', 1)
            cells.append(cell)
        time = "–" if seconds is None else f"{seconds:.1f}"
        rows.append(
            f'<tr><th scope="row" class="name">{_e(method)}'
            f"{'' if spec.name == method else f' <span class=muted>({_e(spec.name)})</span>'}</th>"
            f'<td class="name">{_e(", ".join(layers))}</td><td>{time}</td>{"".join(cells)}</tr>'
        )
    for name, stats in summary.get("baselines", {}).items():
        label = name.replace("_", " ")
        numbers = "".join(_number(stats.get(n)) for n in names)
        rows.append(
            f'<tr class="chance"><th scope="row" class="name">chance: {_e(label)}</th>'
            f'<td class="name muted">–</td><td class="muted">–</td>{numbers}</tr>'
        )
    note = (
        f"Mean over the images and its 95% bootstrap interval ({RESAMPLES} resamples of the "
        f"images, seed {config.seed}); ↓ lower is better, ↑ higher is better; the best method "
        "per metric is <strong class=best-key>marked</strong>. Chance levels: the same "
        "metrics on seeded random maps (<em>random</em>: uniform noise per pixel; "
        "<em>blurred random</em>: noise blurred to CAM-sized blobs)"
    )
    note_time = (
        "Time: seconds spent making the maps, metrics excluded (the first method also pays "
        "for warming up)"
    )
    if "centre" in summary.get("baselines", {}):
        note += "; <em>centre</em>: a map peaked at the image centre (pointing games only)"
    table = f'<div class="scroll"><table class="metrics">{"".join(rows)}</table></div>'
    return f'<p class="note">{note}. {note_time}.</p>{table}'


# -- plots ---------------------------------------------------------------------------------

_W, _H, _L, _B = 520, 260, 44, 34  # width, height, left and bottom margins of a plot


def _curves(
    config: ExperimentConfig,
    results: dict[str, dict[str, np.ndarray]],
    chance: dict[str, dict[str, np.ndarray]],
    colours: dict[str, str],
) -> str:
    modes = [m for m in ("deletion", "insertion") if m in config.metrics.compute]
    if not modes:
        return '<p class="muted">(deletion and insertion are not among the metrics computed)</p>'
    first = next(iter(results.values()))
    if not all(f"curve_{m}" in first for m in modes):
        return '<p class="muted">(this run\'s shards hold no curves: they predate them)</p>'
    substrate = {
        "deletion": config.metrics.deletion_substrate,
        "insertion": config.metrics.insertion_substrate,
    }
    figures = []
    for mode in modes:
        series = [(m, colours[m], d[f"curve_{mode}"], False) for m, d in results.items()]
        series += [
            (f"chance: {n.replace('_', ' ')}", CHANCE, d[f"curve_{mode}"], True)
            for n, d in chance.items()
            if f"curve_{mode}" in d
        ]
        title = (
            f"{mode.capitalize()}: confidence as the most salient pixels are "
            f"{'removed' if mode == 'deletion' else 'restored'} ({substrate[mode]} substrate)"
        )
        figures.append(_curve_plot(title, series))
    note = (
        "Solid line: mean over the images; band: the middle half of the images (25th to 75th "
        f"percentile); x: share of pixels changed, in steps of {config.metrics.step} pixels; "
        f"y: the target's {'probability' if config.metrics.softmax else 'score'}."
    )
    return f'<p class="note">{note}</p><div class="plots">{"".join(figures)}</div>'


def _curve_plot(title: str, series: list[tuple[str, str, np.ndarray, bool]]) -> str:
    top = max(1.0, max(float(np.nanmax(c)) for _, _, c, _ in series))
    bottom = min(0.0, min(float(np.nanmin(c)) for _, _, c, _ in series))

    def xy(x: float, y: float) -> str:
        return "{:.1f},{:.1f}".format(*_place(x, y, bottom, top))

    shapes = [_axes(bottom, top, "pixels changed", "confidence")]
    legend = []
    for label, colour, curves, dashed in series:
        xs = np.linspace(0, 1, curves.shape[1])
        mean = np.nanmean(curves, axis=0)
        if not dashed:
            low, high = np.nanpercentile(curves, [25, 75], axis=0)
            ring = [xy(x, y) for x, y in zip(xs, low)] + [
                xy(x, y) for x, y in zip(xs[::-1], high[::-1])
            ]
            shapes.append(
                f'<polygon points="{" ".join(ring)}" fill="{colour}" fill-opacity="0.1"/>'
            )
        dash = ' stroke-dasharray="5 4"' if dashed else ""
        shapes.append(
            f'<polyline points="{" ".join(xy(x, y) for x, y in zip(xs, mean))}" fill="none" '
            f'stroke="{colour}" stroke-width="2"{dash}><title>{_e(label)}</title></polyline>'
        )
        legend.append(_key(label, colour, dashed))
    return _figure(title, "".join(shapes), legend)


def _place(x: float, y: float, bottom: float, top: float) -> tuple[float, float]:
    """Plot coordinates of ``(x, y)``, ``x`` in ``[0, 1]``, ``y`` in ``[bottom, top]``."""
    return _L + x * (_W - _L - 10), 10 + (top - y) / (top - bottom) * (_H - _B - 10)


def _text(x: float, y: float, text: str, cls: str = "tick", anchor: str = "middle") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}">{_e(text)}</text>'


def _axes(bottom: float, top: float, xlabel: str, ylabel: str) -> str:
    out = [f'<rect x="{_L}" y="10" width="{_W - _L - 10}" height="{_H - _B - 10}" class="frame"/>']
    for t in np.linspace(0, 1, 5):
        x, y = _place(t, bottom, bottom, top)
        out.append(_text(x, y + 14, f"{t:.2g}"))
        value = bottom + t * (top - bottom)
        x, y = _place(0, value, bottom, top)
        out.append(_text(x - 4, y + 4, f"{value:.2g}", anchor="end"))
    out.append(_text((_W + _L) / 2, _H - 4, xlabel, "label"))
    middle = (_H - _B) / 2 + 10
    out.append(f'<g transform="rotate(-90 12 {middle})">{_text(12, middle, ylabel, "label")}</g>')
    return "".join(out)


def _key(label: str, colour: str, dashed: bool) -> str:
    style = "dashed" if dashed else "solid"
    return f'<li><span class="swatch {style}" style="border-color:{colour}"></span>{_e(label)}</li>'


def _figure(title: str, svg: str, legend: Sequence[str], height: int = _H) -> str:
    return (
        f'<figure><figcaption>{_e(title)}</figcaption><svg viewBox="0 0 {_W} {height}" '
        f'role="img" aria-label="{_e(title)}">{svg}</svg><ul class="legend">{"".join(legend)}'
        "</ul></figure>"
    )


def _distributions(
    config: ExperimentConfig,
    results: dict[str, dict[str, np.ndarray]],
    chance: dict[str, dict[str, np.ndarray]],
    colours: dict[str, str],
) -> str:
    bins = 20
    figures = []
    for name in config.metrics.compute:
        rows = [(m, colours[m], d[f"metric_{name}"]) for m, d in results.items()]
        rows += [
            (f"chance: {n.replace('_', ' ')}", CHANCE, d[f"metric_{name}"])
            for n, d in chance.items()
        ]
        rows = [(m, c, v[~np.isnan(v)]) for m, c, v in rows]
        if not any(v.size for _, _, v in rows):
            continue
        low = min(0.0, *(float(v.min()) for _, _, v in rows if v.size))
        high = max(1.0, *(float(v.max()) for _, _, v in rows if v.size))
        edges = np.linspace(low, high, bins + 1)
        band = 30
        height = 10 + band * len(rows) + _B
        width = _W - 150 - 10
        shapes = []
        for r, (label, colour, values) in enumerate(rows):
            y0 = 10 + r * band
            shapes.append(_text(144, y0 + band / 2 + 4, label, anchor="end"))
            if not values.size:
                continue
            counts, _ = np.histogram(values, edges)
            scale = (band - 6) / counts.max()
            for b, c in enumerate(counts):
                if c:
                    h = max(2.0, c * scale)  # one image stays visible beside hundreds
                    tip = f"{label}: {c} images in [{edges[b]:.3g}, {edges[b + 1]:.3g})"
                    shapes.append(
                        f'<rect x="{150 + b * width / bins:.1f}" y="{y0 + band - 3 - h:.1f}" '
                        f'width="{width / bins - 1:.1f}" height="{h:.1f}" fill="{colour}">'
                        f"<title>{_e(tip)}</title></rect>"
                    )
            mean = 150 + (float(values.mean()) - low) / (high - low) * width
            shapes.append(
                f'<line x1="{mean:.1f}" x2="{mean:.1f}" y1="{y0 + 2}" y2="{y0 + band - 2}" '
                'class="mean"/>'
            )
        for t in np.linspace(0, 1, 5):
            shapes.append(_text(150 + t * width, height - _B + 14, f"{low + t * (high - low):.2g}"))
        title = f"{LABELS[name]} {_arrow(name)}: images per bin, black tick at the mean"
        figures.append(_figure(title, "".join(shapes), [], height))
    return f'<div class="plots">{"".join(figures)}</div>'


def _sanity(config: ExperimentConfig, summary: dict[str, Any]) -> str:
    """Per sanity check, a table of each method's mean similarity after each step."""
    steps = summary.get("sanity_steps", {})
    if not steps:
        return ""
    tables = []
    for name in config.metrics.compute:
        rows = [(m, s) for m, s in steps.items() if name in s]
        if not rows:
            continue
        layers = rows[0][1]["layers"]
        head = "".join(f'<th scope="col">{_e(layer)}</th>' for layer in layers)
        body = "".join(
            f'<tr><th scope="row" class="name">{_e(method)}</th>'
            + "".join(_number({"mean": value}) for value in values[name])
            + "</tr>"
            for method, values in rows
        )
        tables.append(
            f'<h3>{_e(LABELS[name])} ↓</h3><div class="scroll"><table class="metrics">'
            f'<tr><th scope="col" class="name">method / module re-drawn</th>{head}</tr>{body}'
            "</table></div>"
        )
    note = (
        "Similarity of each method's maps before and after its model's parameters are "
        "re-drawn (seed "
        f"{config.metrics.sanity_seed}), step by step from the output towards the input: "
        "<em>cascading</em> randomizes every module up to the one named, <em>independent</em> "
        "only the one named. Mean over the images; the metric table shows the last step. "
        "A method that explains the model, not just the image, falls towards 0 (lower is "
        "better); a constant map's Spearman correlation is undefined and left out."
    )
    return (
        '<section id="sanity"><h2>Sanity checks: model randomization</h2>'
        f'<p class="note">{note}</p>{"".join(tables)}</section>'
    )


def _colour_bar(config: ExperimentConfig) -> str:
    steps = np.linspace(0, 1, 11)
    rgb = colormap(steps[None], config.output.colormap)[0]
    stops = "".join(
        f'<stop offset="{s:.1f}" stop-color="#{r:02x}{g:02x}{b:02x}"/>'
        for s, (r, g, b) in zip(steps, rgb.tolist())
    )
    return (
        '<div class="colourbar"><svg viewBox="0 0 300 34" role="img" aria-label="colour scale">'
        f'<defs><linearGradient id="cmap">{stops}</linearGradient></defs>'
        '<rect x="0" y="0" width="300" height="16" fill="url(#cmap)"/>'
        '<text x="0" y="30" class="tick">0 (map minimum)</text>'
        '<text x="300" y="30" class="tick" text-anchor="end">1 (map maximum)</text></svg>'
        f'<p class="note">Colormap {_e(config.output.colormap)}. Every map is normalized per '
        "image to [0, 1] (its minimum to 0, its maximum to 1), so colours compare places "
        "within one map, not strengths between maps. Overlays blend "
        f"{config.output.alpha:g} × colour with {1 - config.output.alpha:g} × image.</p></div>"
    )


# -- image browser -------------------------------------------------------------------------


def _browser(
    config: ExperimentConfig,
    source: Source,
    results: dict[str, dict[str, np.ndarray]],
    count: int,
    overlays: str,
    pixelated: bool,
) -> str:
    if count == 0:
        return '<p class="muted">(no images: output.report_images is 0)</p>'
    classes = source.classes
    if config.task.kind in ("detection", "segmentation"):
        # their class ids count from 1, 0 being the background
        classes = ("background", *classes) if classes is not None else None
    names = list(config.metrics.compute)
    first = next(iter(results.values()))
    images = []
    for row in range(count):
        label, predicted = int(first["label"][row]), int(first["predicted"][row])
        values = {m: [_finite(d[f"metric_{n}"][row]) for n in names] for m, d in results.items()}
        images.append(
            {
                "i": int(first["index"][row]),
                "id": str(first["id"][row]),
                "label": None if label < 0 else _class(classes, label),
                "predicted": _class(classes, predicted) if predicted >= 0 else "n/a",
                "target": _class(classes, int(first["target"][row])),
                # tasks without a predicted class (detection, segmentation, embeddings): none
                "correct": None if label < 0 or predicted < 0 else bool(predicted == label),
                "v": values,
            }
        )
    data = {
        "methods": list(results),
        "metrics": names,
        "labels": [LABELS[n] for n in names],
        "lower": [n in LOWER_IS_BETTER for n in names],
        "overlays": overlays,
        "assets": ASSETS,
        "total": len(source),
        "images": images,
    }
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    shown = (
        ""
        if count == len(source)
        else (
            f'<p class="note">The first {count} of {len(source)} images (output.report_images).</p>'
        )
    )
    labelled = any(i["correct"] is not None for i in images)
    shown += _task_note(config)
    return f"""{shown}
<div class="controls" role="group" aria-label="image browser controls">
<label>sort by <select id="sort"></select></label>
<button type="button" id="order" aria-label="sort order">worst first</button>
<label>show <select id="filter"><option value="all">all images</option>
{_CORRECTNESS if labelled else ""}
</select></label>
<label>where <select id="range-metric"></select></label>
<label>from <input id="range-low" type="number" step="any" inputmode="decimal" size="5"></label>
<label>to <input id="range-high" type="number" step="any" inputmode="decimal" size="5"></label>
<button type="button" id="worst">worst 20</button>
<button type="button" id="reset">show all</button>
</div>
<p id="status" class="note" aria-live="polite"></p>
<div class="scroll"><table class="grid{" pixelated" if pixelated else ""}" id="grid">
<thead></thead><tbody></tbody></table></div>
<dialog id="zoom" aria-labelledby="zoom-title"><div class="zoom-head"><h3 id="zoom-title"></h3>
<button type="button" id="zoom-close">close</button></div>
<div class="zoom-body" id="zoom-body"></div></dialog>
<script type="application/json" id="data">{text}</script>"""


def _task_note(config: ExperimentConfig) -> str:
    """What the outlines drawn on the pictures are (tasks other than classification)."""
    kind = config.task.kind
    if kind == "classification":
        return ""
    if kind == "segmentation":
        truth = "the ground-truth mask of the explained class"
    else:
        truth = "the ground-truth box (where the data has one)"
    note = f"{_swatch(TRUTH_COLOUR)} {truth}"
    if kind == "detection":
        note += (
            f"; {_swatch(EXPLAINED_COLOUR)} the box explained (task.box = {_e(config.task.box)})"
        )
    return f'<p class="note">Task: {_e(kind)}. Outlined on the inputs and the overlays: {note}.</p>'


def _swatch(colour: tuple[int, int, int]) -> str:
    hex_colour = "#" + "".join(f"{c:02x}" for c in colour)
    name = {(0, 255, 0): "green", (255, 0, 255): "magenta"}.get(colour, hex_colour)
    return f'<span style="color:{hex_colour}">&#9632;</span> {name}:'


_CORRECTNESS = (
    '<option value="correct">correct predictions</option>'
    '<option value="incorrect">incorrect predictions</option>'
)


def _finite(value: Any) -> float | None:
    value = float(value)
    return None if np.isnan(value) else round(value, 5)


def _skipped(summary: dict[str, Any]) -> str:
    """The images left out because they could not be read, with the reasons."""
    skipped = summary.get("skipped", [])
    if not skipped:
        return ""
    items = "".join(
        f"<li><code>{_e(s['image'])}</code> (image {s['index']}): {_e(s['reason'])}</li>"
        for s in skipped
    )
    return (
        f'<details class="note" id="skipped"><summary>{len(skipped)} image'
        f"{'s' if len(skipped) != 1 else ''} could not be read and "
        f'{"were" if len(skipped) != 1 else "was"} left out (data.on_error = "skip")</summary>'
        f"<ul>{items}</ul></details>"
    )


def _class(classes: tuple[str, ...] | None, index: int) -> str:
    return classes[index] if classes is not None and 0 <= index < len(classes) else str(index)


def _settings(config: ExperimentConfig, summary: dict[str, Any]) -> str:
    m = config.metrics
    size = config.data.image_size
    h, w = (size, size) if isinstance(size, int) else size or (0, 0)
    steps = -(-h * w // (m.step or 1))
    rows = {
        "seed": config.seed,
        "targets": config.targets,
        "image size": f"{h} × {w}",
        "normalization": f"mean {list(config.data.mean or ())}, std {list(config.data.std or ())}",
        "confidence": "softmax probability" if m.softmax else "raw score",
        "deletion / insertion step": f"{m.step} pixels ({steps} steps)",
        "deletion substrate": m.deletion_substrate,
        "insertion substrate": m.insertion_substrate,
        "blur sigma": f"{m.blur_sigma:g} (kernel 11 × 11)",
        "pointing game tolerance": f"{m.tolerance} pixels",
        "baselines": "on" if m.baselines else "off (metrics.baselines = false)",
        **_metric_settings(m),
        "bootstrap": f"{RESAMPLES} resamples, seed {config.seed}",
        "colormap, alpha": f"{config.output.colormap}, {config.output.alpha:g}",
        "methods": "; ".join(
            f"{s.id}: {s.name} {json.dumps(s.options) if s.options else ''}" for s in config.methods
        ),
        **{k: v for k, v in summary.get("run", {}).items()},
    }
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows.items())
    return f'<dl class="settings">{body}</dl>'


def _metric_settings(m: MetricsSpec) -> dict[str, str]:
    """The settings of ROAD, ARCC and the sanity checks, where they are computed."""
    wanted = set(m.compute)
    rows = {}
    if wanted & {"road_morf", "road_lerf", "road_combined", *ARCC_PARTS}:
        rows["ROAD / ARCC imputation noise"] = f"{m.road_noise:g} (standard deviation)"
    if wanted & {"road_morf", "road_lerf", "road_combined"}:
        rows["ROAD shares imputed"] = ", ".join(f"{f:g}" for f in m.road_removed)
    if wanted & set(ARCC_PARTS):
        rows["ARCC shares imputed"] = ", ".join(f"{f:g}" for f in m.arcc_removed)
    if wanted & set(SANITY):
        layers = ", ".join(m.sanity_layers) if m.sanity_layers else "every module with parameters"
        rows["sanity checks"] = f"{layers}, output first; seed {m.sanity_seed}"
    return rows


def _read(name: str) -> str:
    """The page's style or script, kept beside this module as plain CSS and JavaScript."""
    return (_HERE / name).read_text(encoding="utf-8")
