"""Every ``>>>`` example in camkit's and camkit-contrib's docstrings runs, and shows the truth.

Each docstring with examples is one test, run by :mod:`doctest` (``ELLIPSIS`` and
``NORMALIZE_WHITESPACE`` on) in a fresh empty folder of its own, where ``examples/`` is the
repository's and, for the examples that read one, ``runs/quickstart`` a finished run of the
quickstart experiment on 8 images. The examples see their module's globals plus the names
they take as given (:data:`GIVEN`): ``torch``, ``nn``, ``np``, ``camkit``, a ``model``
(torchvision's ResNet-18, random weights, eval mode), ``images`` / ``x`` (two random 64 x 64
images), ``targets``, for the compat shims' examples the peers' ``input_tensor`` (one random
``(1, 3, 64, 64)`` image), ``rgb_img`` (the same image, ``(64, 64, 3)``) and ``grayscale_cams``,
and small task models (``segmenter``, ``tagger``, ``detector``); each is built only for the
docstrings that use it, fresh, so no example sees what another one did.
Examples that use ``ctx`` run inside a method's ``weights(ctx)`` during a real call
(:class:`Probe`). An example that cannot run here is marked ``# doctest: +SKIP``, with the
reason in the text above it.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import os
import pkgutil
import re
import shutil
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import camkit

PACKAGES = ("camkit", "camkit_contrib")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: Modules whose examples are not collected (none: every package's run).
EXCLUDED: tuple[str, ...] = ()


@contextlib.contextmanager
def working_in(folder: Path) -> Iterator[None]:
    """``folder`` as the working directory for the block (``contextlib.chdir`` of 3.11)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def modules() -> Iterator[types.ModuleType]:
    """Every module of :data:`PACKAGES`, imported."""
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        yield package
        prefix = package_name + "."
        for info in pkgutil.walk_packages(package.__path__, prefix):
            if info.name.endswith(".__main__"):  # importing it runs the program
                continue
            if not info.name.startswith(EXCLUDED):
                yield importlib.import_module(info.name)


def docstring_tests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found: dict[str, doctest.DocTest] = {}
    for module in modules():
        for test in finder.find(module, module.__name__):
            if test.examples:
                found[test.name] = test
    return sorted(found.values(), key=lambda t: t.name)


TESTS = docstring_tests()


def _resnet18() -> Any:
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None).eval()


def _images(count: int = 2) -> Any:
    import torch

    return torch.rand(count, 3, 64, 64, generator=torch.Generator().manual_seed(count))


def _segmenter() -> Any:
    """An FCN on ResNet-18 (``backbone.layer4``), 21 classes: torchvision's layout, small."""
    import torch
    from torchvision.models import resnet18
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    torch.manual_seed(0)
    backbone = IntermediateLayerGetter(resnet18(weights=None), {"layer4": "out"})
    return FCN(backbone, FCNHead(512, 21)).eval()


def _person() -> Any:
    import torch

    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[16:48, 20:44] = True
    return mask


def _tagger() -> Any:
    """A multi-label ResNet-18 (20 labels)."""
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=20).eval()


def _detector() -> Any:
    """A Faster R-CNN on a ResNet-18 FPN (``backbone.body.layer4``) that keeps every box."""
    import torch
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    return FasterRCNN(
        backbone, num_classes=5, min_size=64, max_size=64, box_score_thresh=0.0
    ).eval()


def _my_cam() -> Any:
    """A plugin author's method class: Grad-CAM on the ``top_k`` channels of largest weight."""
    import torch

    class MyConfig(camkit.MethodConfig):
        top_k: int = 8

    class MyCAM(camkit.Method):
        name = "mycam"
        Config = MyConfig
        needs_gradients = True

        def weights(self, ctx: Any) -> Any:
            w = ctx.gradients.mean((2, 3))
            kept = w.topk(min(self.config.top_k, w.shape[1]), dim=1).indices
            return torch.zeros_like(w).scatter(1, kept, w.gather(1, kept))

    return MyCAM


def _rgb_img() -> Any:
    """The image of ``input_tensor`` as the peers' examples hold it: ``(64, 64, 3)`` float32
    in ``[0, 1]``."""
    return _images(1)[0].permute(1, 2, 0).numpy()


def _grayscale_cams() -> Any:
    """Maps of ``input_tensor`` as pytorch-grad-cam returns them: ``(1, 64, 64)`` float32 in
    ``[0, 1]``."""
    import numpy as np

    return np.random.default_rng(0).random((1, 64, 64), dtype=np.float32)


