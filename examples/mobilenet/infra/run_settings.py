"""How a run is operated: metric, evaluation and checkpoint cadence, output, a cluster,
and what a resumed run may change.

A base of :class:`mobilenet.configs.default.Config` (the ``run`` group of ``--help``).
None of these settings can change a run's result; each says why in its ``neutral``
metadata, so :func:`mobilenet.infra.resume_check.check_resume` lets a resumed run
change it. Imports no JAX.
"""

from __future__ import annotations

import dataclasses

from mobilenet.infra import settings

_field = settings.setting


@dataclasses.dataclass
class RunSettings:
    """The settings of a run's operation (:mod:`mobilenet.infra`)."""

    log_every: int = _field(
        25, "steps between metric fetches from the devices and metrics.jsonl lines",
        group="run", minimum=1,
        # The sums are fetched and reset; the parameters and the data order do not see it.
        neutral="fetching the metric sums does not touch the parameters")
    eval_every: int = _field(
        150, "steps between test evaluations; 0: only at the end", group="run", minimum=0,
        neutral="evaluation reads the state without changing it")
    checkpoint_every: int = _field(
        150, "steps between checkpoints; 0: only at the end", group="run", minimum=0,
        neutral="saving reads the state without changing it")
    keep_checkpoints: int = _field(2, "checkpoints kept in the work directory", group="run",
                                   minimum=1, neutral="only how many checkpoints stay on disk")
    progress: bool = _field(True, "a progress bar and status lines (the last line is printed "
                            "either way)", group="run", neutral="output only")
    count_kinks: bool = _field(
        False, "count, at every step, the inputs of every relu6 exactly on 0 and on 6 "
        "(hard-swish/hard-sigmoid: on -3 and 3) per layer, summed over the run (in the "
        "returned summary's boundary_hits)", group="run")
    plot: bool = _field(True, "write metrics.png (training curves) at the end", group="run",
                        neutral="output only")
    distributed: bool = _field(
        False, "multi-process launch: call jax.distributed.initialize() first (cluster "
        "found under SLURM, Open MPI, Cloud TPU; else from JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID)", group="run",
        # Batch norm and the loss are computed over the global batch, so the number of
        # devices (and of hosts) does not change the result beyond rounding.
        neutral="the global batch, not the device count, decides the result")
    allow_schedule_change: bool = _field(
        False, "on resume, accept another --steps/--epochs: the learning-rate schedule is "
        "recomputed for the new length from the restored step on", group="run",
        neutral="it only permits a schedule change, which is checked on its own")
