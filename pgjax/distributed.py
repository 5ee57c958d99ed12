"""Multi-host training: the process-level layer over ``jax.distributed``.

A multi-host run is one JAX *process* per host (or per group of devices), all
running the same program; :func:`initialize` connects them through JAX's
coordination service, after which ``jax.devices()`` lists every process's
devices, a ``jax.sharding.Mesh`` may span them, and jitted computations on
arrays sharded over that mesh run as one SPMD program whose cross-process
collectives travel over the network (on CPU through gloo, over TCP).

This is a *shell* module: it does I/O (sockets, the environment) and only
``scripts/``, :mod:`pgjax.cli` and ``pgjax.runner*`` import it. The library's
pure code sees only meshes and shardings.

Order matters: :func:`initialize` must run before anything touches a JAX
backend (the first ``jax.devices()``, array, ``device_put`` or jitted call):
each backend is created once, and one created before the distributed client
exists is a single-process backend for good. *Importing gymnax counts*: it
makes an array at import time (``gymnax/environments/misc/frozen_lake.py``),
and so do ``pgjax.envs``, ``pgjax.networks``, ``pgjax.train`` and
``pgjax.runner``, which import it. Importing jax, flax, optax, chex, orbax,
``pgjax.config``, ``pgjax.parallel``, ``pgjax.checkpoints`` or
``pgjax.cli`` is fine.

How failures end (jax 0.10.2, measured by tests/test_distributed.py):

* Bad flags, process 0's port taken, nothing listening at the coordinator's
  address for ``timeout_s``: :class:`ClusterError` (checked with plain
  sockets before JAX connects).
* The coordinator is up but a peer never joins: JAX aborts every waiting
  process (SIGABRT) about ``timeout_s`` + 5 s after it started connecting.
  jax 0.10 reports every coordination failure by aborting the process, with
  "Terminating process because the JAX distributed service detected fatal
  errors" and a C++ stack trace on stderr; it has no option to raise instead.
* A peer dies mid-run: if process 0 (the coordinator) dies, the others abort
  at once (their link to the service closes). If another process dies, the
  service declares it dead after ``heartbeat_timeout_s`` without a heartbeat
  and aborts every other process, also one blocked in a collective waiting
  for it. A survivor already talking to it over gloo fails sooner (a Python
  exception), and its exit is then held at JAX's shutdown barrier until the
  same heartbeat verdict. Either way survivors end within about
  ``heartbeat_timeout_s``, with a non-zero status.
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from typing import Any

import jax
import numpy as np

#: ``--coordinator`` value that asks JAX to detect the cluster (SLURM, Open MPI,
#: Cloud TPU pods, Kubernetes, ...) and its process count and id.
AUTO = "auto"

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]\s]+):(?P<port>\d+)$")


class ClusterError(ValueError):
    """A cluster flag is wrong, or the processes could not form a cluster.

    Attributes:
        flag: The command-line flag the error belongs to (``"--coordinator"``,
            ``"--num-processes"`` or ``"--process-id"``); the CLI prints
            ``train.py: error: {flag}: {message}`` and exits with status 2.
    """

    def __init__(self, flag: str, message: str):
        # One line: the CLI prints it after "train.py: error: {flag}: ".
        message = " ".join(str(message).split())
        super().__init__(message)
        self.flag = flag


def validate_cluster_flags(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Checks the cluster flags before JAX starts (cheap: no sockets, no JAX).

    All three None means a single-process run. ``coordinator == "auto"`` asks
    JAX to detect the cluster, and then ``num_processes`` and ``process_id``
    may be omitted (given ones override the detected ones). Otherwise all
    three are needed.

    Args:
        coordinator: ``HOST:PORT`` of process 0's coordination service (an
            IPv6 host in brackets: ``[::1]:1234``), ``"auto"``, or None.
        num_processes: How many processes the run has, at least 1.
        process_id: This process's index, ``0 <= process_id < num_processes``.

    Raises:
        ClusterError: Naming the offending flag.
    """
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            given = "--num-processes" if num_processes is not None else "--process-id"
            raise ClusterError(
                "--coordinator", f"is required with {given} (HOST:PORT or 'auto')"
            )
        return
    if coordinator != AUTO:
        _check_host_port(coordinator)
        if num_processes is None:
            raise ClusterError("--num-processes", "is required with --coordinator")
        if process_id is None:
            raise ClusterError("--process-id", "is required with --coordinator")
    if num_processes is not None and (_not_int(num_processes) or num_processes < 1):
        raise ClusterError("--num-processes", f"must be >= 1, got {num_processes!r}")
    if process_id is not None:
        if _not_int(process_id) or process_id < 0:
            raise ClusterError("--process-id", f"must be >= 0, got {process_id!r}")
        if num_processes is not None and process_id >= num_processes:
            raise ClusterError(
                "--process-id",
                f"must be < --num-processes ({num_processes}), got {process_id}",
            )


