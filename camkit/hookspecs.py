"""The hooks a camkit plugin may implement.

A plugin is any module or object with functions marked ``@camkit.hookimpl`` whose names match
the specifications below. Built-in methods register through exactly these hooks; third-party
distributions are found through the ``camkit`` entry-point group::

    [project.entry-points.camkit]
    mycam = "camkit_mymethod"

Entry points are loaded lazily, the first time camkit needs its method list. A plugin that
fails to import is recorded as broken and camkit keeps working without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from camkit.method import Method

hookspec = pluggy.HookspecMarker("camkit")


@hookspec
def camkit_methods() -> list[type[Method]]:  # type: ignore[empty-body]
    """Return the CAM method classes this plugin provides.

    Called once per plugin when camkit first builds its method registry (on the first
    ``camkit.create``, ``camkit.list_methods`` or ``camkit.method_info``), and again when a
    plugin is registered at run time.

    Each class subclasses :class:`camkit.Method` and sets ``name`` (lower-case letters, digits
    and hyphens), ``summary``, ``Config`` and either ``weights()`` or ``map()``, and declares
    what it needs: ``needs_gradients`` (it reads ``ctx.gradients``), ``many_forwards`` (it
    runs the model many times per image, through ``ctx.score``, ``ctx.score_layer`` or
    ``ctx.gradients_at``). ``Config`` holds only the weight strategy's parameters: how the
    model is run (``batch_size``, ``precision``, ...) is the engine's
    :class:`camkit.RunOptions`. A name or alias that another plugin already claims raises
    :class:`camkit.errors.PluginError` naming both distributions; nothing is overwritten.
    """
