"""Loading models as people load them: sources, weights, preprocessing, and the errors.

No test reaches the network: pretrained downloads are tried only with the caches pointed at
empty folders and every socket refused in-process.
"""

from __future__ import annotations

import socket
import urllib.error

import pytest
import torch
from torch import nn

from camkit.errors import ConfigError, WeightsDownloadError, WeightsError
from camkit.experiment import load_config
from camkit.experiment.models import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, load_model
from camkit.zoo import ShapesCNN

timm = pytest.importorskip("timm")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Empty torch and Hugging Face caches, and no network."""

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    def no_download(*args, **kwargs):
        raise urllib.error.URLError("network blocked by the test")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    return tmp_path


def test_torchvision_offline_says_where_to_put_the_file(offline):
    with pytest.raises(WeightsDownloadError) as info:
        load_model("torchvision:resnet18", "IMAGENET1K_V1")
    message = str(info.value)
    assert f"put resnet18-f37072fd.pth into {offline / 'torch' / 'hub' / 'checkpoints'}" in message
    assert "TORCH_HOME" in message and "--weights none" in message
    assert info.value.exit_code == 1


def test_timm_offline_says_where_to_put_the_file(offline):
    with pytest.raises(WeightsDownloadError) as info:
        load_model("timm:resnet18", "DEFAULT")
    message = str(info.value)
    assert str(offline / "hf") in message and "HF_HOME" in message and "--weights none" in message


def test_torchvision_preprocessing_and_classes_come_from_the_weights_enum(offline):
    loaded = load_model("torchvision:resnet18", "none")
    prep = loaded.preprocessing
    assert (prep.mean, prep.std, prep.size, prep.fixed_size) == (
        IMAGENET_MEAN,
        IMAGENET_STD,
        (224, 224),
        False,
    )
    assert loaded.classes is None  # random weights: no class names
    vit = load_model("torchvision:vit_b_16", "none", {"image_size": 64}).preprocessing
    assert vit.fixed_size and vit.size == (64, 64)


def test_timm_preprocessing_comes_from_its_pretrained_config():
    loaded = load_model("timm:vit_tiny_patch16_224", "none", {"depth": 1})
    cfg = timm.models.get_pretrained_cfg("vit_tiny_patch16_224")
    assert loaded.preprocessing == Preprocessing(
        tuple(cfg.mean), tuple(cfg.std), (224, 224), cfg.interpolation, fixed_size=True
    )
    assert loaded.preprocessing.mean == (0.5, 0.5, 0.5)


def test_preprocessing_keeps_the_aspect_unless_the_size_is_fixed():
    prep = Preprocessing(size=(224, 224))
    assert prep.input_size(240, 320) == (224, 299)
    assert Preprocessing(size=(224, 224), fixed_size=True).input_size(240, 320) == (224, 224)
    x = torch.rand(1, 3, 10, 10)
    normalized = Preprocessing((0.1, 0.2, 0.3), (0.5, 0.25, 2.0), (10, 10))(x)
    expected = (x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.25, 2.0]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(normalized, expected)


def test_timm_in_an_experiment_config(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(
        '[model]\nsource = "timm:vit_tiny_patch16_224"\n[data]\nsource = "pics"\n'
        '[[methods]]\nname = "gradcam"\n'
    )
    config = load_config(path)
    assert config.data.mean == (0.5, 0.5, 0.5) and config.data.std == (0.5, 0.5, 0.5)
    assert tuple(config.data.image_size) == (224, 224)


# -- checkpoints ------------------------------------------------------------------------------


def test_a_file_that_is_no_checkpoint(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"\x89PNG not weights at all" * 10)
    with pytest.raises(WeightsError, match=r"w\.pt is not a PyTorch checkpoint"):
        load_model("camkit:shapes-cnn", str(tmp_path / "w.pt"))


def test_another_architectures_checkpoint_is_summarized(tmp_path):
    torch.save(
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(8, 1000)).state_dict(), tmp_path / "w.pt"
    )
    with pytest.raises(WeightsError) as info:
        load_model("torchvision:resnet18", str(tmp_path / "w.pt"))
    message = str(info.value)
    assert len(message) < 600 and "\n" not in message
    assert "does not fit torchvision:resnet18 (ResNet, 122 tensors; checkpoint: 4)" in message
    assert (
        "122 missing from the checkpoint (conv1.weight, bn1.weight, bn1.bias, ... (119 more))"
        in message
    )
    assert "4 not in the model (0.weight, 0.bias, 1.weight, ... (1 more))" in message


def test_a_checkpoint_with_other_shapes(tmp_path):
    torch.save(ShapesCNN(num_classes=7).state_dict(), tmp_path / "w.pt")
    with pytest.raises(
        WeightsError,
        match=r"2 of another shape \(fc\.weight: checkpoint \(7, 48\), model \(4, 48\)",
    ):
        load_model("camkit:shapes-cnn", str(tmp_path / "w.pt"))


def test_data_parallel_checkpoints_and_wrapped_state_dicts_load(tmp_path):
    torch.manual_seed(0)
    reference = ShapesCNN().eval()
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.pt")
    loaded = load_model("camkit:shapes-cnn", str(tmp_path / "w.pt")).model
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), reference(x), atol=0, rtol=0)


def test_a_whole_saved_model_is_a_model_not_weights(tmp_path):
    torch.manual_seed(0)
    model = ShapesCNN().eval()
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(WeightsError, match=r"holds more than tensors .* pass it as the model"):
        load_model("camkit:shapes-cnn", str(tmp_path / "whole.pt"))
    loaded = load_model(str(tmp_path / "whole.pt"))
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded.model(x), model(x), atol=0, rtol=0)
    torch.save(model.state_dict(), tmp_path / "state.pt")
    with pytest.raises(ConfigError, match=r"holds weights .*--weights"):
        load_model(str(tmp_path / "state.pt"))


# -- kwargs -----------------------------------------------------------------------------------


def test_unknown_kwargs_of_the_embedded_model():
    with pytest.raises(
        ConfigError,
        match=r"model\.kwargs: camkit:shapes-cnn takes no argument 'width'; it takes pretrained",
    ):
        load_model("camkit:shapes-cnn", kwargs={"width": 3})


def test_unknown_kwargs_of_a_python_factory(tmp_path):
    (tmp_path / "net.py").write_text(
        "from camkit.zoo import ShapesCNN\n\n\n"
        "def build(num_classes=4):\n    return ShapesCNN(num_classes)\n"
    )
    with pytest.raises(
        ConfigError, match=r"takes no argument 'num_class'.*Did you mean 'num_classes'"
    ):
        load_model("python:net.py:build", kwargs={"num_class": 3}, base_dir=tmp_path)


@pytest.mark.parametrize("source", ["torchvision:resnet18", "timm:resnet18"])
def test_unknown_kwargs_of_library_models(source):
    with pytest.raises(ConfigError, match=r"model(\.kwargs)?: .*resnet18.*colour"):
        load_model(source, "none", {"colour": "red"})


def test_unknown_model_names_suggest_close_ones():
    with pytest.raises(
        ConfigError, match=r"timm has no model 'resnet181'.*Did you mean 'resnet18'"
    ):
        load_model("timm:resnet181")
    with pytest.raises(
        ConfigError, match="no weights 'IMAGENET'; expected one of DEFAULT, IMAGENET1K_V1"
    ):
        load_model("torchvision:resnet18", "IMAGENET")


def test_python_source_from_an_importable_module():
    loaded = load_model("python:camkit.zoo.model:ShapesCNN", kwargs={"num_classes": 3})
    assert isinstance(loaded.model, ShapesCNN) and loaded.model.fc.out_features == 3
    with pytest.raises(ConfigError, match=r"no importable module 'camkit\.nomodule'"):
        load_model("python:camkit.nomodule:build")
