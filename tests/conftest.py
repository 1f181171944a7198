"""Test-wide JAX settings: strict rank promotion, 4 fake CPU devices, fast compilation.

The fake devices are real XLA CPU devices, so sharding tests exercise the same
partitioning code that runs on several GPUs.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"

# Tests run tiny arrays, so XLA's compilation is most of their time: without LLVM's
# optimisations the simulator's initialisation compiles in 4 s instead of 31 s on a 2-core
# CPU (the programs compute the same; only their code generation is less optimised).
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

# One compilation cache for the session and the processes it starts (command-line tests,
# the notebook's kernel), so a program compiled once is not compiled again; removed at exit.
_CACHE = tempfile.mkdtemp(prefix="jaxinterp-tests-xla-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_rank_promotion", "raise")
