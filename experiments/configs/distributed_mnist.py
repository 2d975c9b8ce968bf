"""Distributed SGD on the bundled MNIST split (issue 7, requirement 6).

Two comparisons on simulated workers stacked on one device, a 784-100-100-10 ReLU MLP,
minibatches of 128 per worker, the centre variable evaluated on the 2,000 held-out
samples:

* ``easgd`` (default): EASGD and EAMSGD (p = 4, tau = 10, beta = 0.9, delta = 0.99)
  against DOWNPOUR (p = 4, tau = 10) and single-worker SGD;
* ``dc_asgd``: DC-ASGD-c (lambda_0 = 0.04) and DC-ASGD-a (lambda_0 = 2) against ASGD
  and SSGD, each with 4 and 8 workers (round-robin: staleness p - 1).

Options after a colon, comma separated: ``easgd`` / ``dc_asgd``, ``random`` (the seeded
random delay model instead of round-robin), ``smoke`` (CI size). Learning rates are from
the EASGD supplement's Table 1 where it has one for the method (EASGD 0.05, EAMSGD 0.01,
DOWNPOUR 0.005, SGD 0.05) and 0.1 for the DC-ASGD family on this small problem.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common


def base_config(*, dataset: str, model: str, runs: dict, rounds: int) -> ml_collections.ConfigDict:
  """Fields shared by the distributed configs (``experiments/runners/distributed.py``)."""
  config = ml_collections.ConfigDict()
  config.experiment = "distributed"
  config.dataset = dataset
  config.data_dir = ""
  config.num_train = 8000  # bundled_mnist: the first 8,000 train, the last 2,000 test
  config.mock_data = 0  # > 0: that many TFDS mock examples (CI without the dataset)
  config.normalization = "standard"  # load_dataset's; "none": pixels in [0, 1]
  config.crop = 0  # > 0: random crops (and flips) of this side to train, centre patch to test
  config.model = model
  config.hidden = (100, 100)
  config.width = 64 if model == "convnet7" else 16
  config.batch_size = 128
  config.rounds = rounds
  config.epochs = 0  # > 0: rounds = epochs * num_train / (num_workers * batch_size), per run
  config.lr_decay_epochs = ()  # multiply the learning rate by lr_decay_factor after these
  config.lr_decay_factor = 0.1
  config.eval_every = max(1, rounds // 20)
  config.delay = "round_robin"
  config.seeds = (0, 1, 2)
  config.progress = True
  config.run_list = tuple(runs)
  config.runs = ml_collections.ConfigDict(runs)
  return config


def run_spec(method: str, lr: float, num_workers: int = 1, **hyperparameters) -> dict:
  return dict(method=method, lr=lr, num_workers=num_workers, **hyperparameters)


EASGD_RUNS = {
  "easgd_p4_tau10": run_spec("async_easgd", 0.05, 4, beta=0.9, communication_period=10),
  "eamsgd_p4_tau10": run_spec("eamsgd", 0.01, 4, beta=0.9, momentum=0.99, communication_period=10),
  "downpour_p4_tau10": run_spec("downpour", 0.005, 4, communication_period=10),
  "sgd": run_spec("sgd", 0.05),
}

DC_ASGD_RUNS = {
  f"{name}_p{p}": run_spec(method, 0.1, p, **kw)
  for p in (4, 8)
  for name, method, kw in (
    ("dc_asgd_c", "dc_asgd", {"lambda_0": 0.04}),
    ("dc_asgd_a", "dc_asgd_adaptive", {"lambda_0": 2.0}),
    ("asgd", "async_sgd", {}),
    ("ssgd", "ssgd", {}),
  )
}


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """CI size: 1 seed, a few rounds, small batches."""
  config.seeds = (0,)
  config.rounds = 4
  config.epochs = 0
  config.eval_every = 2
  config.batch_size = 16
  config.num_train = 1000
  config.progress = False
  return config


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, {"easgd", "dc_asgd", "random", "smoke"})
  runs = DC_ASGD_RUNS if "dc_asgd" in options else EASGD_RUNS
  config = base_config(dataset="bundled_mnist", model="mlp", runs=runs, rounds=1000)
  if "random" in options:
    config.delay = "random"
  return smoke(config) if "smoke" in options else config
