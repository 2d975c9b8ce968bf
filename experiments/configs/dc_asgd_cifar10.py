"""DC-ASGD paper, CIFAR-10 with ResNet-20 (issue 7, requirement 6).

ResNet-20 (``ResNet20`` in ``experiments/runners/distributed.py``; batch normalization
with batch statistics only), 4 or 8 simulated workers with round-robin staleness p - 1,
minibatches of 128 per worker. DC-ASGD-c with lambda_0 = 0.04 and DC-ASGD-a with
lambda_0 = 2 (m = 0.95, eps = 1e-7), against ASGD and SSGD. The learning rate 0.5 follows
the DC-ASGD paper's CIFAR-10 setting as we recall it (its main text is not in
``papers/``): check it before quoting results.

Options after a colon, comma separated: ``p=4`` / ``p=8`` (default 4), ``random`` (seeded
random delays), ``smoke`` (CI size: TFDS mock data, a narrow net, a few rounds).
"""

from __future__ import annotations

from experiments.configs import common
from experiments.configs.distributed_mnist import base_config, run_spec, smoke

LR = 0.5


def runs_for(p: int) -> dict:
  return {
    f"dc_asgd_c_p{p}": run_spec("dc_asgd", LR, p, lambda_0=0.04),
    f"dc_asgd_a_p{p}": run_spec("dc_asgd_adaptive", LR, p, lambda_0=2.0),
    f"asgd_p{p}": run_spec("async_sgd", LR, p),
    f"ssgd_p{p}": run_spec("ssgd", LR, p),
  }


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, {"p=4", "p=8", "random", "smoke"})
  p = 8 if "p=8" in options else 4
  config = base_config(dataset="cifar10", model="resnet20", runs=runs_for(p), rounds=20000)
  config.seeds = (0,)
  if "random" in options:
    config.delay = "random"
  if "smoke" in options:
    config = smoke(config)
    config.mock_data = 64
    config.width = 4
    config.run_list = (f"dc_asgd_c_p{p}",)
  return config
