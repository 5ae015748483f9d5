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
        ({"fc": "fc"}, r"invalid config for method 'cam': fc: unknown option .*config: fc_layer"),
    ],
)
def test_bad_config_is_rejected_at_create(tiny, config, match):
    with pytest.raises(ConfigError, match=match) as info:
        camkit.create("cam", tiny, "features", **config)
    assert isinstance(info.value, ValueError) and isinstance(info.value, CamkitError)
    assert info.value.__cause__ is None  # the message carries pydantic's report


def test_unknown_key_for_a_method_without_options(tiny):
    with pytest.raises(
        ConfigError,
        match=r"'gradcam': batch_sz: unknown option \(got 8\)\. Did you mean 'batch_size'\?",
    ):
        camkit.create("grad-cam", tiny, "features", batch_sz=8)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        camkit.make_config("cam", fc_layer=1, extra=2)
    assert "fc_layer:" in str(info.value) and "extra:" in str(info.value)


def test_unknown_method_in_make_config():
    with pytest.raises(MethodNotFoundError, match="'nope'"):
        camkit.make_config("nope")


def test_create_splits_run_options_from_the_method_config(tiny):
    cam = camkit.create("sscam", tiny, "features", batch_size=7, precision="bf16", num_samples=2)
    assert cam.options == camkit.RunOptions(batch_size=7, precision="bf16")
    assert cam.method.config.num_samples == 2
    assert "batch_size" not in type(cam.method.config).model_fields
    # Any method takes run options: how the model runs is not the method's business.
    assert camkit.create("gradcam", tiny, "features", channels_last=False).options == (
        camkit.RunOptions(channels_last=False)
    )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"batch_size": 0}, r"invalid run options: batch_size: .*greater than 0 \(got 0\)"),
        ({"batch_size": True}, r"batch_size: .*valid integer \(got True\)"),
        ({"precision": "fp16"}, r"precision: .*'fp32', 'bf16' or 'auto' \(got 'fp16'\)"),
        ({"progress": "no"}, r"progress: .*valid boolean \(got 'no'\)"),
        (
            {"precison": "bf16"},
            r"precison: unknown option .*Did you mean 'precision'\?.*num_samples",
        ),
    ],
)
def test_run_options_are_validated_once_at_create(tiny, options, match):
    with pytest.raises(ConfigError, match=match):
        camkit.create("sscam", tiny, "features", **options)


def test_validation_is_remembered_for_scalars_only(tiny):
    from camkit.engine.options import validated

    first = camkit.create("sscam", tiny, "features", batch_size=1, num_samples=3)
    again = camkit.create("sscam", tiny, "features", num_samples=3, batch_size=1)
    assert again.options is first.options and again.method.config is first.method.config
    # Equal but differently typed values are keys of their own: True is no batch size, and
    # std=1 is validated as the float it becomes.
    with pytest.raises(ConfigError, match=r"batch_size: .*valid integer \(got True\)"):
        camkit.create("sscam", tiny, "features", batch_size=True)
    assert camkit.make_config("sscam", std=1).std == 1.0
    assert camkit.make_config("sscam", std=1.0) == camkit.make_config("sscam", std=1)
    # A non-scalar value is validated afresh each time.
    sess = {"window_size": 16}
    assert validated(camkit.RunOptions, {"sess": sess}) is not validated(
        camkit.RunOptions, {"sess": sess}
    )


def test_methods_declare_that_they_run_many_forwards():
    many = {n for n in camkit.list_methods() if camkit.method_info(n).many_forwards}
    assert {"scorecam", "sscam", "iscam", "smoothgradcampp"} <= many
    assert not many & {"cam", "gradcam", "gradcampp", "xgradcam", "layercam"}


def test_experiment_engine_table_and_per_method_run_options():
    from camkit.experiment import validate

    config = validate(
        {
            "engine": {"batch_size": 8, "precision": "bf16"},
            "methods": [{"name": "scorecam", "batch_size": 4}, {"name": "gradcam"}],
        }
    )
    assert config.engine == camkit.RunOptions(batch_size=8, precision="bf16")
    assert config.methods[0].options == {"batch_size": 4}  # overrides [engine] for scorecam
    assert config.methods[1].options == {}
    with pytest.raises(ConfigError, match=r"methods\[0\]\.batch_size: .*greater than 0"):
        validate({"methods": [{"name": "scorecam", "batch_size": 0}]})
    with pytest.raises(ConfigError, match=r"engine\.precison: unknown key"):
        validate({"engine": {"precison": "bf16"}, "methods": [{"name": "cam"}]})


@pytest.mark.parametrize(
    "engine",
    [{"batch_size": True}, {"batch_size": "8"}, {"batch_size": 2.0}, {"channels_last": "yes"}],
)
def test_experiment_run_options_are_strict_like_the_rest_of_the_file(engine):
    from camkit.experiment import validate

    key = next(iter(engine))
    with pytest.raises(ConfigError, match=rf"engine\.{key}: "):
        validate({"engine": engine, "methods": [{"name": "cam"}]})
    with pytest.raises(ConfigError, match=rf"methods\[0\]\.{key}: "):
        validate({"methods": [{"name": "scorecam", **engine}]})


def test_the_fingerprint_ignores_a_default_engine_table_and_progress():
    from camkit.experiment import validate

    methods = [{"name": "scorecam"}]
    bare = validate({"methods": methods}).fingerprint()
    assert validate({"engine": {}, "methods": methods}).fingerprint() == bare
    assert validate({"engine": {"progress": True}, "methods": methods}).fingerprint() == bare
    assert validate({"engine": {"batch_size": 8}, "methods": methods}).fingerprint() != bare
    assert "engine" not in validate({"methods": methods}).comparable()
