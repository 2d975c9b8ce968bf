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

from experiments.configs import common

EASGD_RUNS = {
  "easgd_p4_tau10": common.run_spec("async_easgd", 0.05, 4, beta=0.9, communication_period=10),
  "eamsgd_p4_tau10": common.run_spec(
    "eamsgd", 0.01, 4, beta=0.9, momentum=0.99, communication_period=10
  ),
  "downpour_p4_tau10": common.run_spec("downpour", 0.005, 4, communication_period=10),
  "sgd": common.run_spec("sgd", 0.05),
}

DC_ASGD_RUNS = {
  f"{name}_p{p}": common.run_spec(method, 0.1, p, **kw)
  for p in (4, 8)
  for name, method, kw in (
    ("dc_asgd_c", "dc_asgd", {"lambda_0": 0.04}),
    ("dc_asgd_a", "dc_asgd_adaptive", {"lambda_0": 2.0}),
    ("asgd", "async_sgd", {}),
    ("ssgd", "ssgd", {}),
  )
}


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, {"easgd", "dc_asgd", "random", "smoke"})
  runs = DC_ASGD_RUNS if "dc_asgd" in options else EASGD_RUNS
  config = common.distributed(dataset="bundled_mnist", model="mlp", runs=runs, rounds=1000)
  if "random" in options:
    config.delay = "random"
  return common.distributed_smoke(config) if "smoke" in options else config
