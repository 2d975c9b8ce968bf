"""Short fixed-count loops inside jitted steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import optax

Carry = TypeVar("Carry")

UNROLL_LIMIT = 8


def repeat(body: Callable[[int, Carry], Carry], carry: Carry, start: int, stop: int) -> Carry:
  """``carry = body(i, carry)`` for ``i`` in ``range(start, stop)``.

  Loops of at most ``UNROLL_LIMIT`` iterations (the usual code and weight steps of
  alternating minimization) are unrolled at trace time; longer ones are a
  ``jax.lax.fori_loop``. Unrolling lets XLA share work between neighbouring
  iterations and the code around them, and avoids a measured 3-4x slowdown of
  convolution gradients inside XLA:CPU while loops (``lax.fori_loop(..., unroll=True)``
  does not avoid it: LeNet-5's AM-Adam step measured 4.9x Adam with it, 1.05x unrolled
  here, ``benchmarks/am_arch_step.py``).
  """
  if stop - start <= UNROLL_LIMIT:
    for i in range(start, stop):
      carry = body(i, carry)
    return carry
  return jax.lax.fori_loop(start, stop, body, carry)


def optimizer_steps(
  objective: Callable[[Any], jax.Array],
  params: Any,
  opt_state: Any,
  tx: optax.GradientTransformation,
  steps: int,
) -> tuple[Any, Any]:
  """``steps`` iterations ``params <- params + tx(grad objective(params))`` from
  ``(params, opt_state)``, as a :func:`repeat` loop; returns the new pair.

  A ``tx`` that takes extra arguments (``optax.GradientTransformationExtraArgs``) also
  receives optax's line-search keywords ``value``, ``grad`` and ``value_fn`` (the
  objective), so that line searches and
  :func:`altmin_jax.am.codes.scale_by_model_minimizer` can be used; transformations that
  do not need them ignore them.
  """
  value_and_grad = jax.value_and_grad(objective)
  extra = isinstance(tx, optax.GradientTransformationExtraArgs)

  def body(_, carry):
    p, s = carry
    value, grad = value_and_grad(p)
    if extra:
      updates, s = tx.update(grad, s, p, value=value, grad=grad, value_fn=objective)
    else:
      updates, s = tx.update(grad, s, p)
    return optax.apply_updates(p, updates), s

  return repeat(body, (params, opt_state), 0, steps)
