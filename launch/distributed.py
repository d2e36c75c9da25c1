"""Multi-host start-up: ``jax.distributed.initialize()`` when the environment says there are peers."""

from __future__ import annotations

import logging
import os

import jax

# Variables that a multi-host launcher sets (explicit coordinator, SLURM, Open MPI, TPU pod VMs).
# LAUNCH_MULTI_HOST: set by `launch.tpu_pod train` on multi-host TPU slices, whose worker list comes
# from the VM metadata rather than the environment (jax's GceTpuCluster reads it there).
_MULTI_HOST_HINTS = ('JAX_COORDINATOR_ADDRESS', 'COORDINATOR_ADDRESS', 'MEGASCALE_COORDINATOR_ADDRESS',
                     'LAUNCH_MULTI_HOST')


def is_multi_host_environment(env=None) -> bool:
  env = os.environ if env is None else env
  if any(env.get(k) for k in _MULTI_HOST_HINTS):
    return True
  if int(env.get('SLURM_NTASKS', '1') or 1) > 1:
    return True
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1') or 1) > 1:
    return True
  hosts = env.get('TPU_WORKER_HOSTNAMES', '')
  return len([h for h in hosts.split(',') if h]) > 1


_initialized = False


def maybe_initialize() -> None:
  """Initialises the JAX distributed runtime once, only where there are several hosts."""
  global _initialized
  if _initialized or not is_multi_host_environment():
    return
  jax.distributed.initialize()
  _initialized = True
  logging.info('jax.distributed: process %d of %d', jax.process_index(), jax.process_count())