def initialize(
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    *,
    timeout_s: float = 60,
    heartbeat_timeout_s: float = 60,
    shutdown_timeout_s: float = 300,
) -> bool:
    """Joins this process to the cluster; a no-op for a single-process run.

    Must run before anything touches a JAX backend. On CPU, cross-process
    computations need CPU collectives: this selects gloo (unless the user
    chose MPI through ``jax_cpu_collectives_implementation``).

    Before JAX connects, two socket checks turn the common mistakes into a
    :class:`ClusterError`: process 0 checks that the coordinator's port is
    free on this host (jax 0.10 *segfaults* when it is taken), and the other
    processes wait, up to ``timeout_s``, for something to listen at the
    coordinator's address. The reason: jax 0.10 reports every failure to form
    the cluster (and every later one) by aborting the process (SIGABRT, exit
    status 134 or -6, "Terminating process because the JAX distributed
    service detected fatal errors" and a C++ stack trace), never by raising.
    So a process whose coordinator is up but some *peer* never joins still
    ends that way, ``timeout_s`` plus a few seconds after it connected.

    Args:
        coordinator: See :func:`validate_cluster_flags`; None (with the other
            two None) runs single-process and does nothing.
        num_processes: See :func:`validate_cluster_flags`.
        process_id: See :func:`validate_cluster_flags`.
        timeout_s: How long a process other than 0 waits for the coordinator
            to listen (then :class:`ClusterError`), and then how long every
            process waits for all to join (JAX's ``initialization_timeout``;
            then JAX aborts it). Also bounds cluster detection with "auto".
        heartbeat_timeout_s: A process that sends no heartbeat for this long
            is declared dead by the coordination service, which then aborts
            every other process; a process that cannot reach the coordinator
            for this long aborts itself (JAX's ``heartbeat_timeout_seconds``).
            It bounds how long survivors outlive a dead peer, also one they
            wait for in a collective. Heartbeats come from a C++ thread, so
            long compilations or Python holding the GIL do not delay them;
            a stopped or swapped-out process does. JAX's default: 100 s.
        shutdown_timeout_s: How long a finishing process waits at JAX's
            shutdown barrier (at interpreter exit or :func:`shutdown`) for the
            others to finish too (``shutdown_timeout_seconds``). When it runs
            out, JAX aborts *every* process, also one still working: it must
            exceed the longest time one process works on after another has
            finished (use :func:`barrier` to end together). JAX's default.

    Returns:
        True if the process joined a cluster, False for a single-process run.

    Raises:
        ClusterError: Bad flags, the coordinator's port taken (process 0) or
            nothing listening there after ``timeout_s`` (other processes), or
            no cluster detected with "auto".
        RuntimeError: A JAX backend was already initialised, or
            :func:`initialize` already ran.
    """
    validate_cluster_flags(coordinator, num_processes, process_id)
    if coordinator is None:
        return False
    if jax.distributed.is_initialized():
        raise RuntimeError("pgjax.distributed.initialize() already ran")
    _use_cpu_collectives()
    kwargs: dict[str, Any] = dict(
        num_processes=num_processes,
        process_id=process_id,
        # JAX takes whole seconds.
        initialization_timeout=max(1, math.ceil(timeout_s)),
        heartbeat_timeout_seconds=max(1, math.ceil(heartbeat_timeout_s)),
        shutdown_timeout_seconds=max(1, math.ceil(shutdown_timeout_s)),
    )
    if coordinator != AUTO:
        host, port = _host_port(coordinator)
        if process_id == 0:
            _check_port_free(port)
        else:
            _wait_for_listener(host, port, timeout_s)
        kwargs["coordinator_address"] = coordinator
        # All three given: no cluster detection, whatever the environment says.
        kwargs["cluster_detection_method"] = "deactivate"
    _join(kwargs)
    return True


def _join(kwargs: dict[str, Any]) -> None:
    """``jax.distributed.initialize(**kwargs)``, its failures told as a
    :class:`ClusterError` (a flag's) or a :class:`RuntimeError` (a backend
    made too early)."""
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as error:
        if isinstance(error, jax.errors.JaxRuntimeError):
            # Not seen with jax 0.10 (it aborts instead), but a later jax may
            # raise; keep the first line of the C++ status.
            first = (str(error).strip().splitlines() or [""])[0]
            raise ClusterError(
                "--coordinator", f"could not form the cluster: {first}"
            ) from error
        # A backend already exists: a programming error, not a flag's. The
        # usual culprit is an import: gymnax makes an array at import time.
        raise RuntimeError(
            f"{error} Importing gymnax (so pgjax.envs, pgjax.networks, "
            "pgjax.train, pgjax.runner) does: call initialize() first."
        ) from error
    except ValueError as error:
        # Only "auto" gets here (our flags are valid): JAX detected no cluster
        # (SLURM, Open MPI, Cloud TPU, Kubernetes, ...; or JAX_COORDINATOR_ADDRESS
        # with the count and id given), so a parameter stayed undefined.
        raise ClusterError(
            "--coordinator",
            f"'auto' detected no cluster environment ({error}); give HOST:PORT, "
            "--num-processes and --process-id",
        ) from error


