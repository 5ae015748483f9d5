"""The embedded default: the synthetic ``camkit:shapes`` set and the ``camkit:shapes-cnn`` model.

>>> from camkit import zoo
>>> model = zoo.load_model("shapes-cnn")        # trained weights shipped in the package
>>> images, labels, boxes = zoo.shapes.generate(8, seed=0)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from camkit.errors import ConfigError, did_you_mean
from camkit.zoo import shapes
from camkit.zoo.model import ShapesCNN
from camkit.zoo.shapes import CLASSES, ShapesDataset

__all__ = ["CLASSES", "MODELS", "ShapesCNN", "ShapesDataset", "load_model", "shapes"]

_HERE = Path(__file__).parent

#: Embedded models: name -> (constructor, weights file inside this package).
MODELS: dict[str, tuple[type[nn.Module], str]] = {"shapes-cnn": (ShapesCNN, "shapes_cnn.pt")}


def load_model(name: str, pretrained: bool = True) -> nn.Module:
    """An embedded model in eval mode, with its shipped weights unless ``pretrained=False``."""
    if name not in MODELS:
        raise ConfigError(
            f"no embedded model {name!r}; available: {', '.join(sorted(MODELS))}."
            + did_you_mean(name, MODELS)
        )
    cls, weights = MODELS[name]
    model = cls()
    if pretrained:
        state = torch.load(_HERE / weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()
