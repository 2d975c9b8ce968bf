"""Online and offline alternating minimization (Choromanska et al., ICML 2019) and the
Taylor et al. (2016) ADMM baseline.

One module per method (:mod:`~altmin_jax.am.online`, :mod:`~altmin_jax.am.offline`,
:mod:`~altmin_jax.am.rnn`, :mod:`~altmin_jax.am.admm`,
:mod:`~altmin_jax.am.pipelined` with its phases in
:mod:`~altmin_jax.am.pipelined_phases`) over the shared building blocks
:mod:`~altmin_jax.am.codes` (code subproblems) and :mod:`~altmin_jax.am.weights`
(weight subproblems); what the methods share otherwise lives in ``_common``, among it
:class:`CodeStepOptions`, the validated code-step keywords every AM factory takes.
"""

from altmin_jax.am._common import WEIGHT_INPUTS, CodeStepOptions
from altmin_jax.am.admm import TaylorADMMState, taylor_admm
from altmin_jax.am.codes import (
  encode_anchors,
  make_code_optimizer,
  scale_by_model_minimizer,
  update_codes,
)
from altmin_jax.am.offline import AMOfflineState, am_adam_offline, am_mem_offline
from altmin_jax.am.online import AMState, am_adam, am_mem
from altmin_jax.am.pipelined import PipelinedAMState, pipelined_am_adam, pipelined_am_mem
from altmin_jax.am.rnn import RNNAMState, am_adam_rnn, update_rnn_codes
from altmin_jax.am.weights import CoactivationMemory, block_coordinate_sweeps, exact_solve

__all__ = [
  "WEIGHT_INPUTS",
  "AMOfflineState",
  "AMState",
  "CoactivationMemory",
  "CodeStepOptions",
  "PipelinedAMState",
  "RNNAMState",
  "TaylorADMMState",
  "am_adam",
  "am_adam_offline",
  "am_adam_rnn",
  "am_mem",
  "am_mem_offline",
  "block_coordinate_sweeps",
  "encode_anchors",
  "exact_solve",
  "make_code_optimizer",
  "pipelined_am_adam",
  "pipelined_am_mem",
  "scale_by_model_minimizer",
  "taylor_admm",
  "update_codes",
  "update_rnn_codes",
]
