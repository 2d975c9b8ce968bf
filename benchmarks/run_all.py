r"""Runs every benchmark's quick mode and writes one JSON file and one markdown table.

Each benchmark runs as its own subprocess (``python benchmarks/<name>.py --quick --out
...``), so that each sets its own ``XLA_FLAGS`` before JAX starts (the pipeline benchmarks
ask for S fake CPU devices; the others run on the default single device). A
``--xla_force_host_platform_device_count`` inherited from the caller's environment is
dropped, so that it does not leak into the single-device benchmarks; other flags pass on.
Each report is read from its ``--out`` file (or, failing that, the last stdout line), and
the rows of all of them are gathered into

* ``<out-dir>/benchmarks.json``: the environment, every benchmark's full report, its wall
  time and exit status, and the common rows;
* ``<out-dir>/benchmarks.md``: one table, a row per measured step: benchmark, setting,
  method, median step time, ratio to the benchmark's optax baseline (Adam or SGD, named),
  multiply-adds (XLA's cost analysis of the compiled step; ``>=`` where ``while`` loops
  make it a lower bound), the achieved rate as a fraction of a dense matmul of about as
  many multiply-adds timed in the same run, peak memory of the compiled step, and the 1, 5
  and 15 minute load averages when the benchmark finished;
* ``<out-dir>/<benchmark>.log``: each benchmark's stdout and stderr.

Usage::

  python benchmarks/run_all.py [--out-dir results/benchmarks] [--only am_step,sm_step] [--full]

``--full`` drops ``--quick`` (the full runs take hours on a 2-core CPU). All quick modes
together took 6 minutes on a shared 2-core CPU (load 3-5). The exit status is 1 if any
benchmark failed (its error is in the JSON and the log; the others are still reported).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = (
  "am_step",
  "am_arch_step",
  "sm_step",
  "sm_time_to_loss",
  "distributed_step",
  "sm_pipeline",
  "am_pipeline",
  "op_rates",
)


def child_env() -> dict[str, str]:
  """The caller's environment less an inherited fake-device count (each script sets its own)."""
  env = dict(os.environ)
  flags = [
    f
    for f in env.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  ]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  else:
    env.pop("XLA_FLAGS", None)
  return env


def run_one(name: str, out_dir: str, quick: bool, timeout: float) -> dict:
  """Runs ``benchmarks/<name>.py`` and returns its report, wall time and exit status."""
  out = os.path.join(out_dir, f"{name}.json")
  if os.path.exists(out):
    os.remove(out)
  cmd = [sys.executable, os.path.join(HERE, f"{name}.py"), "--out", out]
  if quick:
    cmd.append("--quick")
  start = time.perf_counter()
  try:
    proc = subprocess.run(
      cmd, cwd=HERE, env=child_env(), capture_output=True, text=True, timeout=timeout
    )
    stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
  except subprocess.TimeoutExpired as e:
    stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    code = None
  seconds = time.perf_counter() - start
  with open(os.path.join(out_dir, f"{name}.log"), "w") as f:
    f.write(f"$ {' '.join(cmd)}\n{stdout}\n--- stderr ---\n{stderr}")
  report = None
  if code == 0:
    if os.path.exists(out):
      with open(out) as f:
        report = json.load(f)
    else:
      lines = stdout.strip().splitlines()
      report = json.loads(lines[-1]) if lines else None
  entry = {"command": cmd, "seconds": seconds, "returncode": code, "report": report}
  if report is None:
    entry["error"] = "timed out" if code is None else stderr.strip()[-2000:]
  return entry


def _cost_fields(r: dict) -> dict:
  return {
    "multiply_adds": r.get("multiply_adds"),
    "multiply_adds_is_lower_bound": r.get("multiply_adds_is_lower_bound"),
    "fraction_of_matmul_rate": r.get("fraction_of_matmul_rate"),
    "matmul_reference_n": r.get("matmul_reference_n"),
    "peak_memory_bytes": r.get("peak_memory_bytes"),
    "jaxpr_matmul_multiply_adds": r.get("jaxpr_matmul_multiply_adds"),
    "fraction_of_matmul_rate_jaxpr_count": r.get("fraction_of_matmul_rate_jaxpr_count"),
  }


