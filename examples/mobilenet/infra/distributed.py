"""``jax.distributed.initialize()`` for the example's ``--distributed``, and each
process's share of a global batch (:func:`process_share`), placed on the devices
(:func:`place`).

Example:
  >>> sorted(DISTRIBUTED_ENV)
  ['JAX_NUM_PROCESSES', 'JAX_PROCESS_ID']
"""

from __future__ import annotations

import os

import jax
import numpy as np


class ClusterError(ValueError):
    """The cluster is not described well enough to start (one-line message)."""


DISTRIBUTED_ENV = {"JAX_NUM_PROCESSES": "num_processes", "JAX_PROCESS_ID": "process_id"}


def initialize() -> None:
    """``jax.distributed.initialize()`` once, with the cluster read from the environment.

    On SLURM, Open MPI, Kubernetes and Cloud TPU, JAX finds the coordinator, the
    process count and this process's id by itself. Elsewhere it reads only
    ``JAX_COORDINATOR_ADDRESS``; the count and the id are then taken from
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (:data:`DISTRIBUTED_ENV`).

    Raises:
      ClusterError: a variable is not an integer, or the cluster is not fully described.
    """
    arguments = {}
    for variable, argument in DISTRIBUTED_ENV.items():
        value = os.environ.get(variable)
        if value is not None:
            try:
                arguments[argument] = int(value)
            except ValueError:
                raise ClusterError(f"{variable} must be an integer, got {value!r}.") from None
    try:
        jax.distributed.initialize(**arguments)
    except RuntimeError as error:  # Already initialized by the caller: fine.
        if "already" not in str(error).lower():
            raise
    except ValueError as error:  # Nothing detected and not enough variables set.
        raise ClusterError(
            f"--distributed: {error} Set JAX_COORDINATOR_ADDRESS (host:port of "
            "process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID, or launch under SLURM, "
            "Open MPI or on a Cloud TPU.") from None


def process_share(array: np.ndarray) -> np.ndarray:
    """This process's contiguous share of a global batch (all of it on one host)."""
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return array
    share = array.shape[0] // count
    return array[index * share:(index + 1) * share]


def place(batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Places a host batch on the devices with ``sharding`` (batch axis split over the mesh).

    Each process passes its own share of the global batch (:func:`process_share`);
    on one host that is the whole batch.
    """
    return {key: jax.make_array_from_process_local_data(sharding, value)
            for key, value in batch.items()}
