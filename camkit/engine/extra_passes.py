"""Passes beyond the clean pass and scoring, as methods of
:class:`~camkit.engine.services.Services` (a mixin, so that each pass stays in its own file
and ``services.py`` stays short).

The input-gradient passes, guided backpropagation (:mod:`camkit.engine.guided`) and the full
gradients (:mod:`camkit.engine.bias_gradients`), run at most once per call, after the call's
inputs are checked, however many layers (or methods' reads) ask for them. The second-order
pass (:mod:`camkit.engine.hessian`) and the attention pass (:mod:`camkit.engine.attention`)
depend on the layer and check the inputs themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from torch import Tensor

from camkit.engine.attention import attention_gradients
from camkit.engine.bias_gradients import bias_gradients
from camkit.engine.guided import guided_gradients
from camkit.engine.hessian import hessian_vector_product

if TYPE_CHECKING:
    from camkit.engine.services import Services


class ExtraPasses:
    """Mixin of :class:`~camkit.engine.services.Services`: input-gradient passes (cached),
    Hessian-vector products and attention gradients."""

    def hessian_vector_product(self, layer: str, vectors: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`camkit.engine.hessian.hessian_vector_product` (it checks the inputs first)."""
        return hessian_vector_product(cast("Services", self), layer, vectors)

    def attention_gradients(
        self, layer: str, last: int | None, project: Callable[[Tensor], Tensor] | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """:func:`camkit.engine.attention.attention_gradients` (it checks the inputs first)."""
        return attention_gradients(cast("Services", self), layer, last, project)

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
            door.before_pass()
            cache[key] = compute(door)
        return cache[key]
