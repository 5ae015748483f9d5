"""The benchmark results as Markdown tables."""

from __future__ import annotations

from typing import Any

from benchmarks.scenarios import LATENCY_SECONDS, MOST_REPEATS


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    lines = _machine(report)
    if report["latency"]:
        lines += _latency(report)
    if report["throughput"]:
        lines += _throughput(report)
    if report["score"]:
        lines += _score(report)
    if report["chunk_sizes"]:
        lines += _chunk_sizes(report)
    if report.get("first_call"):
        lines += _first_call(report)
    if report.get("tasks"):
        lines += _tasks(report)
    if report.get("registered"):
        lines += _registered(report)
    for r in report["skipped"]:
        lines.append(f"- skipped {r['method']} on {r['model']}: {r['reason']}")
    return "\n".join(lines).rstrip() + "\n"


def _machine(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    env = ", ".join(f"{k}={v}" for k, v in m["environment"].items()) or "none set"
    return [
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads",
        f"- capabilities (camkit.engine.accel.capabilities()): {m['capabilities_summary']}; "
        f"bfloat16 flags: {', '.join(m['capabilities']['flags']) or 'none found'}",
        f"- ISA environment variables: {env}",
        f"- torch {m['torch']}, Python {m['python']}, {m['platform']}",
        f"- load average (1, 5, 15 min) before: {report['load_before']}, "
        f"after: {report['load_after']}; total {report['seconds']:.0f} s "
        f"({report['cpu_seconds']:.0f} CPU s)",
        "",
    ]


def _layout(r: dict[str, Any]) -> str:
    return "nhwc" if r.get("channels_last") else "as given"


def _latency(report: dict[str, Any]) -> list[str]:
    s = report["settings"]
    lines = [
        "## Activation and gradient methods",
        "",
        f"Median of {s['repeats']} runs or more (as many as fill about "
        f"{LATENCY_SECONDS:.0f} s, at most {MOST_REPEATS}) after {s['warmup']} warm-up runs; "
        "camkit and the bare model interleaved. The model's cost is its forward passes "
        "(activation methods) or forward + backward to the layer (gradient methods; a forward "
        "whose gradients the method never reads gets no backward), plus, for Smooth "
        "Grad-CAM++, drawing its Gaussian noise. camkit's forward gets a channels-last copy "
        "of the input where torch's CPU convolutions run that faster (layout nhwc): "
        "same-layout ratio is camkit against the model's passes with the input laid out "
        "that way, i.e. camkit's own cost apart from what the layout saves.",
        "",
        "| method | model | batch | layout | camkit ms | model ms | ratio | CPU-time ratio "
        "| same-layout ratio | images/s |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["latency"]:
        lines.append(
            f"| {r['method']} | {r['model']} | {r['batch']} | {_layout(r)} "
            f"| {r['camkit_ms']:.1f} | {r['model_ms']:.1f} | {r['ratio']:.3f} "
            f"| {r['cpu_ratio']:.3f} | {r['layout_ratio']:.3f} | {r['images_per_s']:.1f} |"
        )
    return [*lines, ""]


def _throughput(report: dict[str, Any]) -> list[str]:
    s = report["settings"]
    lines = [
        "## Many images",
        "",
        f"One call on a batch; median of {s['throughput_repeats']} runs after a warm-up "
        "run, interleaved with the bare model's passes.",
        "",
        "| method | model | batch | layout | camkit images/s | model images/s | ratio "
        "| same-layout ratio |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in report["throughput"]:
        lines.append(
            f"| {r['method']} | {r['model']} | {r['batch']} | {_layout(r)} "
            f"| {r['images_per_s']:.1f} | {r['model_images_per_s']:.1f} | {r['ratio']:.3f} "
            f"| {r['layout_ratio']:.3f} |"
        )
    return [*lines, ""]


def _score(report: dict[str, Any]) -> list[str]:
    s = report["settings"]
    precisions = s["precisions"]
    head = "".join(f" | {p} s | {p} speed-up | {p} r | {p} runs as" for p in precisions)
    lines = [
        "## Score family",
        "",
        f"Median of {s['score_repeats']} runs after a warm-up call, interleaved. Limit: "
        "C x N bare forwards (fp32, the model as given) in chunks of the run option "
        "batch_size; ratio = exact / limit. For each reduced precision: its time, its speed-up "
        'over exact (`precision="fp32"`), the Pearson r of its maps against exact mode\'s '
        "(the lowest over the batch), and what the engine ran (docs/methods.md, Precision). "
        "Peak: rise of peak RSS during one exact call, and during bare channels-last chunk "
        "forwards, each in a fresh process.",
        "",
        f"| method | model | C x N | forwarded | exact s | limit s | ratio{head} "
        "| peak MiB: call / forwards |",
        "|---|---|---:|---:|---:|---:|---:" + "|---:|---:|---:|---" * len(precisions) + "|---|",
    ]
    for r in report["score"]:
        peaks = " / ".join(
            "-" if r.get(k) is None else f"{r[k]:.0f}" for k in ("peak_mib", "forwards_peak_mib")
        )
        cells = "".join(
            f" | {r[p]['s']:.2f} | {r[p]['speedup']:.2f}x | {r[p]['pearson']:.4f} | {r[p]['mode']}"
            for p in precisions
        )
        lines.append(
            f"| {r['method']} | {r['model']} | {r['channels']} x {r['samples']} "
            f"| {r['forwarded']} | {r['exact_s']:.2f} | {r['limit_s']:.2f} "
            f"| {r['ratio']:.3f}{cells} | {peaks} |"
        )
    if any(r["forwarded"] < r["nominal_forwards"] for r in report["score"]):
        lines += [
            "",
            "Forwarded below C x N: identical masks of an image (constant channels; "
            "IS-CAM's first step, the all-zero input) are forwarded once.",
        ]
    return [*lines, ""]


def _chunk_sizes(report: dict[str, Any]) -> list[str]:
    precisions = report["settings"]["precisions"]
    lines = [
        "## Chunk size",
        "",
        "One forward of a channels-last chunk, per image: fp32 through the model as given, "
        "each reduced precision as the scoring service runs it.",
        "",
        "| model | batch size | fp32 ms/image"
        + "".join(f" | {p} ms/image" for p in precisions)
        + " |",
        "|---|---:|---:" + "|---:" * len(precisions) + "|",
    ]
    for r in report["chunk_sizes"]:
        cells = "".join(f" | {r[f'{p}_ms_per_image']:.2f}" for p in precisions)
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['fp32_ms_per_image']:.2f}{cells} |")
    return [*lines, ""]


def _first_call(report: dict[str, Any]) -> list[str]:
    lines = [
        "## First call on a fresh model",
        "",
        f"Median of {report['settings']['score_repeats']} runs after one untimed round, exact "
        "and auto interleaved, "
        "each on a freshly built model (no copy, calibration or forward time kept): what "
        '`precision="auto"` pays for its one-off preparations. It builds a copy only where '
        "the call's forwards win its cost back, so a small job runs as exact does.",
        "",
        "| method | model | layer | batch | fp32 s | auto s | auto speed-up | auto r "
        "| int8 built |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["first_call"]:
        lines.append(
            f"| {r['method']} | {r['model']} | {r['layer']} | {r['batch']} "
            f"| {r['fp32_s']:.3f} | {r['auto_s']:.3f} | {r['speedup']:.2f}x "
            f"| {r['pearson']:.4f} | {'yes' if r['int8'] else 'no'} |"
        )
    return [*lines, ""]


def _tasks(report: dict[str, Any]) -> list[str]:
    lines = [
        "## Detection and segmentation",
        "",
        "torchvision's Faster R-CNN MobileNetV3-Large 320 FPN (`DetectionTarget` on its top "
        "box; 100 proposals before NMS, 50 after) and LR-ASPP MobileNetV3-Large "
        "(`SegmentationTarget.predicted`), weights=None, "
        "one image. The model's cost: forward + backward of the same target to the layer "
        "(gradient methods), 1 + C bare forwards, the C in chunks of the run option batch_size "
        "(Score family); forwarded: the rows camkit forwarded (identical masks once).",
        "",
        "| task | method | layer | pixels | forwards | forwarded | camkit ms | model ms | ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["tasks"]:
        lines.append(
            f"| {r['task']} | {r['method']} | {r['layer']} | {r['size']} | {r['forwards']} "
            f"| {r['forwarded']} "
            f"| {r['camkit_ms']:.1f} | {r['model_ms']:.1f} | {r['ratio']:.3f} |"
        )
    return [*lines, ""]


def _registered(report: dict[str, Any]) -> list[str]:
    lines = [
        "## Methods by registered name",
        "",
        "Baseline: `input` forward + backward to the input, `layer` forward + backward to "
        "the layer, `forward` one forward, `windows` SESS's window forwards plus a forward + "
        "backward to the layer per window. A name the registry lacks is not run.",
        "",
        "| method | model | layer | baseline | camkit ms | model ms | ratio |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in report["registered"]:
        if r["status"] != "ran":
            lines.append(f"| {r['method']} | | | | | | {r['status']} |")
            continue
        lines.append(
            f"| {r['method']} | {r['model']} | {r['layer']} | {r['baseline']} "
            f"| {r['camkit_ms']:.1f} | {r['model_ms']:.1f} | {r['ratio']:.3f} |"
        )
    return [*lines, ""]
