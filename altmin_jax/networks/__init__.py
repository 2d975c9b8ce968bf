"""Layered networks: the chain-of-stages view that AM and SM optimise (Choromanska et al.
2019, sec. 2), and in :mod:`~altmin_jax.networks.stages` the stage plumbing that both
families and :mod:`altmin_jax.pipeline` use."""

from altmin_jax.networks import stages
from altmin_jax.networks.binary import binary_mlp, sign_activation, sign_ste, sign_tanh
from altmin_jax.networks.builders import ACTIVATIONS, dense_stage, mlp
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
from altmin_jax.networks.lenet import conv_stage, lenet5, max_pool
from altmin_jax.networks.rnn import ElmanRNN, as_sequences, elman_rnn

__all__ = [
  "ACTIVATIONS",
  "ElmanRNN",
  "LayeredNetwork",
  "Stage",
  "as_arrays",
  "as_sequences",
  "binary_mlp",
  "conv_stage",
  "dense_kernel_bias",
  "dense_stage",
  "elman_rnn",
  "flatten_batch",
  "from_nnx",
  "identity",
  "lenet5",
  "max_pool",
  "mlp",
  "sign_activation",
  "sign_ste",
  "sign_tanh",
  "stages",
  "with_dense_kernel_bias",
]
