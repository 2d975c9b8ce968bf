r"""Runs one experiment from a config file.

Usage (from the repository root)::

  python -m experiments.main --config=experiments/configs/quickstart.py \
      --workdir=/tmp/altmin_jax/quickstart [--config.epochs=3 ...]

A config file's ``get_config(arg)`` receives the text after a colon, so
``--config=experiments/configs/am_fc_mnist.py:smoke`` selects the small size.
Any config field can be overridden on the command line (``--config.seeds=0,1``).
``--config.resume=True`` continues an interrupted run in the workdir;
``--config.overwrite=True`` replaces the results already there. A bad option, override or
workdir ends with one line on stderr (exit status 2), missing data with the loader's
message on how to get it (exit status 1), Ctrl-C with one line saying how to resume (exit
status 130).
"""

import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import altmin_jax as amj
from experiments import train, workdir
from experiments.configs import common

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, plots and checkpoints.")


def usage_error(message: str, code: int = 2):
  print(f"experiments.main: error: {message}", file=sys.stderr)
  sys.exit(code)


def _last_exception_line(text: str) -> str | None:
  """The message of the innermost exception in a formatted traceback (config-file errors
  reach absl as text)."""
  found = re.findall(r"^\s*[\w.]*(?:Error|Exception): (.*)$", text, flags=re.M)
  return found[-1].strip() if found else None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every failure reported as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as err:
    text = str(err)
    inner = _last_exception_line(text)
    flag = re.match(r"flag (--\S+?)(?::|=)", text)
    where = f"{flag.group(1)}: " if flag and inner else ""
    usage_error(where + (inner or text.splitlines()[0].strip().removeprefix("flag ")))
  except (KeyError, AttributeError) as err:
    key = str(err).strip("\"'").splitlines()[0].strip("\"'")
    overrides = [a for a in argv[1:] if a.startswith("--config.") and key in a.split("=")[0]]
    shown = overrides[0] if overrides else key
    usage_error(f"{shown}: the config has no field {key!r} (see the config file for its fields)")
  except (TypeError, ValueError) as err:
    usage_error(f"bad flag value: {str(err).splitlines()[0]}")


def main(argv):
  if len(argv) > 1:
    usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:  # orbax logs every checkpoint at INFO
    logging.set_verbosity(logging.WARNING)
  try:
    config = _CONFIG.value
    config.get("experiment")  # a config file that failed to load raises on first access
  except OSError as err:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    usage_error(f"--config: cannot load the config file: {lines[-1] if lines else err}")
  if not config or not _WORKDIR.value:
    usage_error("--config=FILE[:OPTIONS] and --workdir=DIR are required")
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except (common.ConfigError, workdir.WorkdirError) as err:
    usage_error(str(err))
  except amj.data.DataNotAvailableError as err:  # its message says how to get the data
    usage_error(str(err), 1)
  except KeyboardInterrupt:
    usage_error(
      f"interrupted; metrics so far are in {_WORKDIR.value}/metrics.json (complete: false);"
      " rerun with --config.resume=True to continue",
      130,
    )


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
