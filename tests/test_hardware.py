"""The shell's choice of devices and backend (pgjax.hardware).

A GPU or TPU gets the identity profile with nothing CPU-specific switched on;
the CPU profile's own tricks are tested in tests/test_cpu_profile.py.
"""

from __future__ import annotations

import dataclasses

import jax

from pgjax import cpu, hardware
from pgjax.backend import IDENTITY
from pgjax.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    platform: str
    process_index: int = 0


def test_accelerators_get_nothing_cpu_specific():
    config = TrainConfig(algo="a2c", num_envs=64)
    backend = hardware.backend_for(config, 1, [FakeDevice("gpu")])
    assert backend == dataclasses.replace(IDENTITY)
    assert backend.block_rows == 0 and backend.dot_general is None
    assert not backend.chunk_options and not backend.run_once_options
    assert backend.devices == 1


def test_cpus_get_the_cpu_profile():
    config = TrainConfig(algo="npg", num_envs=64)
    backend = hardware.backend_for(config, 1, jax.devices())
    assert backend.chunk_options == cpu.CHUNK_OPTIONS["npg"]
    assert backend.block_rows == cpu.BLOCK_ROWS
    assert backend.env_shards == len(jax.devices()) == 2


def test_run_devices_takes_the_first_local_devices_of_each_process():
    assert hardware.run_devices(0) == jax.devices()
    assert hardware.run_devices(1) == jax.devices()[:1]
    assert hardware.run_devices(5) == jax.devices()


def test_devices_given_win_over_what_pays(monkeypatch):
    monkeypatch.setattr(cpu, "usable_cores", lambda: 8)
    assert hardware.cpu_device_count("a2c", 64, 4, 1, 3) == 3
    assert hardware.cpu_device_count("a2c", 64, 4, 1, 0) == 1  # too small to split
    assert hardware.cpu_device_count("a2c", 64, 4, 4, 0) == 4  # 4 seeds: 4 devices
