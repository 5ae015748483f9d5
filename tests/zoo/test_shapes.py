"""The embedded ``camkit:shapes`` set: deterministic, well-formed, boxes that fit."""

from __future__ import annotations

import numpy as np
import torch

from camkit.zoo import ShapesDataset, shapes


def test_an_image_depends_only_on_seed_and_index():
    a = shapes.render(3, 17)
    b = shapes.render(3, 17)
    assert np.array_equal(a.image, b.image) and a.label == b.label and a.box == b.box
    images, labels, boxes = shapes.generate(4, seed=3, start=15)
    assert torch.equal(images[2], torch.from_numpy(a.image))
    assert labels[2].item() == a.label and tuple(boxes[2].tolist()) == a.box


def test_seeds_and_indices_give_different_images():
    assert not np.array_equal(shapes.render(0, 0).image, shapes.render(1, 0).image)
    assert not np.array_equal(shapes.render(0, 0).image, shapes.render(0, 1).image)


def test_images_are_rgb_in_unit_range_and_classes_are_balanced():
    images, labels, boxes = shapes.generate(200, seed=5)
    assert images.shape == (200, 3, 64, 64) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    counts = torch.bincount(labels, minlength=len(shapes.CLASSES))
    assert counts.min() >= 30  # 50 expected per class
    x0, y0, x1, y1 = boxes.T
    assert bool(((x0 >= 0) & (y0 >= 0) & (x1 <= 64) & (y1 <= 64)).all())
    side = torch.minimum(x1 - x0, y1 - y0)
    assert side.min() >= 10 and side.max() <= 32


def test_the_box_holds_the_shape_colour():
    sample = shapes.render(0, 4)
    x0, y0, x1, y1 = sample.box
    inside = sample.image[:, y0:y1, x0:x1].reshape(3, -1)
    # the shape is one flat colour under noise of std 0.06: its pixels dominate the box
    centre = sample.image[:, (y0 + y1) // 2, (x0 + x1) // 2]
    close = (np.abs(inside - centre[:, None]) < 0.25).all(0).mean()
    assert close > 0.4


def test_shape_masks_by_hand():
    square = shapes.shape_mask(1, 5.0, 5.0, 2.0, 10)
    # pixel centres 3.5 .. 6.5 lie within 2 of 5
    assert np.array_equal(np.nonzero(square.any(0))[0], [3, 4, 5, 6])
    assert square.sum() == 16
    circle = shapes.shape_mask(0, 5.0, 5.0, 1.0, 10)
    # centres at distance <= 1: (4.5, 4.5) .. (5.5, 5.5), i.e. the 2 x 2 block at 4..5
    assert circle.sum() == 4 and circle[4:6, 4:6].all()
    cross = shapes.shape_mask(3, 5.0, 5.0, 3.0, 10)
    assert cross[5, 2] and cross[2, 5] and not cross[2, 2]
    triangle = shapes.shape_mask(2, 5.0, 5.0, 4.0, 10)
    assert triangle[8, 1] and triangle[8, 8] and not triangle[2, 2] and triangle[2, 5]


def test_dataset_items_match_generate():
    dataset = ShapesDataset(5, seed=2)
    image, label, box = dataset[3]
    images, labels, boxes = shapes.generate(5, seed=2)
    assert torch.equal(image, images[3]) and label == labels[3] and torch.equal(box, boxes[3])
    assert len(dataset) == 5
