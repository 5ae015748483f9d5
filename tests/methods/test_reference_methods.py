"""The nine reference methods: listed with their schemas, and usable on a batch of two."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

import camkit
from camkit.cli import main

REFERENCE = [
    "cam",
    "gradcam",
    "gradcampp",
    "iscam",
    "layercam",
    "scorecam",
    "smoothgradcampp",
    "sscam",
    "xgradcam",
]

DEFAULTS: dict[str, dict[str, Any]] = {
    "scorecam": {},
    "sscam": {"num_samples": 35, "std": 2.0, "seed": None},
    "iscam": {"num_samples": 10},
    "smoothgradcampp": {"num_samples": 4, "std": 0.3, "seed": None},
    "gradcampp": {},
    "xgradcam": {},
    "layercam": {},
}

ALIASES = {
    "score-cam": "scorecam",
    "ss-cam": "sscam",
    "is-cam": "iscam",
    "grad-cam++": "gradcampp",
    "smooth-grad-cam++": "smoothgradcampp",
    "xgrad-cam": "xgradcam",
    "layer-cam": "layercam",
}


def test_cli_lists_every_reference_method_with_its_schema(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["methods", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(REFERENCE) <= set(listed)
    for name, defaults in DEFAULTS.items():
        properties = listed[name]["config"]["properties"]
        assert {key: properties[key].get("default") for key in properties} == defaults


@pytest.mark.parametrize(("alias", "name"), ALIASES.items())
def test_aliases(alias: str, name: str) -> None:
    assert camkit.method_info(alias).name == name


# Few samples keep the smoke test fast; the formulas are checked in the per-method tests.
SMALL: dict[str, dict[str, Any]] = {
    "sscam": {"num_samples": 1, "seed": 0},
    "iscam": {"num_samples": 2},
    "smoothgradcampp": {"num_samples": 2, "seed": 0},
}


@pytest.mark.parametrize("name", REFERENCE)
def test_create_on_layer4_of_resnet18_with_a_batch_of_two(resnet: nn.Module, name: str) -> None:
    # 40 px is the smallest input that gives layer4 more than one position (2x2).
    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(8))
    res = camkit.create(name, resnet, "layer4", **SMALL.get(name, {}))(x)
    assert res.maps.shape == (2, 40, 40)
    assert res.maps.dtype == torch.float32
    assert float(res.maps.min()) == 0.0
    assert float(res.maps.max()) == 1.0
    assert res.layer_maps["layer4"].shape == (2, 2, 2)
    assert res.weights["layer4"].shape in ((2, 512), (2, 512, 2, 2))
    assert res.targets.tolist() == resnet(x).argmax(1).tolist()