def barrier(name: str) -> None:
    """Waits until every process has reached ``barrier(name)``.

    For ending together: a process that exits while process 0 still writes
    its final checkpoint or plots waits for it at JAX's shutdown barrier, and
    if that takes longer than ``shutdown_timeout_s``, JAX aborts *all* of
    them, process 0 mid-write included. A barrier after the primary's last
    work avoids it. A no-op in a single-process run. It is a device
    collective: every process must call it, with the same ``name``.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def shutdown() -> None:
    """Leaves the cluster: waits (at most ``shutdown_timeout_s``) for the other
    processes to leave too. A no-op without a cluster. JAX also calls it at
    interpreter exit."""
    jax.distributed.shutdown()


def is_primary() -> bool:
    """Whether this is process 0, the one that writes logs, checkpoints, plots."""
    return jax.process_index() == 0


def process_count() -> int:
    """The number of processes in the run (1 without a cluster)."""
    return jax.process_count()


def process_index() -> int:
    """This process's index, ``0 <= process_index() < process_count()``."""
    return jax.process_index()


def to_host_everywhere(tree: Any) -> Any:
    """The full global value of every array of ``tree``, as numpy, on every process.

    A ``jax.Array`` sharded across processes holds on each process only the
    shards of that process's devices, so ``np.asarray`` on it fails; this
    gathers it. Per leaf:

    * a fully replicated array (parameters, metrics reduced in the program):
      this process's own copy, no communication;
    * an array sharded across processes: all-gathered to every process
      (``jax.experimental.multihost_utils.process_allgather``);
    * an array on this process's devices only, and anything else (numpy,
      Python scalars): converted as is. Such an array is *this process's*
      value, which may differ between processes.

    It is a collective: every process must call it at the same point with
    trees of the same structure and shardings, or the gathers wait forever
    (up to the heartbeat bound of :func:`initialize` when a peer is gone).

    Args:
        tree: A pytree of ``jax.Array``, numpy arrays or scalars.

    Returns:
        The same pytree with numpy arrays of the global shapes.
    """
    # Imported here: multihost_utils pulls in modules the single-process
    # shell never needs.
    from jax.experimental import multihost_utils

    def leaf(x: Any) -> np.ndarray:
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        # tiled=True: the global array as is (not stacked per process).
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(leaf, tree)


def _host_port(coordinator: str) -> tuple[str, int]:
    """``HOST:PORT`` split; an IPv6 host loses its brackets."""
    match = _HOST_PORT.match(coordinator)
    assert match is not None  # validate_cluster_flags checked it
    return match["host"].strip("[]"), int(match["port"])


def _check_port_free(port: int) -> None:
    """Raises ClusterError if ``port`` is taken on this host.

    Process 0's coordination service binds ``[::]:PORT`` (all addresses), and
    jax 0.10 crashes with a segmentation fault when that bind fails. A port
    JAX_COORDINATOR_BIND_ADDRESS names instead is left to JAX.
    """
    if os.environ.get("JAX_COORDINATOR_BIND_ADDRESS"):
        return
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this host: JAX binds IPv4 only
            continue
        with sock:
            # As gRPC binds: a port in TIME_WAIT is free, one with a listener
            # is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError as error:
                raise ClusterError(
                    "--coordinator",
                    f"port {port} is not free on this host (process 0 runs the "
                    f"coordinator there): {error.strerror or error}",
                ) from error
        return


def _wait_for_listener(host: str, port: int, timeout_s: float) -> None:
    """Waits until a TCP connection to ``host:port`` succeeds; ClusterError
    after ``timeout_s``. Process 0 may start after the others: retry."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # A bare TCP connection, closed at once: the coordinator's gRPC
            # server drops it without effect.
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as error:  # refused, unreachable, name not resolved
            last = error
        if time.monotonic() >= deadline:
            raise ClusterError(
                "--coordinator",
                f"nothing listens at {host}:{port} after {timeout_s:g} s (is process "
                f"0 running, and the address right?): {last.strerror or last}",
            ) from last
        time.sleep(0.2)


def _check_host_port(coordinator: str) -> None:
    match = _HOST_PORT.match(coordinator)
    if match is None:
        raise ClusterError(
            "--coordinator", f"expected HOST:PORT or 'auto', got {coordinator!r}"
        )
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ClusterError(
            "--coordinator", f"port must be in 1..65535, got {port} in {coordinator!r}"
        )


def _not_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _use_cpu_collectives() -> None:
    """Selects gloo for cross-process collectives on CPU.

    jax 0.10's default is already gloo, but without any CPU collectives a
    multi-process CPU program fails at its first cross-process transfer, so
    we say so explicitly; MPI (``mpi``), if chosen, is kept. The setting is
    read when the CPU backend is created, hence before any backend exists.
    It concerns only the CPU backend: GPU and TPU use their own collectives.
    """
    if jax.config.jax_cpu_collectives_implementation != "mpi":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
