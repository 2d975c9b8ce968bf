"""Child programs of the multi-device and multi-process tests, one module per subject.

The number of CPU devices is fixed when JAX starts, so a test that needs several
devices (or several ``jax.distributed`` processes) runs a function of one of these
modules in fresh Python processes through ``helpers.run_child`` /
``helpers.start_child``, which set ``XLA_FLAGS`` (and the XLA:CPU thread-pool size,
BUILD.md) before JAX is imported. ``python -m children MODULE FUNCTION ...`` (this
package's ``__main__``) is what each such process runs.

A child function takes JSON arguments and returns a picklable result (JSON-like values
or NumPy arrays), handed back to the test per process. The modules also hold the
problems and single-device references that the tests compare against, so parent and
child build them from the same code; importing a module starts no JAX work.

* ``sm_pipeline``: pipelined SM and GD on 2, 4, 8 devices and across two processes.
* ``am_pipeline``: pipelined AM-Adam and AM-mem on 2, 4, 8 devices and across two processes.
* ``pipeline_problems``: the problem, error measures and 2/4/8-device launcher that the
  two pipeline modules and their tests share.
* ``distributed_modes``: stacked workers against workers on a device mesh, on 4 devices
  and across two processes.
* ``probe``: what the launcher itself guarantees (device count, thread pool, failures).
"""