def _vit() -> Any:
    """A small torchvision vision transformer, random weights, eval mode."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32).eval()


#: What a name that the examples take as given is bound to, built when a docstring uses it.
GIVEN: dict[str, Callable[[], Any]] = {
    "model": _resnet18,
    "images": _images,
    "x": _images,
    "targets": lambda: __import__("torch").tensor([3, 7]),
    "segmenter": _segmenter,
    "person": _person,
    "tagger": _tagger,
    "detector": _detector,
    "other_image": lambda: _images(1),
    "image_a": _images,
    "image_b": lambda: _images(2).flip(-1),
    "cat_images": lambda: _images(3),
    "dog_images": lambda: _images(4),
    "MyCAM": _my_cam,
    "vit": _vit,
    "input_tensor": lambda: _images(1),
    "rgb_img": _rgb_img,
    "grayscale_cams": _grayscale_cams,
}


def namespace(test: doctest.DocTest) -> dict[str, Any]:
    """The names ``test``'s examples assume, each built fresh; the module's own names win."""
    import numpy as np
    import torch
    from torch import nn

    source = "\n".join(example.source for example in test.examples)
    given: dict[str, Any] = {"camkit": camkit, "torch": torch, "nn": nn, "np": np}
    for name, build in GIVEN.items():
        if re.search(rf"\b{name}\b", source):
            given[name] = build()
    return {**given, **test.globs}


def uses(test: doctest.DocTest, word: str) -> bool:
    return any(re.search(rf"\b{word}\b", example.source) for example in test.examples)


class ProbeConfig(camkit.MethodConfig):
    seed: int | None = 0


class Probe(camkit.Method):
    """A method whose weights run a docstring's examples with the live ``ctx`` (and ``self``)
    of a call, as a method author's code would."""

    name = "probe"
    Config = ProbeConfig
    needs_gradients = True
    many_forwards = True

    def __init__(self, test: doctest.DocTest, runner: doctest.DocTestRunner, out: list[str]):
        super().__init__()
        self.test, self.runner, self.out = test, runner, out

    def weights(self, ctx: Any) -> Any:
        self.test.globs.update(ctx=ctx, self=self)
        self.runner.run(self.test, out=self.out.append, clear_globs=False)
        return ctx.activations.new_ones(ctx.activations.shape[:2])


def run_in_context(test: doctest.DocTest, runner: doctest.DocTestRunner, out: list[str]) -> None:
    """Run ``test`` inside a call of :class:`Probe` on camkit's tiny CNN (on a tiny
    torchvision ViT for the attention examples)."""
    import torch
    from torchvision.models import VisionTransformer

    from camkit.engine import Extractor

    probe = Probe(test, runner, out)
    if uses(test, "attention_gradients"):
        torch.manual_seed(0)
        vit = VisionTransformer(32, 8, num_layers=4, num_heads=2, hidden_dim=16, mlp_dim=32)
        probe.needs_attention = True
        Extractor(probe, vit.eval(), "encoder.layers")(torch.rand(1, 3, 32, 32))
    else:
        Extractor(probe, camkit.testing.tiny_model(), "features")(_images(), [3, 1])
    assert test.examples and runner.tries, "the examples did not run"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``runs/quickstart``: the quickstart experiment run on 8 images."""
    from camkit.experiment import load_config, run

    root = tmp_path_factory.mktemp("quickstart")
    with working_in(root):
        run(load_config(EXAMPLES / "quickstart.toml", overrides=["data.count=8"]))
    return root / "runs"


def test_examples_are_found() -> None:
    """Every ``>>>`` line of the packages' sources is part of a docstring test run here."""
    lines = 0
    for package_name in PACKAGES:
        root = Path(importlib.import_module(package_name).__path__[0])
        for path in root.rglob("*.py"):
            module = ".".join((package_name, *path.relative_to(root).with_suffix("").parts))
            if module.startswith(EXCLUDED):
                continue
            lines += sum(line.lstrip().startswith(">>>") for line in path.read_text().splitlines())
    assert lines > 100
    assert sum(len(test.examples) for test in TESTS) == lines


def run_examples(test: doctest.DocTest, request: pytest.FixtureRequest, folder: Path) -> str:
    """Run ``test``'s examples in ``folder`` (made, empty); what failed, or ``""``."""
    folder.mkdir()
    (folder / "examples").symlink_to(EXAMPLES)
    if any("quickstart" in example.source for example in test.examples):
        shutil.copytree(request.getfixturevalue("quickstart"), folder / "runs", symlinks=True)
    test.globs = namespace(test)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    with working_in(folder):
        try:
            if uses(test, "ctx"):
                run_in_context(test, runner, report)
            else:
                runner.run(test, out=report.append, clear_globs=False)
        finally:
            test.globs.clear()
    assert runner.tries == sum(not e.options.get(doctest.SKIP) for e in test.examples)
    return "".join(report) if runner.failures else ""


@pytest.mark.parametrize("test", TESTS, ids=[test.name for test in TESTS])
def test_docstring_examples(
    test: doctest.DocTest, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    failed = run_examples(test, request, tmp_path / "cwd")
    assert not failed, failed


@pytest.mark.parametrize(
    "text",
    [
        ">>> camkit.create('gradcam', model, 'layer4')(images).maps.shape\ntorch.Size([2, 9, 9])\n",
        ">>> ctx.activations.shape\ntorch.Size([2, 8, 1, 1])\n",
    ],
    ids=["plain", "ctx"],
)
def test_a_wrong_example_fails(text: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    test = doctest.DocTestParser().get_doctest(text, {}, "wrong", "wrong.py", 0)
    failed = run_examples(test, request, tmp_path / "wrong")
    assert "Expected:" in failed and "Got:" in failed
    fixed = re.sub(r"\[.*\]", "[...]", text)  # the same example, its output elided, passes
    test = doctest.DocTestParser().get_doctest(fixed, {}, "fixed", "fixed.py", 0)
    assert run_examples(test, request, tmp_path / "fixed") == ""
