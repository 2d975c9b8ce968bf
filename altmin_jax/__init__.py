"""altmin_jax: optax-style optimizers for training neural networks beyond plain backprop.

Families: online alternating minimization (:mod:`altmin_jax.am`), surrogate
minimization, delay-compensated asynchronous SGD and elastic averaging SGD.
"""

from altmin_jax import data, losses, networks, schedules, training
from altmin_jax.am import am_adam, am_adam_offline, am_mem, am_mem_offline
from altmin_jax.schedules import mu_schedule

__version__ = "0.1.0"

__all__ = [
  "am_adam",
  "am_adam_offline",
  "am_mem",
  "am_mem_offline",
  "data",
  "losses",
  "mu_schedule",
  "networks",
  "schedules",
  "training",
]
