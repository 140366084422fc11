"""Device mesh and shardings for data-parallel training.

One mesh axis, ``data``: batches are split along their leading axis across
every device of every process; parameters and optimiser state are replicated.
The same code runs on 1 CPU, 1 GPU, N GPUs and several hosts.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
  """Joins a multi-process run when launched as one; call it before anything touches a
  JAX backend.

  A run is multi-process when JAX_COORDINATOR_ADDRESS (host:port of process 0) is set
  together with JAX_NUM_PROCESSES and JAX_PROCESS_ID (e.g. one process per GPU on one
  host, or one per host), or when JAX detects a cluster itself (SLURM).
  """
  import os
  if jax.distributed.is_initialized():
    return
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if not address and not os.environ.get("SLURM_NTASKS"):
    return
  kwargs = {}
  if address and os.environ.get("JAX_NUM_PROCESSES"):
    if "JAX_PROCESS_ID" not in os.environ:
      raise ValueError("JAX_NUM_PROCESSES is set but JAX_PROCESS_ID is not; give every "
                       "process its index 0..JAX_NUM_PROCESSES-1")
    kwargs = dict(coordinator_address=address,
                  num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                  process_id=int(os.environ["JAX_PROCESS_ID"]))
  # CPU processes exchange gradients through gloo (GPUs use NCCL whatever this says).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def make_mesh(devices=None) -> Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Turns this process's slice of the global batch into global jax.Arrays.

  Args:
    batch: numpy arrays with leading axis = per-process batch size.
  Returns:
    the same keys as jax.Arrays of global batch size, sharded along ``data``.
  """
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def check_batch_divisible(global_batch: int, mesh: Mesh, field: str) -> None:
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(
        f"{field}={global_batch} is not divisible by the {n} devices of the mesh; "
        f"set {field} to a multiple of {n}")
