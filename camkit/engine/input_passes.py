"""The passes that differentiate the target score with respect to the *input*, as methods of
:class:`~camkit.engine.services.Services` (a mixin, so that each pass stays in its own file):
guided backpropagation (:mod:`camkit.engine.guided`) and the full gradients
(:mod:`camkit.engine.bias_gradients`). Each runs at most once per call, after the call's
inputs are checked, however many layers (or methods' reads) ask for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from torch import Tensor

from camkit.engine.bias_gradients import bias_gradients
from camkit.engine.guided import guided_gradients

if TYPE_CHECKING:
    from camkit.engine.services import Services


class InputPasses:
    """Mixin of :class:`~camkit.engine.services.Services`: input-gradient passes, cached."""

    def guided_gradients(self) -> Tensor:
        """:func:`camkit.engine.guided.guided_gradients`, once per call."""
        result: Tensor = self._once("guided", guided_gradients)
        return result

    def bias_gradients(self) -> tuple[Tensor, list[tuple[str, Tensor]]]:
        """:func:`camkit.engine.bias_gradients.bias_gradients`, once per call."""
        result: tuple[Tensor, list[tuple[str, Tensor]]] = self._once("bias", bias_gradients)
        return result

    def _once(self, key: str, compute: Any) -> Any:
        cache: dict[str, Any] = self.__dict__.setdefault("_input_passes", {})
        if key not in cache:
            door = cast("Services", self)
            door.check_inputs()
            cache[key] = compute(door)
        return cache[key]
