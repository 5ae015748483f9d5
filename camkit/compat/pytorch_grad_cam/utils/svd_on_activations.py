"""pytorch-grad-cam's ``utils.svd_on_activations``: each image's activations projected on
their first principal component (Eigen-CAM's projection), plain, with a kernel, or with
the sign corrected.

Each function takes ``(B, C, h, w)`` NumPy activations (NaN read as 0) and returns
``(B, h, w)`` float32 projections. The kernel variant computes the kernel PCA itself, in
float64 (no scikit-learn): the components are scikit-learn's ``KernelPCA`` ones, the sign
chosen the same way (the largest entry of the eigenvector positive).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "get_2d_projection",
    "get_2d_projection_kernel",
    "get_2d_projection_with_sign_correction",
]


def _centred_rows(activations: np.ndarray) -> np.ndarray:
    """``(h w, C)`` locations of one image's ``(C, h, w)`` activations, centred per channel."""
    rows = activations.reshape(activations.shape[0], -1).T
    return rows - rows.mean(axis=0)


def _first_component(rows: np.ndarray) -> np.ndarray:
    """The rows projected on their first right-singular vector (NumPy's SVD and its sign)."""
    _, _, vt = np.linalg.svd(rows, full_matrices=True)
    return rows @ vt[0, :]


def _images(activation_batch: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(activation_batch), nan=0.0, posinf=np.inf, neginf=-np.inf)


def get_2d_projection(activation_batch: np.ndarray) -> np.ndarray:
    """Each image's centred activations on their first principal component.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
        >>> get_2d_projection(np.random.rand(2, 8, 4, 4)).shape
        (2, 4, 4)
    """
    return np.array(
        [
            _first_component(_centred_rows(a)).reshape(a.shape[1:])
            for a in _images(activation_batch)
        ],
        dtype=np.float32,
    )


def get_2d_projection_with_sign_correction(activation_batch: np.ndarray) -> np.ndarray:
    """:func:`get_2d_projection`, each map negated where its minimum is larger in magnitude
    than its maximum (Seg-Eigen-CAM's sign correction).

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.svd_on_activations import (
        ...     get_2d_projection_with_sign_correction,
        ... )
        >>> maps = get_2d_projection_with_sign_correction(np.random.rand(2, 8, 4, 4))
        >>> bool((np.abs(maps.min(axis=(1, 2))) <= np.abs(maps.max(axis=(1, 2)))).all())
        True
    """
    out = []
    for a in _images(activation_batch):
        projection = _first_component(_centred_rows(a)).reshape(a.shape[1:])
        if abs(projection.min()) > abs(projection.max()):
            projection = -projection
        out.append(projection)
    return np.array(out, dtype=np.float32)


def _kernel(rows: np.ndarray, kernel: str, gamma: float) -> np.ndarray:
    """The ``(N, N)`` Gram matrix of ``rows`` under scikit-learn's kernels (``degree=3``,
    ``coef0=1``)."""
    dot = rows @ rows.T
    if kernel == "linear":
        return dot
    if kernel == "poly":
        return (gamma * dot + 1.0) ** 3
    if kernel == "sigmoid":
        return np.tanh(gamma * dot + 1.0)
    if kernel == "rbf":
        sq = (rows * rows).sum(axis=1)
        return np.exp(-gamma * np.maximum(sq[:, None] + sq[None, :] - 2 * dot, 0.0))
    if kernel == "cosine":
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        unit = rows / np.where(norms == 0, 1.0, norms)
        return unit @ unit.T
    from camkit.errors import ConfigError

    raise ConfigError(
        f"kernel={kernel!r}: choose one of 'linear', 'poly', 'rbf', 'sigmoid', 'cosine'"
    )


def get_2d_projection_kernel(
    activation_batch: np.ndarray, kernel: str = "sigmoid", gamma: float | None = None
) -> np.ndarray:
    """Each image's centred activations on their first kernel principal component
    (``gamma`` defaults to ``1 / C``).

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.svd_on_activations import (
        ...     get_2d_projection_kernel,
        ... )
        >>> get_2d_projection_kernel(np.random.rand(2, 8, 4, 4), kernel="rbf").shape
        (2, 4, 4)
    """
    out = []
    for a in _images(activation_batch):
        rows = _centred_rows(a).astype(np.float64)
        gram = _kernel(rows, kernel, 1.0 / rows.shape[1] if gamma is None else gamma)
        gram = gram - gram.mean(0) - gram.mean(1)[:, None] + gram.mean()
        values, vectors = np.linalg.eigh(gram)
        vector = vectors[:, -1]
        vector = vector * np.sign(vector[np.argmax(np.abs(vector))])
        out.append((vector * np.sqrt(max(values[-1], 0.0))).reshape(a.shape[1:]))
    return np.array(out, dtype=np.float32)
