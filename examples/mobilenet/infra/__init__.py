"""The example's infrastructure, each piece behind a small interface.

The recipe (models, input pipeline, train step, loop, configuration) lives in
:mod:`mobilenet`; what keeps a long run safe lives here, and nothing here knows
about the model or the training:

- :mod:`~mobilenet.infra.lifecycle`: a run's lifecycle around the loop (work
  directory checks and lock, restore, saves, preemption, background threads) and
  the one-line errors that stop it.
- :mod:`~mobilenet.infra.workdir`: the work directory's layout, its checks and
  its lock (one run at a time).
- :mod:`~mobilenet.infra.checkpoints`: orbax checkpoints with per-array
  checksums; damaged steps are set aside.
- :mod:`~mobilenet.infra.metrics_log`: ``metrics.jsonl``, cut back on resume, and
  its plot.
- :mod:`~mobilenet.infra.preemption`: SIGTERM (or JAX's preemption notice) turned
  into a step at which every process saves and stops.
- :mod:`~mobilenet.infra.disk`: a failed write (a full disk) as one error that
  names the file.
- :mod:`~mobilenet.infra.distributed`: ``jax.distributed.initialize()`` from the
  environment.
- :mod:`~mobilenet.infra.background`: calls in threads (the steps compile while
  the state initializes), waited for in order.
- :mod:`~mobilenet.infra.compile_cache`: JAX's persistent compilation cache;
  :mod:`~mobilenet.infra.program_cache`: the command's compiled steps kept whole,
  found without tracing.
- :mod:`~mobilenet.infra.host_memory`: huge pages for XLA:CPU's large buffers.
- :mod:`~mobilenet.infra.settings`: the settings' machinery (metadata, validation,
  ``--help`` text); :mod:`~mobilenet.infra.resume_check`: whether a run may resume;
  :mod:`~mobilenet.infra.state_size`: the state checked against memory;
  :mod:`~mobilenet.infra.setup_check`: the settings checked against the data and devices;
  :mod:`~mobilenet.infra.datasets`: the data sets (digits, CIFAR-10, synthetic);
  :mod:`~mobilenet.infra.cifar10`: CIFAR-10's files, each checked;
  :mod:`~mobilenet.infra.digits`: scikit-learn's digits, cached as a small file.
- :mod:`~mobilenet.infra.startup`: the run's wall time against its training steps'
  (the fixed cost the command prints); :mod:`~mobilenet.infra.progress`: the progress
  bar and the training steps' timing.
"""
