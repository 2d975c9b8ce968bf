"""Short fixed-count loops inside jitted steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax

Carry = TypeVar("Carry")

UNROLL_LIMIT = 8


def repeat(body: Callable[[int, Carry], Carry], carry: Carry, start: int, stop: int) -> Carry:
  """``carry = body(i, carry)`` for ``i`` in ``range(start, stop)``.

  Always a ``jax.lax.fori_loop`` (``i`` is a traced integer). Loops of at most
  ``UNROLL_LIMIT`` iterations (the usual code and weight steps of alternating
  minimization) are fully unrolled (``unroll=True``), which XLA receives as straight-line
  code with no while loop; longer ones are a rolled loop. Unrolling lets XLA share work
  between neighbouring iterations and the code around them, and avoids a measured 3-4x
  slowdown of convolution gradients inside XLA:CPU while loops.
  """
  if stop <= start:
    return carry
  return jax.lax.fori_loop(start, stop, body, carry, unroll=stop - start <= UNROLL_LIMIT)
