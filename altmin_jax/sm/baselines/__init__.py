"""The SM paper's baselines (Asad et al., section 4), each an optax-style method."""

from altmin_jax.sm.baselines.cg_block import CGBlockState, cg_block
from altmin_jax.sm.baselines.ddg import DDGState, ddg
from altmin_jax.sm.baselines.gd_armijo import GDArmijoState, gd_armijo
from altmin_jax.sm.baselines.sso import SSOState, sso

__all__ = [
  "CGBlockState",
  "DDGState",
  "GDArmijoState",
  "SSOState",
  "cg_block",
  "ddg",
  "gd_armijo",
  "sso",
]
