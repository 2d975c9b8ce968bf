"""altmin_jax: optax-style optimizers for training neural networks beyond plain backprop.

Families, each a set of factories returning ``optax.GradientTransformationExtraArgs``:

* online alternating minimization (:mod:`altmin_jax.am`, Choromanska et al. 2019);
* surrogate minimization and its baselines (:mod:`altmin_jax.sm`, Asad et al.);
* delay-compensated asynchronous SGD and elastic averaging SGD
  (:mod:`altmin_jax.distributed`, Zheng et al. 2017; Zhang, Choromanska, LeCun 2015).

The AM and SM methods are pipelined over a ``'stage'`` mesh axis with the GPipe machinery of
:mod:`altmin_jax.pipeline` (``from altmin_jax import pipeline``).
"""

from altmin_jax import (
  am,
  core,
  data,
  distributed,
  losses,
  networks,
  numerics,
  pipeline,
  schedules,
  sm,
  training,
)
from altmin_jax.am import (
  am_adam,
  am_adam_offline,
  am_adam_rnn,
  am_mem,
  am_mem_offline,
  pipelined_am_adam,
  pipelined_am_mem,
  taylor_admm,
)
from altmin_jax.distributed import (
  async_easgd,
  async_sgd,
  averaged_sgd,
  dc_asgd,
  dc_asgd_adaptive,
  dc_ssgd,
  downpour,
  eamsgd,
  easgd,
  mdownpour,
  msgd,
  mvasgd,
  ssgd,
)
from altmin_jax.schedules import mu_schedule
from altmin_jax.sm import (
  cg_block,
  ddg,
  gd_armijo,
  pipelined_gradient_descent,
  pipelined_surrogate_minimization,
  sso,
  surrogate_minimization,
)

__version__ = "0.1.0"

__all__ = [
  "am",
  "am_adam",
  "am_adam_offline",
  "am_adam_rnn",
  "am_mem",
  "am_mem_offline",
  "async_easgd",
  "async_sgd",
  "averaged_sgd",
  "cg_block",
  "core",
  "data",
  "dc_asgd",
  "dc_asgd_adaptive",
  "dc_ssgd",
  "ddg",
  "distributed",
  "downpour",
  "eamsgd",
  "easgd",
  "gd_armijo",
  "losses",
  "mdownpour",
  "msgd",
  "mu_schedule",
  "mvasgd",
  "networks",
  "numerics",
  "pipeline",
  "pipelined_am_adam",
  "pipelined_am_mem",
  "pipelined_gradient_descent",
  "pipelined_surrogate_minimization",
  "schedules",
  "sm",
  "ssgd",
  "sso",
  "surrogate_minimization",
  "taylor_admm",
  "training",
]