def rows_of(name: str, report: dict) -> list[dict]:
  """The measured steps of one benchmark's report in the common row format."""
  load = report.get("load_average")
  rows = []

  def add(setting, method, ms, baseline, ratio, costs):
    rows.append(
      {
        "benchmark": name,
        "setting": setting,
        "method": method,
        "median_step_ms": ms,
        "baseline": baseline,
        "ratio_to_baseline": ratio,
        **_cost_fields(costs),
        "load_average": load,
      }
    )

  if name == "am_step":
    for r in report["results"]:
      setting = f"width {r['width']}, batch {r['batch']}"
      add(setting, r["method"], r["median_step_ms"], "adam", r["ratio_to_adam"], r)
  elif name == "am_arch_step":
    for r in report["results"]:
      setting = f"{r['model']}, batch {r['batch']}"
      add(setting, r["method"], r["median_step_ms"], "adam", r["ratio_to_adam"], r)
  elif name == "sm_step":
    for r in report["step_times"]:
      setting = f"{r['layers']} layers, width {report['width']}, batch {r['batch']}"
      add(setting, r["method"], r["median_step_ms"], "sgd", r["ratio_to_sgd"], r)
  elif name == "sm_time_to_loss":
    for layers, res in report["results"].items():
      setting = f"{layers.replace('_', ' ')}, full batch {report['samples']}"
      for method, r in res.items():
        if method == "unit_costs" or "seconds_per_iteration_ratio_to_adam" not in r:
          continue
        ratio = r["seconds_per_iteration_ratio_to_adam"]
        add(setting, method, 1e3 * r["seconds_per_iteration"], "adam", ratio, {})
  elif name == "distributed_step":
    for r in report["results"]:
      setting = f"{r['workers']} workers, {report['model']}"
      add(setting, r["method"], r["median_step_ms"], "sgd", r["ratio_to_sgd"], r)
  elif name in ("sm_pipeline", "am_pipeline"):
    for run in report["runs"]:
      setting = (
        f"{run['platform']} {run['boundary']}, S={run['stages']}, M={run['microbatches']}, "
        f"width {run['width']}, batch {run['batch']}"
      )
      ratio_key = next(k for k in run if k.startswith("ratio_to_optax_"))
      baseline = ratio_key.removeprefix("ratio_to_")
      for method, seconds in run["step_seconds"].items():
        costs = run.get("step_costs", {}).get(method, {})
        add(setting, method, 1e3 * seconds, baseline, run[ratio_key][method], costs)
  elif name == "op_rates":
    for r in report["results"]:
      add(r["shape"], r["op"], r["median_ms"], "its plain matmul", r["ratio_to_plain_matmul"], r)
  return rows


def _fmt(value, spec: str, missing: str = "") -> str:
  return missing if value is None else format(value, spec)


