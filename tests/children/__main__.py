"""Runs one child program: ``python -m children MODULE FUNCTION ARGS RESULT [--rank R
--processes P --coordinator HOST:PORT]`` (started by ``helpers.start_child``).

Imports ``children.MODULE``, joins the ``jax.distributed`` job when ``--processes`` is
above 1 (localhost coordinator, gloo CPU collectives), calls ``FUNCTION(*ARGS)`` (ARGS
a JSON list) and pickles its return value to the file RESULT. A child that raises exits
at once with status 1 after printing the traceback: it does not wait in the
``jax.distributed`` shutdown barrier for processes that would never reach it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import sys
import traceback


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m children")
  parser.add_argument("module")
  parser.add_argument("function")
  parser.add_argument("args", help="JSON list of positional arguments")
  parser.add_argument("result", help="file the pickled return value is written to")
  parser.add_argument("--rank", type=int, default=0)
  parser.add_argument("--processes", type=int, default=1)
  parser.add_argument("--coordinator", default=None)
  ns = parser.parse_args(argv)
  try:
    if ns.processes > 1:
      from altmin_jax.distributed import initialize_multiprocess

      initialize_multiprocess(ns.coordinator, ns.processes, ns.rank)
    program = getattr(importlib.import_module(f"children.{ns.module}"), ns.function)
    result = program(*json.loads(ns.args))
  except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
  with open(ns.result, "wb") as f:
    pickle.dump(result, f)


if __name__ == "__main__":
  main()
