"""Test-wide JAX settings: strict rank promotion and 4 fake CPU devices.

The fake devices are real XLA CPU devices, so sharding tests exercise the same
partitioning code that runs on several GPUs.
"""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_rank_promotion", "raise")
