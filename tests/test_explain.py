"""``camkit explain`` and ``camkit.explain``: maps at the image's own size, predictions, layers,
and one clear line for every mistake."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import camkit
from camkit.cli import main
from camkit.errors import InputError, TargetError
from camkit.experiment.models import load_model
from camkit.zoo import CLASSES, shapes


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A 40 x 30 (W x H) picture of a shape: not square, not the model's 64 px."""
    sample = shapes.render(seed=3, index=0, size=30)
    pixels = (sample.image.transpose(1, 2, 0) * 255).round().astype(np.uint8)
    wide = np.concatenate([pixels, np.zeros((30, 10, 3), np.uint8)], axis=1)
    path = tmp_path / "cat.png"
    Image.fromarray(wide).save(path)
    return path


def _reference_map(path: Path, target: int) -> torch.Tensor:
    """Grad-CAM of the file, done by hand: shorter side to 64 px (aspect kept), explain,
    resize the map back to the file's 30 x 40 pixels."""
    model = camkit.zoo.load_model("shapes-cnn")
    image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32) / 255)
    x = image.permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(64, 85), mode="bilinear", antialias=True).clamp(0, 1)
    maps = camkit.create("gradcam", model, "features")(x, targets=[target]).maps
    return F.interpolate(maps[None], size=(30, 40), mode="bilinear", align_corners=False)[0]


def test_explain_keeps_the_image_size_and_reports_the_layer(photo):
    result = camkit.explain(photo, "camkit:shapes-cnn")

    assert result.input_size == (64, 85)
    assert result.layers == {"gradcam": ["features"]}
    top = result.predictions[0]
    assert result.targets == [top.index] and top.label == CLASSES[top.index]
    probabilities = [p.probability for p in result.predictions]
    assert probabilities == sorted(probabilities, reverse=True) and len(probabilities) == 4
    assert result.maps["gradcam"].shape == (1, 30, 40)
    expected = _reference_map(photo, top.index)
    torch.testing.assert_close(result.maps["gradcam"], expected, atol=1e-5, rtol=0)


def test_save_writes_one_overlay_per_method_and_target(photo, tmp_path):
    result = camkit.explain(photo, "camkit:shapes-cnn", ["gradcam", "layercam"], target="top2")
    files = result.save(tmp_path / "out", alpha=0.3)

    names = [f.name for f in files]
    first, second = result.targets
    assert names == [
        f"cat.gradcam.{first}.png",
        f"cat.gradcam.{second}.png",
        f"cat.layercam.{first}.png",
        f"cat.layercam.{second}.png",
    ]
    with Image.open(files[1]) as saved:
        assert saved.size == (40, 30)
        expected = camkit.overlay(Image.open(photo), result.maps["gradcam"][1], alpha=0.3)
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(expected))
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


@pytest.mark.parametrize(
    ("target", "expected"),
    [("square", [1]), ("Triangle", [2]), (3, [3]), ("0", [0]), ([2, 1], [2, 1])],
)
def test_targets_by_name_and_index(photo, target, expected):
    assert camkit.explain(photo, "camkit:shapes-cnn", target=target).targets == expected


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("sqare", "'sqare' is not a class of this model.*Did you mean 'square'"),
        (4, r"target 4: the model has classes 0\.\.3"),
        ("top5", "the model has 4 classes"),
        (True, "not True"),
    ],
)
def test_bad_targets(photo, target, match):
    with pytest.raises(TargetError, match=match):
        camkit.explain(photo, "camkit:shapes-cnn", target=target)


def test_explain_a_module_and_a_pil_image():
    torch.manual_seed(0)
    model = camkit.zoo.ShapesCNN().eval()
    picture = Image.new("RGB", (48, 32), (200, 30, 30))
    result = camkit.explain(picture, model, "gradcampp")
    assert result.name == "image" and result.predictions[0].label is None
    assert result.maps["gradcampp"].shape == (1, 32, 48) and result.layers["gradcampp"] == [
        "features"
    ]


def test_unreadable_image(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    with pytest.raises(InputError, match=r"cannot read .*notes\.png as an image"):
        camkit.explain(bad, "camkit:shapes-cnn")
    with pytest.raises(InputError, match="no image file at"):
        camkit.explain(tmp_path / "missing.png", "camkit:shapes-cnn")


# -- the command ------------------------------------------------------------------------------


def test_cli_explain(photo, tmp_path, capsys):
    out = tmp_path / "explained"
    code = main(
        [
            *("explain", str(photo), "--model", "camkit:shapes-cnn", "--weights", "none"),
            *("-o", str(out), "--method", "gradcam,xgradcam"),
            *("--alpha", "0.6", "--colormap", "viridis"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "model: camkit:shapes-cnn (weights: none)" in captured.out
    assert "(40x30, model input 85x64)" in captured.out
    assert f"gradcam at features: {out / 'cat.gradcam.png'}" in captured.out
    assert f"xgradcam at features: {out / 'cat.xgradcam.png'}" in captured.out
    with Image.open(out / "cat.xgradcam.png") as saved:
        assert saved.size == (40, 30)


def test_cli_explain_names_images_with_one_stem_apart(photo, tmp_path, capsys):
    other = tmp_path / "more"
    other.mkdir()
    twin = other / photo.name
    twin.write_bytes(photo.read_bytes())
    out = tmp_path / "o"
    assert main(["explain", str(photo), str(twin), "-m", "camkit:shapes-cnn", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cat-2.gradcam.png", "cat.gradcam.png"]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["missing.png"], "no image file at missing.png"),
        (["{photo}", "--alpha", "1.5"], "--alpha: expected a number in [0, 1], got 1.5"),
        (["{photo}", "--colormap", "rainbow"], "unknown colormap 'rainbow'"),
        (["{photo}", "--method", "gradkam"], "no CAM method named 'gradkam'"),
    ],
)
def test_cli_explain_checks_before_loading_the_model(photo, capsys, monkeypatch, argv, line):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("camkit.experiment.models.load_model", no_model)
    args = [a.format(photo=photo) for a in argv]
    assert main(["explain", *args, "--model", "camkit:shapes-cnn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"camkit: error: {line}") and err.count("\n") == 1


def test_cli_explain_class_names_from_weights_metadata(photo, tmp_path, capsys):
    loaded = load_model("camkit:shapes-cnn")
    assert loaded.classes == CLASSES
    code = main(
        ["explain", str(photo), "-m", "camkit:shapes-cnn", "--target", "top2", "-o", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 0
    printed = [line.strip() for line in out.splitlines()]
    ranked = [line for line in printed if line[:3] in ("1. ", "2. ", "3. ", "4. ")]
    assert len(ranked) == 4
    assert all(
        any(f". {name} ({i}): " in line for i, name in enumerate(CLASSES)) for line in ranked
    )
    assert out.count(".gradcam.") == 2


def test_sixteen_bit_and_rotated_pictures(tmp_path):
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((30, 40), 1000, np.uint16)).save(deep)
    result = camkit.explain(deep, "camkit:shapes-cnn")
    assert result.image.getpixel((0, 0)) == (4, 4, 4)  # 1000 / 65535 of white, not clipped

    sideways = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show
    Image.new("RGB", (40, 30), (0, 0, 255)).save(sideways, exif=exif)
    result = camkit.explain(sideways, "camkit:shapes-cnn")
    assert result.image.size == (30, 40) and result.maps["gradcam"].shape == (1, 40, 30)
