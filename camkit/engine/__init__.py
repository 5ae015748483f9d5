"""camkit's core engine: everything CAM methods share, and nothing method-specific."""

from camkit.engine.extractor import CAMResult, Extractor
from camkit.engine.maps import fuse, resize, weighted_sum
from camkit.engine.options import RunOptions

__all__ = ["CAMResult", "Extractor", "RunOptions", "fuse", "resize", "weighted_sum"]
