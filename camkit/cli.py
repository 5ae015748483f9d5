"""The ``camkit`` command line: ``explain``, ``run``, ``methods``, ``plugins``.

Imports stay inside the commands, so ``--version`` and ``--help`` answer without torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import camkit
from camkit.errors import CamkitError, ConfigError, InputError

if TYPE_CHECKING:
    from camkit.explainer import Explanation


#: The heading of the second table of ``camkit methods``.
EXPLAINERS_HEADING = "other explainers (not CAM methods: own result types)"


def _methods(args: argparse.Namespace) -> int:
    pattern = args.pattern
    # A plain name is looked up like method_info() does: aliases, any case, "did you mean".
    if pattern and not any(ch in pattern for ch in "*?["):
        return _method_detail(pattern, args.json)
    explainers = [camkit.explainer_info(n) for n in camkit.list_explainers(pattern)]
    # --json keeps its shape: a list of methods, or with --explainers a list of explainers.
    rows = [] if args.explainers else [camkit.method_info(n) for n in camkit.list_methods(pattern)]
    if args.json:
        if args.explainers:
            print(json.dumps([_explainer_dict(e) for e in explainers], indent=2))
        else:
            print(json.dumps([_info_dict(i) for i in rows], indent=2))
        return 0
    _note_broken_plugins()
    if not rows and not explainers:
        what = "explainer" if args.explainers else "method"
        nor = "" if args.explainers else " (nor does any explainer)"
        print(
            f"no {what} matches {pattern!r}{nor}; `camkit methods` lists them all",
            file=sys.stderr,
        )
        return 1
    if rows:
        _summary_table(rows)
    if explainers:
        if rows:
            print()
        print(EXPLAINERS_HEADING)
        _summary_table(explainers)
    return 0


def _summary_table(rows: Sequence[camkit.MethodInfo | camkit.ExplainerInfo]) -> None:
    _print_table(
        ("name", "needs", "source", "distribution", "summary"),
        [
            (i.name, _needs(i), _source(i.paper), f"{i.distribution} {i.version}", i.summary)
            for i in rows
        ],
    )


def _needs(info: camkit.MethodInfo | camkit.ExplainerInfo) -> str:
    """What a call costs beyond one forward pass: ``gradients`` (one backward pass),
    ``forwards`` (a forward pass per channel, mask or noisy copy), ``vit-attention`` (a vision
    transformer's attention blocks: other models are refused), several joined by ``+``, or
    ``activations`` (nothing more)."""
    needs = (
        ("gradients", info.needs_gradients),
        ("forwards", info.many_forwards),
        ("vit-attention", info.needs_attention),
    )
    parts = [name for name, needed in needs if needed]
    return "+".join(parts) or "activations"


def _source(paper: str) -> str:
    """``"Selvaraju 2017"`` from ``"Selvaraju et al., Grad-CAM: ..., ICCV 2017"``."""
    if not paper:
        return "-"
    # "A variant of Eigen-CAM: Muhammad & Yeasin, ..." names the variant's source after ": "
    author = paper.split(",")[0].rpartition(": ")[2].replace(" et al.", "").strip()
    years = re.findall(r"\b(?:19|20)\d\d\b", paper)
    if len(author.split()) > 4:  # a paper given by its title only: name its venue instead
        venue = re.search(r"\b(arXiv|[A-Z]{3,}[a-zA-Z]*)\b", paper.partition(",")[2])
        author = venue.group(1) if venue else "-"
    return f"{author} {years[-1]}" if years else author


def _info_dict(info: camkit.MethodInfo) -> dict[str, Any]:
    return {
        "kind": "method",
        "name": info.name,
        "aliases": list(info.aliases),
        "summary": info.summary,
        "paper": info.paper,
        "needs_gradients": info.needs_gradients,
        "many_forwards": info.many_forwards,
        "needs_attention": info.needs_attention,
        "needs": _needs(info),
        "distribution": info.distribution,
        "version": info.version,
        "config": info.schema(),
    }


def _explainer_dict(info: camkit.ExplainerInfo) -> dict[str, Any]:
    spec = info.spec
    return {
        "kind": "explainer",
        "name": info.name,
        "aliases": list(info.aliases),
        "summary": info.summary,
        "paper": info.paper,
        "needs_gradients": info.needs_gradients,
        "many_forwards": info.many_forwards,
        "needs": _needs(info),
        "distribution": info.distribution,
        "version": info.version,
        "target": spec.target,
        "function": spec.function or None,
        "returns": spec.returns,
        "import": spec.import_path(),
        "example": spec.example or None,
    }


def _print_header(info: camkit.MethodInfo | camkit.ExplainerInfo, kind: str = "") -> None:
    """The first lines of ``camkit methods NAME``: name, distribution, summary, paper, aliases."""
    print(f"{info.name} ({info.distribution} {info.version}){kind}")
    print(f"  {info.summary}")
    if info.paper:
        print(f"  paper: {info.paper}")
    if info.aliases:
        print(f"  aliases: {', '.join(info.aliases)}")


def _explainer_detail(info: camkit.ExplainerInfo, as_json: bool) -> int:
    spec = info.spec
    if as_json:
        print(json.dumps(_explainer_dict(info), indent=2))
        return 0
    _print_header(info, ": an explainer, not a CAM method")
    print(f"  needs: {_needs(info)}")
    print(f"  call: {spec.import_path()}")
    if spec.function:
        print(f"    or: {spec.import_path('function')}")
    if spec.example:
        print(f"  example: {spec.example}")
    module, _, qualname = spec.returns.partition(":")
    print(f"  returns: {qualname} ({module})")
    print("  not available through camkit.create, `camkit explain` or experiments")
    return 0


def _method_detail(name: str, as_json: bool) -> int:
    if _is_explainer(name):
        return _explainer_detail(camkit.explainer_info(name), as_json)
    info = camkit.method_info(name)
    if as_json:
        print(json.dumps(_info_dict(info), indent=2))
        return 0
    _print_header(info)
    print(f"  needs gradients: {'yes' if info.needs_gradients else 'no'}")
    print(f"  forward passes: {'one per channel, mask or sample' if info.many_forwards else 'one'}")
    if info.needs_attention:
        print("  models: vision transformers only (it reads their attention blocks)")
    schema = info.schema()
    props = schema.get("properties", {})
    if not props:
        print("  config: (no options)")
        return 0
    print("  config:")
    defs, required = schema.get("$defs", {}), set(schema.get("required", []))
    for key, spec in props.items():
        value = "(required)" if key in required else f"= {_default(info, key, spec)!r}"
        limits = _limits(spec, defs)
        extra = f"  ({', '.join(limits)})" if limits else ""
        print(f"    {key}: {_type_name(spec, defs)} {value}{extra}")
        if spec.get("description"):
            print(f"        {spec['description']}")
    return 0


def _is_explainer(name: str) -> bool:
    try:
        camkit.explainer_info(name)
    except CamkitError:
        return False
    return True


_JSON_TYPES = {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}
_BOUNDS = (
    ("exclusiveMinimum", "> {}"),
    ("minimum", ">= {}"),
    ("exclusiveMaximum", "< {}"),
    ("maximum", "<= {}"),
    ("multipleOf", "multiple of {}"),
    ("minLength", "length >= {}"),
    ("maxLength", "length <= {}"),
    ("minItems", "items >= {}"),
    ("maxItems", "items <= {}"),
    ("pattern", "matches {!r}"),
)


def _default(info: camkit.MethodInfo, key: str, spec: dict[str, Any]) -> Any:
    """The schema's default, or the value of the field's ``default_factory``."""
    if "default" in spec:
        return spec["default"]
    field = info.config.model_fields.get(key)
    return None if field is None else field.get_default(call_default_factory=True)


def _resolved(spec: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = spec.get("$ref", "")
    return defs.get(ref.rsplit("/", 1)[-1], spec) if ref else spec


def _type_name(spec: dict[str, Any], defs: dict[str, Any]) -> str:
    """A Python-like reading of a JSON schema type: ``int``, ``float | None``, ``'a' | 'b'``."""
    spec = _resolved(spec, defs)
    if "enum" in spec:
        return " | ".join(repr(v) for v in spec["enum"])
    if "const" in spec:
        return repr(spec["const"])
    if "anyOf" in spec:
        return " | ".join(_type_name(s, defs) for s in spec["anyOf"])
    kind = spec.get("type", "any")
    if kind == "array" and "prefixItems" in spec:
        return "tuple[" + ", ".join(_type_name(s, defs) for s in spec["prefixItems"]) + "]"
    if kind == "array":
        return f"list[{_type_name(spec.get('items', {}), defs)}]"
    return "None" if kind == "null" else _JSON_TYPES.get(kind, str(kind))


def _limits(spec: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    """The constraints of a field, also those inside an ``X | None``."""
    members = [_resolved(spec, defs), *(_resolved(s, defs) for s in spec.get("anyOf", []))]
    return [fmt.format(m[key]) for m in members for key, fmt in _BOUNDS if key in m]


def _plugins(args: argparse.Namespace) -> int:
    plugins = camkit.list_plugins()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": p.name,
                        "distribution": p.distribution,
                        "version": p.version,
                        "status": p.status,
                        "methods": p.methods,
                        "explainers": p.explainers,
                        "error": _error_text(p),
                    }
                    for p in plugins
                ],
                indent=2,
            )
        )
        return 0
    _print_table(
        ("plugin", "distribution", "version", "status", "methods / error"),
        [
            (
                p.name,
                p.distribution,
                p.version,
                p.status,
                _provided(p) if p.status == "ok" else _error_text(p) or "",
            )
            for p in plugins
        ],
    )
    return 0


def _provided(plugin: camkit.PluginInfo) -> str:
    """``"a, b"``, then ``"; explainers: c"`` when the plugin has explainers."""
    text = ", ".join(plugin.methods)
    if plugin.explainers:
        text += ("; " if text else "") + "explainers: " + ", ".join(plugin.explainers)
    return text


def _error_text(plugin: camkit.PluginInfo) -> str | None:
    if plugin.status == "blocked":
        return "blocked by CAMKIT_DISABLE_PLUGINS"
    if plugin.error is None:
        return None
    return f"{type(plugin.error).__name__}: {plugin.error}"


def _note_broken_plugins() -> None:
    broken = [p.name for p in camkit.list_plugins() if p.status == "broken"]
    if broken:
        print(
            f"note: plugin(s) {', '.join(broken)} failed to load; `camkit plugins` shows why",
            file=sys.stderr,
        )


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns; the last column is not padded."""
    table = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(r[c]) for r in table) for c in range(len(header) - 1)]
    for row in table:
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip())


