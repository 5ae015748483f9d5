"""The experiment schema: errors name the file, the key path and what was expected."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from camkit.errors import ConfigError
from camkit.experiment import load_config
from camkit.experiment.config import apply_override, validate
from camkit.experiment.files import dumps_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BASE = '[[methods]]\nname = "gradcam"\n'


def _write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str, name: str = "exp.toml", **kwargs) -> str:
    path = _write(tmp_path, text, name)
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    return message


def test_defaults_are_the_embedded_experiment(tmp_path):
    config = load_config(_write(tmp_path, BASE))
    assert config.model.source == "camkit:shapes-cnn"
    assert config.data.source == "camkit:shapes" and config.data.image_size == (64, 64)
    assert config.data.mean == (0.0, 0.0, 0.0) and config.data.std == (1.0, 1.0, 1.0)
    assert config.metrics.step == 128  # 64 * 64 / 32
    assert config.metrics.tolerance == pytest.approx(round(15 * 64 / 224, 2))
    assert config.methods[0].id == "gradcam" and config.methods[0].layer is None


def test_unknown_top_level_key(tmp_path):
    message = _error(tmp_path, "colour = 3\n" + BASE)
    assert ": colour: unknown key; expected one of: model, data, methods" in message
    # in TOML a key after [[methods]] belongs to that method
    message = _error(tmp_path, BASE + "colour = 3\n")
    assert "methods[0].colour: unknown key; expected one of: name, id, layer" in message


def test_unknown_nested_key_names_its_path_and_the_valid_keys(tmp_path):
    message = _error(tmp_path, BASE + "[data]\ncuont = 3\n")
    assert ": data.cuont: unknown key" in message
    assert "count" in message and "limit" in message


def test_bad_values_say_what_was_expected(tmp_path):
    message = _error(tmp_path, BASE + "[data]\ncount = 0\n")
    assert "data.count: Input should be greater than or equal to 1 (got 0)" in message
    message = _error(tmp_path, 'targets = "banana"\n' + BASE)
    assert "targets:" in message and "'predicted' or 'label'" in message
    message = _error(tmp_path, BASE + '[model]\nsource = "keras:resnet50"\n')
    assert "model.source:" in message and "torchvision:<name>" in message
    message = _error(tmp_path, BASE + '[metrics]\ncompute = ["pointing"]\n')
    assert "metrics.compute[0]:" in message and "pointing_game" in message


def test_methods_are_required(tmp_path):
    assert "methods: missing required key" in _error(tmp_path, "seed = 1\n")


def test_method_keys_are_validated_by_the_methods_own_schema(tmp_path):
    message = _error(tmp_path, BASE + '[[methods]]\nname = "cam"\nfc_layr = "fc"\n')
    assert "methods[1].fc_layr: unknown key; expected one of: name, id, layer, fc_layer" in message


def test_unknown_method_name(tmp_path):
    message = _error(tmp_path, '[[methods]]\nname = "gradcan"\n')
    assert "methods[0].name:" in message and "gradcam" in message


def test_method_ids_must_be_unique(tmp_path):
    message = _error(tmp_path, BASE + BASE)
    assert "methods[1].id: 'gradcam' is already used" in message


def test_labels_need_a_labelled_source(tmp_path):
    message = _error(tmp_path, 'targets = "label"\n' + BASE + '[data]\nsource = "images/"\n')
    assert "targets: 'label' needs ground-truth labels" in message


def test_count_is_for_the_generated_set_only(tmp_path):
    message = _error(tmp_path, BASE + '[data]\nsource = "images/"\ncount = 5\n')
    assert "data.count: only camkit:shapes is generated to a count; for files use data.limit" in (
        message
    )


def test_syntax_errors_name_the_file(tmp_path):
    assert "not valid TOML" in _error(tmp_path, "seed = = 1\n")
    assert "not valid YAML" in _error(tmp_path, "a: [1\n", name="exp.yaml")
    assert "expected a .toml" in _error(tmp_path, BASE, name="exp.json")


def test_yaml_and_toml_describe_the_same_experiment(tmp_path):
    toml = _write(tmp_path, "targets = 2\n" + BASE + '[data]\ncount = 5\n[output]\nfolder = "o"\n')
    yaml_text = "methods:\n  - name: gradcam\ntargets: 2\ndata:\n  count: 5\noutput:\n  folder: o\n"
    yml = _write(tmp_path, yaml_text, name="exp.yml")
    assert load_config(toml).resolved() == load_config(yml).resolved()


def test_overrides(tmp_path):
    path = _write(tmp_path, BASE + BASE.replace('"gradcam"', '"cam"'))
    config = load_config(
        path,
        overrides=["data.count=5", "methods[0].layer=block", "methods.1.id=c2", "seed=7"],
        output=tmp_path / "elsewhere",
    )
    assert config.data.count == 5 and config.seed == 7
    assert config.methods[0].layer == "block" and config.methods[1].id == "c2"
    assert config.output.folder == str(tmp_path / "elsewhere")
    message = _error(tmp_path, BASE, overrides=["data.count=zero"])
    assert "data.count:" in message and "'zero'" in message


def test_malformed_overrides():
    data: dict = {"methods": [{"name": "cam"}]}
    with pytest.raises(ConfigError, match=r"expected KEY\.PATH=VALUE"):
        apply_override(data, "seed")
    with pytest.raises(ConfigError, match=r"methods\[3\]: there are 1 items"):
        apply_override(data, "methods[3].layer=x")
    apply_override(data, "methods[0].layers=[a, b]")
    assert data["methods"][0]["layers"] == ["a", "b"]


def test_resolved_config_round_trips_through_toml(tmp_path):
    text = BASE + '[[methods]]\nname = "cam"\nid = "cam-2"\nlayer = ["block", "features"]\n'
    config = load_config(_write(tmp_path, text))
    again = validate(tomllib.loads(dumps_toml(config.resolved())))
    assert again.resolved() == config.resolved()
    assert again.fingerprint() == config.fingerprint()


def test_fingerprint_ignores_only_the_output_folder(tmp_path):
    path = _write(tmp_path, BASE)
    base = load_config(path).fingerprint()
    assert load_config(path, output=tmp_path / "x").fingerprint() == base
    assert load_config(path, overrides=["seed=1"]).fingerprint() != base
    assert load_config(path, overrides=["methods[0].layer=block"]).fingerprint() != base


def test_every_example_is_a_valid_experiment():
    examples = sorted((Path(__file__).parents[2] / "examples").glob("*.toml"))
    assert any(p.name == "quickstart.toml" for p in examples)
    for path in examples:
        config = load_config(path)
        assert config.methods and config.output.folder.startswith("runs/")
