"""Data parallelism: one mesh axis ``"data"`` over every device of every process.

Batches are sharded along their leading axis, the train state is replicated, and the
jitted step runs SPMD over the mesh; XLA inserts the gradient all-reduce and the
cross-device means of BatchNorm (whose statistics are therefore those of the global
batch). Several processes (hosts) join through ``jax.distributed``; each one loads only
its own rows of every global batch.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed() -> None:
    """Join a multi-process run when launched as one (``JAXINTERP_COORDINATOR`` etc. or a
    cluster environment that ``jax.distributed`` detects); a no-op for a single process."""
    coordinator = os.environ.get("JAXINTERP_COORDINATOR")
    if coordinator and not jax.distributed.is_initialized():
        # CPU devices of several processes talk through gloo (GPUs use NCCL regardless).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(os.environ["JAXINTERP_NUM_PROCESSES"]),
            process_id=int(os.environ["JAXINTERP_PROCESS_ID"]),
        )


def make_mesh(devices=None) -> Mesh:
    """A one-axis mesh over ``devices`` (default: all devices of all processes)."""
    return Mesh(np.array(jax.devices() if devices is None else devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch(global_batch: int, mesh: Mesh, what: str = "batch size") -> None:
    devices = mesh.devices.size
    if global_batch % devices:
        raise ValueError(
            f"{what} {global_batch} does not divide evenly over {devices} devices; "
            f"use a multiple of {devices}"
        )


def local_rows(global_batch: int) -> slice:
    """Rows of a global batch that this process loads."""
    per_process = global_batch // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def put_batch(local: np.ndarray, mesh: Mesh, global_batch: int) -> jax.Array:
    """Assemble the global batch array from each process's rows, sharded over the mesh."""
    shape = (global_batch, *local.shape[1:])
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local, shape)


def put_replicated(tree, mesh: Mesh):
    """Place a pytree (the train state) on every device."""
    return jax.device_put(tree, replicated(mesh))