def _run(args: argparse.Namespace) -> int:
    from camkit.experiment import load_config, run

    config = load_config(args.config, overrides=args.overrides, output=args.output)
    try:
        result = run(config, overwrite=args.overwrite, progress=False if args.quiet else None)
    except KeyboardInterrupt:
        print(
            f"camkit: interrupted; finished shards are kept in {config.output.folder}: run the "
            "same command again to resume",
            file=sys.stderr,
        )
        return 130
    if result.rank == 0:
        print(
            f"{result.images} images, {result.computed} shards computed, {result.skipped} "
            f"resumed, in {result.seconds:.1f}s: {result.folder / 'report.html'}"
        )
    return 0


def _explain(args: argparse.Namespace) -> int:
    from camkit.experiment.models import load_model
    from camkit.explainer import explain
    from camkit.viz import check_colormap

    # Everything that can be checked cheaply is checked before the model loads.
    if not 0.0 <= args.alpha <= 1.0:
        raise ConfigError(f"--alpha: expected a number in [0, 1], got {args.alpha}")
    check_colormap(args.colormap)
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    if not methods:
        raise ConfigError(f"--method: expected method names, got {args.method!r}")
    for method in methods:
        camkit.method_info(method)
    missing = [image for image in args.images if not Path(image).is_file()]
    if missing:
        raise InputError(f"no image file at {', '.join(missing)}")
    loaded = load_model(args.model, args.weights)
    print(f"model: {loaded.source} (weights: {loaded.weights})")
    layer = None if args.layer in (None, "auto") else args.layer.split(",")
    output = Path(args.output)
    stems: dict[str, int] = {}
    for image in args.images:
        stem = Path(image).stem
        stems[stem] = stems.get(stem, 0) + 1
        name = stem if stems[stem] == 1 else f"{stem}-{stems[stem]}"
        result = explain(
            image, loaded, methods, layer=layer, target=args.target, top=args.top, name=name
        )
        result.save(output, alpha=args.alpha, colormap=args.colormap)
        _print_explanation(image, result)
    return 0


