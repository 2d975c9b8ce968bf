"""EASGD paper, CIFAR-10 (Figures 2-3, supplement section 9; issue 7, requirement 6).

The 7-layer convnet (``ConvNet7`` in ``experiments/runners/distributed.py``, after the
paper's description), p local workers, communication period tau, minibatches of 128 per
worker, constant learning rates from the supplement's Table 1 (the middle of each explored
set), beta = p alpha = 0.9, momentum delta = 0.99 for EAMSGD / MDOWNPOUR / MSGD. The
single-worker baselines SGD, averaged SGD, MVASGD (moving rate 0.001) and MSGD run with
p = 1.

Options after a colon, comma separated: ``p=4`` / ``p=8`` / ``p=16`` (default 4),
``tau=1`` / ``tau=4`` / ``tau=16`` / ``tau=64`` (default 4), ``smoke`` (CI size: TFDS mock
data, a narrow net, a few rounds).
"""

from __future__ import annotations

from experiments.configs import common
from experiments.configs.distributed_mnist import base_config, run_spec, smoke

TABLE_1 = {  # supplement Table 1: the middle of each method's explored learning rates
  "async_easgd": 0.01,
  "eamsgd": 0.005,
  "downpour": 0.001,
  "mdownpour": 0.00001,
  "sgd": 0.01,
  "averaged_sgd": 0.01,
  "mvasgd": 0.01,
  "msgd": 0.0005,
}


def runs_for(p: int, tau: int) -> dict:
  lr = TABLE_1
  return {
    f"easgd_p{p}_tau{tau}": run_spec(
      "async_easgd", lr["async_easgd"], p, beta=0.9, communication_period=tau
    ),
    f"eamsgd_p{p}_tau{tau}": run_spec(
      "eamsgd", lr["eamsgd"], p, beta=0.9, momentum=0.99, communication_period=tau
    ),
    f"downpour_p{p}_tau{tau}": run_spec("downpour", lr["downpour"], p, communication_period=tau),
    f"mdownpour_p{p}": run_spec("mdownpour", lr["mdownpour"], p, momentum=0.99),
    "sgd": run_spec("sgd", lr["sgd"]),
    "averaged_sgd": run_spec("averaged_sgd", lr["averaged_sgd"]),
    "mvasgd": run_spec("mvasgd", lr["mvasgd"], moving_rate=0.001),
    "msgd": run_spec("msgd", lr["msgd"], momentum=0.99),
  }


def get_config(arg: str | None = None):
  allowed = {"p=4", "p=8", "p=16", "tau=1", "tau=4", "tau=16", "tau=64", "smoke"}
  options = common.parse_arg(arg, allowed)
  p = next((int(o[2:]) for o in options if o.startswith("p=")), 4)
  tau = next((int(o[4:]) for o in options if o.startswith("tau=")), 4)
  config = base_config(dataset="cifar10", model="convnet7", runs=runs_for(p, tau), rounds=20000)
  config.seeds = (0,)
  if "smoke" in options:
    config = smoke(config)
    config.mock_data = 64
    config.width = 8
    config.run_list = (f"eamsgd_p{p}_tau{tau}", "sgd")
  return config
