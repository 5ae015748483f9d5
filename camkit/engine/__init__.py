"""camkit's core engine: everything CAM methods share, and nothing method-specific."""

from camkit.engine.extractor import CAMResult, Extractor
from camkit.engine.maps import fuse, normalize, resize, weighted_sum

__all__ = ["CAMResult", "Extractor", "fuse", "normalize", "resize", "weighted_sum"]
