"""Layered networks: the chain-of-stages view that AM and SM optimise (SPEC section 3)."""

from altmin_jax.networks.builders import dense_stage, mlp
from altmin_jax.networks.flax_adapters import from_nnx
from altmin_jax.networks.layered import (
  LayeredNetwork,
  Stage,
  as_arrays,
  dense_kernel_bias,
  flatten_batch,
  identity,
  with_dense_kernel_bias,
)

__all__ = [
  "LayeredNetwork",
  "Stage",
  "as_arrays",
  "dense_kernel_bias",
  "dense_stage",
  "flatten_batch",
  "from_nnx",
  "identity",
  "mlp",
  "with_dense_kernel_bias",
]
