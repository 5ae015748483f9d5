"""Small task models: torchvision detectors on a two-conv backbone, and stock builders.

The tiny detectors use torchvision's real detection heads (region proposals, RoI heads,
non-maximum suppression, box decoding, resizing) on a backbone small enough for fast tests.
A score threshold of 0 keeps every box, so even random weights return detections.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import detection
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

SIZE = 64  # the detectors' internal min_size and max_size: square inputs are not resized


class TinyBackbone(nn.Module):
    """``(B, 3, H, W)`` -> ``(B, 32, H/4, W/4)``; ``body`` is the layer the tests explain
    (32 channels: FCOS's head normalizes in 32 groups)."""

    out_channels = 32

    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 32, 3, 2, 1), nn.ReLU()
        )
        self.as_dict = as_dict

    def forward(self, x: Tensor) -> Any:
        out = self.body(x)
        return OrderedDict([("0", out)]) if self.as_dict else out


def _anchors() -> AnchorGenerator:
    return AnchorGenerator(sizes=((16, 32),), aspect_ratios=((0.5, 1.0, 2.0),))


def tiny_faster_rcnn(seed: int = 0, num_classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return detection.FasterRCNN(
        TinyBackbone(),
        num_classes=num_classes,
        rpn_anchor_generator=_anchors(),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        min_size=SIZE,
        max_size=SIZE,
        box_score_thresh=0.0,
        rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_test=20,
        box_detections_per_img=20,
        representation_size=32,
    ).eval()


def tiny_retinanet(seed: int = 0, num_classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return detection.RetinaNet(
        TinyBackbone(as_dict=True),
        num_classes=num_classes,
        anchor_generator=_anchors(),
        min_size=SIZE,
        max_size=SIZE,
        score_thresh=0.0,
        topk_candidates=30,
        detections_per_img=20,
    ).eval()


def tiny_fcos(seed: int = 0, num_classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return detection.FCOS(
        TinyBackbone(as_dict=True),
        num_classes=num_classes,
        anchor_generator=AnchorGenerator(sizes=((16,),), aspect_ratios=((1.0,),)),
        min_size=SIZE,
        max_size=SIZE,
        score_thresh=0.0,
        topk_candidates=30,
        detections_per_img=20,
    ).eval()


TINY_DETECTORS = {
    "faster-rcnn": tiny_faster_rcnn,
    "retinanet": tiny_retinanet,
    "fcos": tiny_fcos,
}


def stock_detector(name: str) -> nn.Module:
    """A torchvision detector from its builder, random weights, small and thresholdless."""
    torch.manual_seed(0)
    small: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": 5}
    if name != "ssdlite":
        small |= {"min_size": SIZE, "max_size": SIZE}
    rcnn = {
        "box_score_thresh": 0.0,
        "rpn_pre_nms_top_n_test": 50,
        "rpn_post_nms_top_n_test": 20,
        "box_detections_per_img": 20,
    }
    dense = {"score_thresh": 0.0, "topk_candidates": 30, "detections_per_img": 20}
    builders = {
        "fasterrcnn_resnet50_fpn": (detection.fasterrcnn_resnet50_fpn, rcnn),
        "maskrcnn_resnet50_fpn": (detection.maskrcnn_resnet50_fpn, rcnn),
        "retinanet_resnet50_fpn": (detection.retinanet_resnet50_fpn, dense),
        "fcos_resnet50_fpn": (detection.fcos_resnet50_fpn, dense),
        "ssdlite": (detection.ssdlite320_mobilenet_v3_large, dense),
    }
    build, options = builders[name]
    return build(**small, **options).eval()
