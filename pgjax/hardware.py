"""The shell's view of the hardware: which devices a run uses, and its backend.

The core never asks JAX about devices (:mod:`pgjax.backend`); the shell does,
here, once per run:

* :func:`prepare_devices` runs before JAX starts its backends and, on a CPU,
  asks for one JAX device per core that pays (:mod:`pgjax.cpu`).
* :func:`run_devices` lists the devices of every process that a run uses:
  ``--devices N`` local devices of each process (0: all of them).
* :func:`backend_for` builds the run's :class:`~pgjax.backend.Backend`: the
  CPU profile on CPUs, the identity profile with a mesh elsewhere (nothing
  CPU-specific switched on for GPUs or TPUs).
"""

from __future__ import annotations

import jax

from pgjax import cpu, cpu_linalg
from pgjax.backend import Backend, make_mesh
from pgjax.config import TrainConfig


def cpu_device_count(
    algo: str, num_envs: int, num_steps: int, rows: int, devices: int
) -> int:
    """The CPU devices to expose for a run: ``devices`` (``--devices``), or
    for 0 as many as :func:`pgjax.cpu.devices_that_pay` says pay for ``rows``
    seeds of ``num_envs × num_steps``, up to one per core."""
    if devices > 0:
        return devices
    return cpu.devices_that_pay(algo, num_envs, num_steps, cpu.usable_cores(), rows)


def prepare_devices(
    algo: str, num_envs: int, num_steps: int, rows: int, devices: int
) -> None:
    """Before JAX starts: on a CPU, expose :func:`cpu_device_count` JAX devices.

    A no-op where the device count is already fixed (``XLA_FLAGS``' forced
    host device count, or JAX already started) and, in effect, on
    accelerators, whose devices are the chips. Installs
    :func:`pgjax.cpu_linalg.install` too, while nothing is compiled: later,
    installing clears JAX's caches, which costs their programs a recompile.
    """
    cpu_linalg.install()
    cpu.use_cpu_cores(cpu_device_count(algo, num_envs, num_steps, rows, devices))


def run_devices(count: int = 0) -> list:
    """The devices a run uses: the first ``count`` local devices of every
    process (0: all of each process's devices), process by process.

    Every process must give the same ``count``: JAX's programs span the same
    devices on each.
    """
    chosen = []
    for process in range(jax.process_count()):
        local = [d for d in jax.devices() if d.process_index == process]
        chosen += local[:count] if count > 0 else local
    return chosen


def backend_for(config: TrainConfig, rows: int, devices: list | None = None) -> Backend:
    """The backend of a run of ``config`` with ``rows`` seeds (configurations
    × seeds) on ``devices`` (default: :func:`run_devices` of
    ``config.devices``)."""
    if devices is None:
        devices = run_devices(config.devices)
    if devices and devices[0].platform == "cpu":
        return cpu.cpu_backend(config.algo, devices, rows, config.num_envs)
    return Backend(mesh=make_mesh(devices, rows, config.num_envs))


__all__ = ["backend_for", "cpu_device_count", "prepare_devices", "run_devices"]
