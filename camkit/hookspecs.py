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
    from camkit.method import ExplainerSpec, Method

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


@hookspec
def camkit_explainers() -> list[ExplainerSpec]:  # type: ignore[empty-body]
    """Return descriptions of the explainers (non-CAM methods) this plugin provides.

    An explainer is an explanation method that does not fit :class:`camkit.Method` (no target
    class, several maps per image, a result type of its own). Each is a
    :class:`camkit.ExplainerSpec`: plain data (name, summary, paper, the ``"module:qualname"``
    of the object to call and of the result type it returns), so listing explainers imports
    neither the plugin's code behind them nor torch. ``camkit methods`` lists them in a table
    of their own; :func:`camkit.explainer_info` describes one.

    Explainers share the method namespace: a name or alias that a method or another
    explainer already claims raises :class:`camkit.errors.PluginError` naming both
    distributions. Called when :func:`camkit_methods` is.
    """
