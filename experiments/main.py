r"""Runs one experiment from a config file.

Usage (from the repository root)::

  python -m experiments.main --config=experiments/configs/quickstart.py \
      --workdir=/tmp/altmin_jax/quickstart [--config.epochs=3 ...]

A config file's ``get_config(arg)`` receives the text after a colon, so
``--config=experiments/configs/am_fc_mnist.py:smoke`` selects the small size.
Any config field can be overridden on the command line (``--config.seeds=0,1``).
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import train

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, plots and checkpoints.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
