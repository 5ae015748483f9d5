"""Model outputs that are not a plain tensor, and layer outputs in other layouts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.engine.outputs import scores_of, to_channels_first
from camkit.errors import LayerError, ModelOutputError


@dataclass
class ModelOutput:
    loss: Tensor | None
    logits: Tensor


WRAPS = {
    "tuple": lambda s: (s, s.sum()),
    "list": lambda s: [s],
    "dict-logits": lambda s: {"aux": s * 2, "logits": s},
    "dict-out": lambda s: {"out": s, "aux": s * 3},
    "dict-single": lambda s: {"anything": s, "meta": "not a tensor"},
    "object": lambda s: ModelOutput(loss=None, logits=s),
}

BAD = {
    "none": lambda s: None,
    "string": lambda s: "scores",
    "dict-ambiguous": lambda s: {"a": s, "b": s},
    "object-without-logits": lambda s: ModelOutput(loss=None, logits=None),  # type: ignore[arg-type]
}


class Wrapped(nn.Module):
    """The tiny model with its scores packed by ``wrap``."""

    def __init__(self, tiny: nn.Module, wrap: Any) -> None:
        super().__init__()
        self.tiny = tiny
        self.wrap = wrap

    def forward(self, x: Tensor) -> Any:
        return self.wrap(self.tiny(x))


@pytest.mark.parametrize("kind", sorted(WRAPS))
@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_outputs_are_adapted(tiny, x32, ref, kind, method):
    if method == "gradcam":
        _, expected = ref.gradcam(tiny, tiny.features, x32, ref.pick([3, 1]))
    else:
        _, expected = ref.cam(tiny, tiny.features, tiny.fc, x32, [3, 1])
    model = Wrapped(tiny, WRAPS[kind])

    res = camkit.create(method, model, "tiny.features")(x32, targets=[3, 1])

    torch.testing.assert_close(res.scores, tiny(x32).detach())
    torch.testing.assert_close(res.maps, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_unusable_outputs_raise(tiny, x32, no_hooks, kind):
    model = Wrapped(tiny, BAD[kind])
    with pytest.raises(ModelOutputError):
        camkit.create("gradcam", model, "tiny.features")(x32)
    no_hooks(model)


def test_error_message_names_the_keys():
    with pytest.raises(ModelOutputError, match=r"keys \['a', 'b'\].*'logits'"):
        scores_of({"a": torch.zeros(1), "b": torch.zeros(1)})
    with pytest.raises(TypeError, match="type NoneType"):
        scores_of(None)


class TupleBlock(nn.Module):
    """A layer returning ``(features, extra)``, as recurrent and attention blocks do."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.conv(x)
        return y, y.mean()


class TupleNet(nn.Module):
    def __init__(self, tiny: nn.Module) -> None:
        super().__init__()
        self.stem = tiny.features[:3]
        self.block = TupleBlock(tiny.features[3])
        self.fc = tiny.fc

    def forward(self, x: Tensor) -> Tensor:
        y, extra = self.block(self.stem(x))
        return self.fc(torch.relu(y).mean((2, 3)) + extra)


def test_layer_with_tuple_output_explains_its_first_tensor(tiny, x32, ref):
    model = TupleNet(tiny).eval()
    layer_map, maps = ref.gradcam(model, model.block.conv, x32, ref.pick([0, 2]))

    res = camkit.create("gradcam", model, "block")(x32, targets=[0, 2])

    torch.testing.assert_close(res.layer_maps["block"], layer_map, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.maps, maps, atol=1e-5, rtol=0)


def test_layer_with_non_tensor_output(tiny, x32):
    class Labelled(nn.Module):
        def forward(self, x: Tensor) -> dict[str, Tensor]:
            return {"x": x}

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tag = Labelled()
            self.tiny = tiny

        def forward(self, x: Tensor) -> Tensor:
            return self.tiny(self.tag(x)["x"])

    with pytest.raises(LayerError, match="layer 'tag' returned dict, not a tensor"):
        camkit.create("gradcam", Net(), "tag")(x32)


def test_channels_first_is_kept():
    t = torch.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    assert to_channels_first(t, "nchw") is t


def test_channels_last_is_permuted():
    t = torch.arange(2 * 4 * 4 * 8.0).reshape(2, 4, 4, 8)  # (B, H, W, C)
    out = to_channels_first(t, "auto", input_size=(32, 32))
    assert out.shape == (2, 8, 4, 4)
    assert out[1, 5, 2, 3] == t[1, 2, 3, 5]


def test_tokens_drop_the_class_token():
    t = torch.arange(2 * 17 * 3.0).reshape(2, 17, 3)  # class token + a 4x4 grid
    out = to_channels_first(t)
    assert out.shape == (2, 3, 4, 4)
    # Token 1 + 4 * i + j sits at grid position (i, j).
    assert out[1, 2, 2, 1] == t[1, 1 + 4 * 2 + 1, 2]


def test_tokens_that_do_not_fill_the_grid():
    with pytest.raises(LayerError, match="pass grid="):
        to_channels_first(torch.zeros(1, 5, 3), grid=(3, 3))