def markdown(rows: list[dict], failures: dict[str, str], header: str) -> str:
  lines = [
    header,
    "",
    "| benchmark | setting | method | ms / step | ratio to baseline | multiply-adds "
    "| fraction of matmul rate | peak memory (MiB) | load average (1 / 5 / 15 min) |",
    "|---|---|---|---:|---:|---:|---:|---:|---|",
  ]
  for r in rows:
    madds = r["multiply_adds"]
    madds_text = "" if madds is None else f"{madds / 1e6:.1f} M"
    looped = r["multiply_adds_is_lower_bound"]
    if madds is not None and looped:
      madds_text = ">= " + madds_text
      if r["jaxpr_matmul_multiply_adds"] is not None:
        madds_text += f" (loops: {r['jaxpr_matmul_multiply_adds'] / 1e6:.1f} M)"
    fraction = _fmt(r["fraction_of_matmul_rate"], ".3f")
    if fraction and looped:
      fraction = ">= " + fraction
      if r["fraction_of_matmul_rate_jaxpr_count"] is not None:
        fraction += f" (loops: {r['fraction_of_matmul_rate_jaxpr_count']:.3f})"
    if fraction and r["matmul_reference_n"]:
      fraction += f" (n={r['matmul_reference_n']})"
    peak = r["peak_memory_bytes"]
    load = r["load_average"]
    lines.append(
      f"| {r['benchmark']} | {r['setting']} | {r['method']} | {r['median_step_ms']:.2f} "
      f"| {r['ratio_to_baseline']:.2f}x {r['baseline']} | {madds_text} | {fraction} "
      f"| {'' if peak is None else f'{peak / 2**20:.1f}'} "
      f"| {'' if load is None else ' / '.join(f'{v:.2f}' for v in load)} |"
    )
  if failures:
    lines += ["", "Failed:", ""]
    lines += [
      f"- {name}: {error.splitlines()[-1] if error else ''}" for name, error in failures.items()
    ]
  lines += [
    "",
    "Multiply-adds: XLA's cost analysis of the compiled step (half its flop count); `>=` "
    "where the step has `while` loops (XLA counts a loop body once), which makes the "
    "count and the fraction lower bounds; '(loops: ...)' then gives the matmul and "
    "convolution multiply-adds of the step's jaxpr with every scan / fori_loop body "
    "counted its trip count times (a data-dependent while loop, e.g. a line search, once), "
    "and the fraction from that count. Pipelined steps: the program of one device. "
    "Fraction of matmul rate: multiply-adds per second over those of an n x n x n float32 "
    "matmul with about as many multiply-adds, timed in the same interleaved run.",
  ]
  return "\n".join(lines) + "\n"


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out-dir", default="results/benchmarks", help="where to write")
  parser.add_argument("--only", default=None, help="comma-separated benchmark names")
  parser.add_argument("--full", action="store_true", help="full runs instead of --quick")
  parser.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
  args = parser.parse_args()
  names = BENCHMARKS if args.only is None else tuple(args.only.split(","))
  unknown = [n for n in names if n not in BENCHMARKS]
  if unknown:
    parser.error(f"unknown benchmarks {unknown}; choose from {', '.join(BENCHMARKS)}")
  out_dir = os.path.abspath(args.out_dir)  # the scripts run in benchmarks/
  os.makedirs(out_dir, exist_ok=True)
  started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  entries, rows, failures = {}, [], {}
  for name in names:
    print(f"running {name} ...", flush=True)
    entry = run_one(name, out_dir, not args.full, args.timeout)
    entries[name] = entry
    if entry["report"] is None:
      failures[name] = entry["error"]
      print(f"  {name} FAILED after {entry['seconds']:.0f} s (see {name}.log)", flush=True)
    else:
      rows += rows_of(name, entry["report"])
      print(f"  {name} done in {entry['seconds']:.0f} s", flush=True)
  env = {
    "started_utc": started,
    "platform": platform.platform(),
    "python": sys.version.split()[0],
    "cpu_count": os.cpu_count(),
    "quick": not args.full,
  }
  for entry in entries.values():  # device and JAX version from the first report with them
    report = entry["report"] or {}
    device = report.get("device") or (report.get("runs") or [{}])[0].get("device")
    if device:
      env["device"], env["jax"] = device, report.get("jax")
      break
  summary = {"environment": env, "benchmarks": entries, "rows": rows}
  with open(os.path.join(out_dir, "benchmarks.json"), "w") as f:
    json.dump(summary, f, indent=2)
  header = (
    f"Benchmarks ({'quick' if not args.full else 'full'} mode), {started}, "
    f"{env.get('device', '?')}, {env['cpu_count']} CPUs, JAX {env.get('jax', '?')}"
  )
  table = markdown(rows, failures, header)
  with open(os.path.join(out_dir, "benchmarks.md"), "w") as f:
    f.write(table)
  print(table)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
