"""EASGD paper, CIFAR-10 (Figures 2-3, supplement section 9; issue 7, requirement 6).

The 7-layer convnet (``ConvNet7`` in ``experiments/models.py``, after the paper's
description), p local workers, communication period tau, minibatches of 128 per
worker. From the supplement of Zhang, Choromanska and LeCun, "Deep learning with Elastic
Averaging SGD", NeurIPS 2015:

* section 9.1, data: pixels re-scaled to [0, 1] (``normalization = "none"``, no mean or
  std), random 3 x 28 x 28 crops with their horizontal flips for training and the centre
  28 x 28 patch for the test loss and error (``crop = 28``);
* section 9.3, Tables 1 and 2 (the same sets for every tau, Figure 2, and every p, Figure
  3): constant learning rates, here the middle of each method's explored set;
* Figure 9's caption: beta = 0.9 and delta = 0.99 (EAMSGD; also MDOWNPOUR's and MSGD's
  momentum here); section 9.4: averaged SGD averages from the first step (``start = 0``);
* the runs per (p, tau): EASGD, EAMSGD and DOWNPOUR with period tau, MDOWNPOUR (it
  exchanges at every step), and the single-worker SGD, averaged SGD, MVASGD (moving rate
  0.001) and MSGD with p = 1.

The grid is p in {4, 8, 16} crossed with tau in {1, 4, 16, 64} (issue 7). The supplement
does not say which p Figure 2 holds fixed while tau varies, nor which tau Figure 3 uses
while p varies; choose the pair with the options. Table 1 also lists ADOWNPOUR and
MVADOWNPOUR (DOWNPOUR with averaging), which this project does not implement.

Options after a colon, comma separated: ``p=4`` / ``p=8`` / ``p=16`` (default 4),
``tau=1`` / ``tau=4`` / ``tau=16`` / ``tau=64`` (default 4), ``smoke`` (CI size: TFDS mock
data, a narrow net, a few rounds).
"""

from __future__ import annotations

from experiments.configs import common

WORKERS = (4, 8, 16)
PERIODS = (1, 4, 16, 64)
CROP = 28  # supplement 9.1: 3 x 28 x 28 crops of the 3 x 32 x 32 images

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
    f"easgd_p{p}_tau{tau}": common.run_spec(
      "async_easgd", lr["async_easgd"], p, beta=0.9, communication_period=tau
    ),
    f"eamsgd_p{p}_tau{tau}": common.run_spec(
      "eamsgd", lr["eamsgd"], p, beta=0.9, momentum=0.99, communication_period=tau
    ),
    f"downpour_p{p}_tau{tau}": common.run_spec(
      "downpour", lr["downpour"], p, communication_period=tau
    ),
    f"mdownpour_p{p}": common.run_spec("mdownpour", lr["mdownpour"], p, momentum=0.99),
    "sgd": common.run_spec("sgd", lr["sgd"]),
    "averaged_sgd": common.run_spec("averaged_sgd", lr["averaged_sgd"]),
    "mvasgd": common.run_spec("mvasgd", lr["mvasgd"], moving_rate=0.001),
    "msgd": common.run_spec("msgd", lr["msgd"], momentum=0.99),
  }


def get_config(arg: str | None = None):
  allowed = {f"p={p}" for p in WORKERS} | {f"tau={t}" for t in PERIODS} | {"smoke"}
  options = common.parse_arg(arg, allowed)
  p = next((int(o[2:]) for o in options if o.startswith("p=")), 4)
  tau = next((int(o[4:]) for o in options if o.startswith("tau=")), 4)
  config = common.distributed(
    dataset="cifar10", model="convnet7", runs=runs_for(p, tau), rounds=20000
  )
  config.seeds = (0,)
  config.normalization = "none"
  config.crop = CROP
  if "smoke" in options:
    config = common.distributed_smoke(config)
    config.mock_data = 64
    config.width = 8
    config.run_list = (f"eamsgd_p{p}_tau{tau}", "sgd")
  return config