def _print_explanation(image: str, result: Explanation) -> None:
    print(
        f"{image} ({result.image.width}x{result.image.height}, model input "
        f"{result.input_size[1]}x{result.input_size[0]})"
    )
    for rank, prediction in enumerate(result.predictions, 1):
        print(f"  {rank}. {prediction}")
    explained = ", ".join(
        f"{result.label(i)} ({i})" if result.classes else str(i) for i in result.targets
    )
    print(f"  explained: {explained}")
    per_method = len(result.targets)
    for k, method in enumerate(result.maps):
        files = result.files[k * per_method : (k + 1) * per_method]
        layers = ", ".join(result.layers[method])
        print(f"  {method} at {layers}: {', '.join(str(f) for f in files)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camkit", description="Class activation maps for PyTorch image models."
    )
    parser.add_argument("--version", action="version", version=f"camkit {camkit.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    # Accepted after the command too; SUPPRESS keeps a command's default from resetting it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    methods = sub.add_parser(
        "methods",
        help="list CAM methods and other explainers, or describe one",
        parents=[common],
    )
    methods.add_argument(
        "pattern", nargs="?", help="a method or explainer name, or an fnmatch pattern"
    )
    methods.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output (a list of methods; with --explainers, of explainers)",
    )
    methods.add_argument(
        "--explainers",
        action="store_true",
        help="list only the other explainers (not CAM methods: own result types)",
    )
    methods.set_defaults(func=_methods)

    plugins = sub.add_parser(
        "plugins", help="list plugin distributions and their status", parents=[common]
    )
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=_plugins)

    explain = sub.add_parser(
        "explain",
        help="explain images with a model: one overlay per image and method, in seconds",
        parents=[common],
    )
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    explain.add_argument(
        "--model",
        "-m",
        default="torchvision:resnet50",
        help="torchvision:NAME, timm:NAME, python:FILE.py:FACTORY (or python:pkg.module:FACTORY), "
        "camkit:shapes-cnn, or a "
        "model saved with torch.save(model) (default: %(default)s)",
    )
    explain.add_argument(
        "--weights",
        default="DEFAULT",
        help="DEFAULT (pretrained, downloaded once), none (random), or a checkpoint file "
        "(default: %(default)s)",
    )
    explain.add_argument(
        "--method",
        default="gradcam",
        help="CAM method(s), comma-separated, see `camkit methods` (default: gradcam)",
    )
    explain.add_argument(
        "--layer",
        default="auto",
        help="auto, or layer name(s) separated by commas (default: auto, printed)",
    )
    explain.add_argument(
        "--target",
        default="top1",
        help="top1, topK (the K most probable classes), a class name or a class index "
        "(default: top1)",
    )
    explain.add_argument("--top", type=int, default=5, help="predictions to print (default: 5)")
    explain.add_argument(
        "--output",
        "-o",
        default="explanations",
        help="folder for the overlays (default: %(default)s)",
    )
    explain.add_argument(
        "--alpha", type=float, default=0.5, help="heatmap weight in [0, 1] (default: 0.5)"
    )
    explain.add_argument("--colormap", default="jet", help="jet, viridis or gray (default: jet)")
    explain.set_defaults(func=_explain)

    run = sub.add_parser(
        "run", help="run an experiment described in a TOML or YAML file", parents=[common]
    )
    run.add_argument("config", help="the experiment file (.toml, .yaml or .yml)")
    run.add_argument("--output", "-o", help="output folder (replaces output.folder)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a key, e.g. --set data.count=16 --set methods[0].layer=features",
    )
    run.add_argument(
        "--overwrite", action="store_true", help="replace results of a different config"
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    run.set_defaults(func=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``camkit`` command; returns the exit status.

    Errors end in one line on stderr, ``camkit: error: ...``: exit status 2 for a usage or
    configuration mistake, 1 for the environment (files, disk, network), 130 on Ctrl-C.
    ``--debug`` prints the traceback as well.

    Example:
        Not run by the tests: ``--version`` raises ``SystemExit``, as argparse's version
        action does.
        >>> main(["--version"])  # doctest: +SKIP
        camkit 0.1.0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
        return code
    except CamkitError as exc:
        return _fail(str(exc), getattr(exc, "exit_code", 2), args.debug)
    except BrokenPipeError:  # the reader left (`camkit methods | head`): stop quietly
        _silence_stdout()
        return 1
    except OSError as exc:
        return _fail(_os_error_text(exc), 1, args.debug)
    except KeyboardInterrupt:
        return _fail("interrupted", 130, args.debug)


def _silence_stdout() -> None:
    """Point stdout at the null device, so that flushing it at exit cannot fail again."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: a stdout without a descriptor
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    # Continuation lines (e.g. one per invalid config key) are indented under the first.
    print(f"camkit: error: {message}".replace("\n", "\n  "), file=sys.stderr)
    return code


def _os_error_text(exc: OSError) -> str:
    """``No space left on device: 'out/maps/x.png'`` rather than ``[Errno 28] ...``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is None:
        return reason
    target = f" -> {exc.filename2!r}" if exc.filename2 is not None else ""
    return f"{reason}: {str(exc.filename)!r}{target}"


if __name__ == "__main__":
    sys.exit(main())
