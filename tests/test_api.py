"""The public face: names exported, config validation at create time."""

from __future__ import annotations

import pydantic
import pytest

import camkit
from camkit.errors import CamkitError, ConfigError, MethodNotFoundError


def test_public_names():
    for name in camkit.__all__:
        assert getattr(camkit, name) is not None, name
    assert camkit.hookimpl.project_name == "camkit"
    assert camkit.Field is pydantic.Field
    assert issubclass(camkit.MethodConfig, pydantic.BaseModel)


def test_config_reaches_the_method(tiny):
    cam = camkit.create("cam", tiny, "features", fc_layer="fc")
    assert cam.method.config.fc_layer == "fc"
    assert camkit.make_config("cam", fc_layer="fc") == cam.method.config


def test_config_is_frozen():
    config = camkit.make_config("cam")
    with pytest.raises(pydantic.ValidationError):
        config.fc_layer = "fc"


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"fc_layer": 3}, r"invalid config for method 'cam': fc_layer: .*string.* \(got 3\)"),
        ({"fc_layer": ["fc"]}, r"fc_layer: .*\(got \['fc'\]\)"),
        ({"fc": "fc"}, r"invalid config for method 'cam': fc: Extra inputs are not permitted"),
    ],
)
def test_bad_config_is_rejected_at_create(tiny, config, match):
    with pytest.raises(ConfigError, match=match) as info:
        camkit.create("cam", tiny, "features", **config)
    assert isinstance(info.value, ValueError) and isinstance(info.value, CamkitError)
    assert info.value.__cause__ is None  # the message carries pydantic's report


def test_unknown_key_for_a_method_without_options(tiny):
    with pytest.raises(ConfigError, match=r"'gradcam': batch_sz: Extra inputs"):
        camkit.create("grad-cam", tiny, "features", batch_sz=8)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        camkit.make_config("cam", fc_layer=1, extra=2)
    assert "fc_layer:" in str(info.value) and "extra:" in str(info.value)


def test_unknown_method_in_make_config():
    with pytest.raises(MethodNotFoundError, match="'nope'"):
        camkit.make_config("nope")
