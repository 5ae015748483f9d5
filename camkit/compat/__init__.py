"""Drop-in shims: code written for torchcam 0.5.0 or pytorch-grad-cam 1.5.7, computed by camkit.

Change one import line and keep the rest of the script::

    from camkit.compat.torchcam.methods import GradCAM            # was: from torchcam.methods ...
    from camkit.compat.pytorch_grad_cam import GradCAM             # was: from pytorch_grad_cam ...

The shims reproduce those libraries' public names, arguments, call protocols and return
types; the maps come from camkit's methods through its public API (:func:`camkit.create`).
Neither library, nor OpenCV, is imported. Where the original is numerically wrong the shim
computes the correct value and ``legacy_numerics=True`` reproduces the original; see
``docs/migrating.md``.
"""
