"""Embeddings: similarity to a reference embedding, to a concept, and between two images,
for models returning a tensor, a tuple or a dict.

References compute the cosine similarity from its definition on the raw output.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.errors import InputError
from camkit.targets import SimilarityTarget
from camkit.tasks import embed, similarity_maps

from . import reference

LAYER = "features"


class Embedder(nn.Module):
    """``(B, 3, H, W)`` -> ``(B, 8)`` embeddings, returned as ``form`` says."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
        self.project = nn.Linear(6, 8)
        self.form = form

    def forward(self, x: Tensor) -> Any:
        e = self.project(self.features(x).mean((2, 3)))
        if self.form == "tuple":
            return e, e.norm(dim=1)
        if self.form == "dict":
            return {"embedding": e}
        return e


FORMS = ["tensor", "tuple", "dict"]


def _embedding(out: Any) -> Tensor:
    return (
        out if isinstance(out, Tensor) else out[0] if isinstance(out, tuple) else out["embedding"]
    )


def _cosine(out: Any, ref: Tensor) -> Tensor:
    e = _embedding(out)
    return (e * ref).sum(1) / (e.norm(dim=1) * ref.norm(dim=-1))


def _case(form: str) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    return Embedder(form).eval(), torch.randn(2, 3, 12, 12)


@pytest.mark.parametrize("form", FORMS)
def test_embed_reads_every_form(form: str) -> None:
    model, x = _case(form)
    with torch.no_grad():
        expected = _embedding(model(x))
    torch.testing.assert_close(embed(model, x), expected)
    with pytest.raises(InputError, match="batch of images"):
        embed(model, x[0])


@pytest.mark.parametrize("form", FORMS)
def test_similarity_to_a_reference_and_to_a_concept(form: str) -> None:
    model, x = _case(form)
    torch.manual_seed(2)
    examples = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        concept = _embedding(model(examples)).mean(0)
    target = SimilarityTarget.concept(model, examples)
    torch.testing.assert_close(target.reference, concept)
    expected = reference.gradcam(model, LAYER, x, lambda out: _cosine(out, concept))
    res = camkit.create("gradcam", model, LAYER)(x, targets=target)
    torch.testing.assert_close(res.layer_maps[LAYER], expected, rtol=1e-4, atol=1e-7)
    assert float(expected.amax()) > 0


@pytest.mark.parametrize("form", FORMS)
def test_similarity_between_two_images_gives_both_maps(form: str) -> None:
    model, x = _case(form)
    a, b = x[:1], x[1:]
    with torch.no_grad():
        ea, eb = _embedding(model(a)), _embedding(model(b))
    res_a, res_b = similarity_maps(camkit.create("gradcam", model, LAYER), a, b)
    for res, image, other in ((res_a, a, eb), (res_b, b, ea)):
        expected = reference.gradcam(model, LAYER, image, lambda out, o=other: _cosine(out, o))
        torch.testing.assert_close(res.layer_maps[LAYER], expected, rtol=1e-4, atol=1e-7)
        assert float(expected.amax()) > 0


def test_scorecam_similarity_per_image_references() -> None:
    model, x = _case("tuple")
    with torch.no_grad():
        refs = _embedding(model(torch.randn(2, 3, 12, 12)))

    def score(out: Any, images: list[int] | None = None) -> Tensor:
        return _cosine(out, refs if images is None else refs[images])

    expected = reference.scorecam(model, LAYER, x, score)
    res = camkit.create("scorecam", model, LAYER, batch_size=5)(x, SimilarityTarget(refs))
    torch.testing.assert_close(res.layer_maps[LAYER], expected, rtol=1e-4, atol=1e-6)


def test_similarity_maps_needs_pairs() -> None:
    model, x = _case("tensor")
    with pytest.raises(InputError, match="pair by pair"):
        similarity_maps(camkit.create("gradcam", model, LAYER), x, x[:1])
