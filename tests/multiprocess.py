"""Runs several Python processes on localhost, as the hosts of one JAX job.

Multi-host code is tested here as N JAX processes on this one machine, each
with ``K`` CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=K``),
talking to a coordinator on 127.0.0.1 over JAX's CPU collectives (gloo). This
module starts such a group and collects what each process said:

* :func:`free_port` picks a TCP port for the coordinator;
* :func:`run_processes` runs one argv per process (for instance
  ``scripts/train.py`` with each its own ``--process-id``), with a timeout
  after which the whole group is killed, and returns each process's exit code,
  stdout, stderr and time to exit;
* :func:`run_snippet` runs one Python snippet as every process, with the
  coordinator address, process count and process id in ``sys.argv[1:4]``.

The processes get an environment built for them (:func:`process_env`), not
the test process's own: tests/conftest.py sets ``XLA_FLAGS`` for the
in-process tests, and proxy variables would make JAX warn about (and gRPC
possibly route) the localhost coordinator traffic.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The repository root: the processes' default working directory, so that
#: ``scripts/...`` paths and ``import pgjax`` work as in a user's checkout.
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ProcessResult:
    """What one process of a group did.

    Attributes:
        returncode: Its exit status; negative for a signal (``-9``: killed by
            the group's timeout), as :class:`subprocess.Popen` reports it.
        stdout: Everything it wrote to stdout, decoded.
        stderr: Everything it wrote to stderr, decoded.
        elapsed_s: Seconds from the group's start to this process's exit.
        timed_out: Whether the group's timeout killed it.
    """

    returncode: int
    stdout: str
    stderr: str
    elapsed_s: float
    timed_out: bool

    def describe(self) -> str:
        """A summary for assertion messages: exit code, time, the output."""
        return (
            f"returncode={self.returncode} elapsed={self.elapsed_s:.1f}s "
            f"timed_out={self.timed_out}\n--- stdout ---\n{self.stdout}"
            f"\n--- stderr ---\n{self.stderr}"
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    The OS picks it (bind to port 0). Another program could take it before the
    coordinator binds it, which is unlikely enough on a test machine; a port
    that *stays* free (no listener) is what the unreachable-coordinator tests
    want too.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_env(
    devices_per_process: int | None = 1, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of one process of a group.

    Args:
        devices_per_process: CPU devices JAX gives the process, through
            ``XLA_FLAGS=--xla_force_host_platform_device_count``; None leaves
            the count to the process (``XLA_FLAGS`` then starts empty).
        extra: Variables to set on top (``XLA_FLAGS`` here replaces ours).

    Returns:
        The test process's environment without its XLA/JAX settings and proxy
        variables, with ``JAX_PLATFORMS=cpu`` and the device count.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        # conftest's XLA_FLAGS and any JAX_* setting belong to the test process;
        # proxies: JAX warns about them on stderr and gRPC may honour them.
        if key != "XLA_FLAGS"
        and not key.startswith("JAX_")
        and "_proxy" not in key.lower()
    }
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"  # output written before a kill still arrives
    if devices_per_process is not None:
        env["XLA_FLAGS"] = (
            f"--xla_force_host_platform_device_count={devices_per_process}"
        )
    if extra:
        env.update(extra)
    return env


def run_processes(
    argvs: Sequence[Sequence[str]],
    *,
    env: Mapping[str, str] | None = None,
    envs: Sequence[Mapping[str, str]] | None = None,
    devices_per_process: int | None = 1,
    timeout_s: float = 60.0,
    cwd: str | os.PathLike | None = None,
) -> list[ProcessResult]:
    """Starts one process per argv at once and waits for all of them.

    Args:
        argvs: One command line per process (``[sys.executable, ...]``).
        env: Variables set for every process (see :func:`process_env`).
        envs: Optional variables per process, set after ``env``.
        devices_per_process: CPU devices each process gets (``XLA_FLAGS``).
        timeout_s: Seconds after the start at which every process still
            running is killed, with its children (each process leads its own
            process group).
        cwd: The working directory; the repository root by default.

    Returns:
        One :class:`ProcessResult` per argv, in order.
    """
    if envs is not None and len(envs) != len(argvs):
        raise ValueError(f"{len(envs)} envs for {len(argvs)} processes")
    procs: list[subprocess.Popen] = []
    ended: dict[int, float] = {}  # process index -> seconds to its exit
    timed_out = False
    with contextlib.ExitStack() as files:
        # Output goes to files, not pipes: a chatty process can never block on
        # a full pipe while we wait for another one.
        outputs = [
            (
                files.enter_context(tempfile.TemporaryFile()),
                files.enter_context(tempfile.TemporaryFile()),
            )
            for _ in argvs
        ]
        start = time.monotonic()
        try:
            for i, (argv, (out, err)) in enumerate(zip(argvs, outputs, strict=True)):
                proc_env = process_env(devices_per_process, env)
                if envs is not None:
                    proc_env.update(envs[i])
                procs.append(
                    subprocess.Popen(
                        list(argv),
                        stdout=out,
                        stderr=err,
                        stdin=subprocess.DEVNULL,
                        env=proc_env,
                        cwd=cwd or ROOT,
                        start_new_session=True,  # its own group, killed as one
                    )
                )
            while len(ended) < len(procs):
                for i, proc in enumerate(procs):
                    if i not in ended and proc.poll() is not None:
                        ended[i] = time.monotonic() - start
                if len(ended) < len(procs):
                    if time.monotonic() - start > timeout_s:
                        timed_out = True
                        break
                    time.sleep(0.05)
        finally:
            # On the timeout, and on any error above (KeyboardInterrupt
            # included): nothing we started outlives the call, neither a
            # process nor what it started and left behind in its group.
            for proc in procs:
                _kill_group(proc)
                proc.wait()
        return [
            ProcessResult(
                returncode=proc.returncode,
                stdout=_read(out),
                stderr=_read(err),
                elapsed_s=ended.get(i, time.monotonic() - start),
                timed_out=timed_out and i not in ended,
            )
            for i, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True))
        ]


def run_snippet(
    code: str,
    num_processes: int,
    *,
    devices_per_process: int = 1,
    timeout_s: float = 60.0,
    coordinator: str | None = None,
    process_ids: Sequence[int] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[ProcessResult]:
    """Runs ``python -c code COORDINATOR NUM_PROCESSES PROCESS_ID`` as a group.

    Args:
        code: The Python source every process runs; it reads the coordinator
            address, the process count and its process id from
            ``sys.argv[1:4]``.
        num_processes: The process count passed to every process.
        devices_per_process: CPU devices each process gets.
        timeout_s: See :func:`run_processes`.
        coordinator: ``HOST:PORT``; by default 127.0.0.1 and a free port.
        process_ids: The ids to start (default: all of ``range(num_processes)``;
            fewer start an incomplete group, to test a missing peer).
        env: Variables set for every process.

    Returns:
        One :class:`ProcessResult` per started process, in ``process_ids`` order.
    """
    coordinator = coordinator or f"127.0.0.1:{free_port()}"
    ids = range(num_processes) if process_ids is None else process_ids
    argvs = [
        [sys.executable, "-c", code, coordinator, str(num_processes), str(i)]
        for i in ids
    ]
    return run_processes(
        argvs, env=env, devices_per_process=devices_per_process, timeout_s=timeout_s
    )


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILLs ``proc``'s process group (the process and its children)."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(proc.pid, signal.SIGKILL)


def _read(file) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")
