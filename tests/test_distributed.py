"""pgjax.distributed: several JAX processes on this machine as the hosts of a job.

Each multi-process test starts its processes through tests/multiprocess.py
(a coordinator on 127.0.0.1, gloo CPU collectives, K CPU devices per process)
and checks what each printed. The failure cases run their scenarios side by
side, once per module (fixtures), because most of their time is spent waiting
for a timeout: the whole file takes about 20 s on 2 cores.

No test initialises ``jax.distributed`` in the pytest process itself.
"""

from __future__ import annotations

import json
import socket
import sys
import textwrap

import multiprocess  # tests/multiprocess.py (tests/ is on sys.path, as for conftest)
import numpy as np
import pytest

from pgjax import distributed
from pgjax.distributed import ClusterError

# ---------------------------------------------------------------------------
# Flag validation: no JAX, no sockets.


@pytest.mark.parametrize(
    "flags",
    [
        (None, None, None),  # single process
        ("127.0.0.1:1234", 2, 0),
        ("127.0.0.1:1234", 2, 1),
        ("localhost:65535", 1, 0),
        ("node-3.cluster.example:1", 4, 3),
        ("[::1]:1234", 2, 1),
        ("auto", None, None),  # everything detected
        ("auto", 8, None),
        ("auto", 8, 7),
    ],
)
def test_valid_cluster_flags(flags):
    distributed.validate_cluster_flags(*flags)


@pytest.mark.parametrize(
    "flags, flag, words",
    [
        (("localhost", 2, 0), "--coordinator", "HOST:PORT"),
        (("localhost:", 2, 0), "--coordinator", "HOST:PORT"),
        ((":1234", 2, 0), "--coordinator", "HOST:PORT"),
        (("localhost:http", 2, 0), "--coordinator", "HOST:PORT"),
        (("::1:1234", 2, 0), "--coordinator", "HOST:PORT"),
        (("localhost:0", 2, 0), "--coordinator", "1..65535"),
        (("localhost:65536", 2, 0), "--coordinator", "1..65535"),
        ((None, 2, 0), "--coordinator", "required"),
        ((None, None, 0), "--coordinator", "required"),
        (("localhost:1234", None, 0), "--num-processes", "required"),
        (("localhost:1234", 2, None), "--process-id", "required"),
        (("localhost:1234", 0, 0), "--num-processes", ">= 1"),
        (("auto", -1, None), "--num-processes", ">= 1"),
        (("localhost:1234", 2, -1), "--process-id", ">= 0"),
        (("localhost:1234", 2, 2), "--process-id", "< --num-processes (2)"),
        (("auto", 2, 5), "--process-id", "< --num-processes (2)"),
    ],
)
def test_invalid_cluster_flags(flags, flag, words):
    with pytest.raises(ClusterError) as caught:
        distributed.validate_cluster_flags(*flags)
    assert caught.value.flag == flag
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)  # argparse-style handling


def test_initialize_without_flags_is_single_process():
    # Returns before touching jax.distributed, so safe in the pytest process.
    assert distributed.initialize(None, None, None) is False


def test_initialize_validates_before_connecting():
    with pytest.raises(ClusterError) as caught:
        distributed.initialize("127.0.0.1:99999", 2, 0)
    assert caught.value.flag == "--coordinator"


# ---------------------------------------------------------------------------
# Helpers for the multi-process tests.

#: Every snippet starts with this: the cluster flags from sys.argv[1:4]
#: (tests/multiprocess.py) and report(), one JSON line on stdout.
PRELUDE = """
import json, os, sys, time
from pgjax import distributed
coordinator, num_processes, process_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def report(**values):
    print("RESULT " + json.dumps(values), flush=True)
"""


def snippet(body: str) -> str:
    return PRELUDE + textwrap.dedent(body)


def reported(result: multiprocess.ProcessResult) -> dict | None:
    """The values a process passed to report(), None if it never did."""
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return None


def argv(code: str, coordinator: str, num_processes: int, process_id: int):
    return [
        sys.executable,
        "-c",
        code,
        coordinator,
        str(num_processes),
        str(process_id),
    ]


# ---------------------------------------------------------------------------
# A healthy cluster: sharded computations, to_host_everywhere.

HEALTHY = snippet(
    """
    import jax

    # No CPU collectives, as before jax 0.5: cross-process computations then
    # fail ("Multiprocess computations aren't implemented on the CPU
    # backend"), unless initialize() selects gloo.
    jax.config.update("jax_cpu_collectives_implementation", None)
    distributed.initialize(coordinator, num_processes, process_id, timeout_s=30)

    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("d",))
    rows = NamedSharding(mesh, P("d"))
    replicated = NamedSharding(mesh, P())
    n_rows = 4 * jax.device_count()
    g = np.arange(n_rows * 3, dtype=np.float32).reshape(n_rows, 3) / 7

    # x: every process fills its devices' rows from the global value.
    x = jax.make_array_from_callback(g.shape, rows, lambda index: g[index])
    # y: every process hands over only its own block of rows (processes own
    # contiguous blocks: jax.devices() is ordered by process).
    per_process = n_rows // jax.process_count()
    mine = slice(process_id * per_process, (process_id + 1) * per_process)
    y = jax.make_array_from_process_local_data(rows, 2 * g[mine])

    @jax.jit
    def stats(x, y):
        return x.sum(), x.T @ y, x + y

    total, gram, both = jax.jit(
        stats, out_shardings=(replicated, replicated, rows)
    )(x, y)
    host = distributed.to_host_everywhere(
        {"total": total, "gram": gram, "both": both, "y": y,
         "local": jnp.arange(3) + process_id, "python": 5}
    )
    distributed.barrier("pgjax-test-end")
    report(
        process_count=jax.process_count(),
        device_count=jax.device_count(),
        local_device_count=jax.local_device_count(),
        helpers=[distributed.process_count(), distributed.process_index(),
                 distributed.is_primary()],
        x_fully_addressable=x.is_fully_addressable,
        x_local_shards=len(x.addressable_shards),
        collectives=jax.config.jax_cpu_collectives_implementation,
        types=sorted({type(v).__name__ for v in host.values()}),
        **{key: np.asarray(value).tolist() for key, value in host.items()},
    )
    """
)


@pytest.mark.parametrize("devices_per_process", [1, 2])
def test_two_processes_compute_one_global_result(devices_per_process):
    results = multiprocess.run_snippet(
        HEALTHY, 2, devices_per_process=devices_per_process, timeout_s=60
    )
    devices = 2 * devices_per_process
    g = np.arange(4 * devices * 3, dtype=np.float32).reshape(-1, 3) / 7
    y = 2 * g  # the global value of y, assembled from the processes' blocks
    for process_id, result in enumerate(results):
        assert result.returncode == 0, result.describe()
        values = reported(result)
        assert values is not None, result.describe()
        assert values["process_count"] == 2
        assert values["device_count"] == devices
        assert values["local_device_count"] == devices_per_process
        assert values["helpers"] == [2, process_id, process_id == 0]
        assert values["collectives"] == "gloo"
        # x really is split across the processes: each holds only its shards.
        assert values["x_fully_addressable"] is False
        assert values["x_local_shards"] == devices_per_process
        # The same global values as one process computes them.
        np.testing.assert_allclose(values["total"], g.sum(), rtol=1e-6)
        np.testing.assert_allclose(values["gram"], g.T @ y, rtol=1e-5)
        # to_host_everywhere: the full global arrays, on every process.
        np.testing.assert_allclose(values["both"], g + y, rtol=1e-6)
        np.testing.assert_allclose(values["y"], y, rtol=1e-6)
        # A process-local array stays this process's value.
        assert values["local"] == [process_id, process_id + 1, process_id + 2]
        assert values["python"] == 5
        assert values["types"] == ["ndarray"]


# ---------------------------------------------------------------------------
# Clusters that cannot form, and misuse: one process each, side by side.

#: Short enough for a fast test; the CLI's default is 60 s.
JOIN_TIMEOUT_S = 3

LONE = snippet(
    f"""
    mode = os.environ["MODE"]
    if mode == "backend-first":
        import jax
        jax.devices()
    if mode == "auto":
        for name in list(os.environ):  # no cluster environment to detect
            if name.startswith(("SLURM_", "OMPI_", "KUBERNETES_")):
                del os.environ[name]
        os.environ["TPU_SKIP_MDS_QUERY"] = "1"
        coordinator, num_processes, process_id = "auto", None, None
    start = time.monotonic()
    try:
        joined = distributed.initialize(
            coordinator, num_processes, process_id, timeout_s={JOIN_TIMEOUT_S}
        )
    except distributed.ClusterError as error:
        report(error="ClusterError", flag=error.flag, message=str(error),
               seconds=time.monotonic() - start)
        sys.exit(2)
    except RuntimeError as error:
        report(error="RuntimeError", message=str(error))
        sys.exit(3)
    import jax
    report(joined=joined, process_count=jax.process_count(),
           total=float(distributed.to_host_everywhere(jax.numpy.ones(3).sum())))
    """
)


@pytest.fixture(scope="module")
def lone_processes():
    """Runs each scenario as one process, all at once; {scenario: result}."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    taken_port = taken.getsockname()[1]
    with taken:
        scenarios = {
            # Process 1 of 2, and nothing listens at the coordinator's port.
            "unreachable": ("127.0.0.1", multiprocess.free_port(), 2, 1),
            # Process 0 of 2: the coordinator is up, its peer never comes.
            "peer-missing": ("127.0.0.1", multiprocess.free_port(), 2, 0),
            # Process 0, and another program listens on the port.
            "port-taken": ("127.0.0.1", taken_port, 2, 0),
            "backend-first": ("127.0.0.1", multiprocess.free_port(), 1, 0),
            "auto": ("127.0.0.1", 1, 1, 0),  # flags replaced by "auto"
            "one-process": ("127.0.0.1", multiprocess.free_port(), 1, 0),
        }
        results = multiprocess.run_processes(
            [argv(LONE, f"{h}:{p}", n, i) for h, p, n, i in scenarios.values()],
            envs=[{"MODE": name} for name in scenarios],
            timeout_s=60,
        )
    return dict(zip(scenarios, results, strict=True))


def test_unreachable_coordinator_is_a_cluster_error(lone_processes):
    result = lone_processes["unreachable"]
    values = reported(result)
    assert result.returncode == 2, result.describe()
    assert values["error"] == "ClusterError"
    assert values["flag"] == "--coordinator"
    assert "nothing listens at 127.0.0.1:" in values["message"]
    # It waited the timeout (the coordinator may start late), and no longer.
    assert JOIN_TIMEOUT_S <= values["seconds"] <= JOIN_TIMEOUT_S + 2
    assert "Traceback" not in result.stderr, result.describe()
    assert "Terminating process" not in result.stderr, result.describe()


def test_port_taken_is_a_cluster_error(lone_processes):
    # jax 0.10 itself segfaults when the coordinator's port is taken.
    result = lone_processes["port-taken"]
    values = reported(result)
    assert result.returncode == 2, result.describe()
    assert values["error"] == "ClusterError"
    assert values["flag"] == "--coordinator"
    assert "is not free" in values["message"]
    assert values["seconds"] < 1


def test_missing_peer_ends_the_coordinator(lone_processes):
    # JAX aborts a process whose cluster does not form in time (no exception
    # to catch in jax 0.10): bounded, but not a ClusterError.
    result = lone_processes["peer-missing"]
    assert not result.timed_out, result.describe()
    assert result.returncode != 0, result.describe()
    assert reported(result) is None, result.describe()
    assert result.elapsed_s <= JOIN_TIMEOUT_S + 15, result.describe()
    assert "DEADLINE_EXCEEDED" in result.stderr, result.describe()


def test_initialize_after_backend_start_says_why(lone_processes):
    result = lone_processes["backend-first"]
    values = reported(result)
    assert result.returncode == 3, result.describe()
    assert values["error"] == "RuntimeError"
    assert "before any JAX calls" in values["message"]
    assert "gymnax" in values["message"]


def test_auto_without_a_cluster_is_a_cluster_error(lone_processes):
    result = lone_processes["auto"]
    values = reported(result)
    assert result.returncode == 2, result.describe()
    assert values["error"] == "ClusterError"
    assert values["flag"] == "--coordinator"
    assert "'auto' detected no cluster" in values["message"]


def test_one_process_cluster_works(lone_processes):
    result = lone_processes["one-process"]
    assert result.returncode == 0, result.describe()
    assert reported(result) == {"joined": True, "process_count": 1, "total": 3.0}


# ---------------------------------------------------------------------------
# A peer dies mid-run: the survivor must end, not hang in a collective.

#: The survivor's bound is this plus start-up noise; the CLI's default is 60 s.
HEARTBEAT_TIMEOUT_S = 4

DEAD_PEER = snippet(
    f"""
    distributed.initialize(
        coordinator, num_processes, process_id, timeout_s=30,
        heartbeat_timeout_s={HEARTBEAT_TIMEOUT_S},
    )
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("d",))
    x = jax.make_array_from_callback(
        (8,), NamedSharding(mesh, P("d")), lambda index: np.ones(8)[index]
    )
    total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, P()))
    if os.environ["WARM"] == "1":  # gloo's connections already open
        distributed.to_host_everywhere(total(x))
    ready = os.environ["READY"]  # a file: the survivor is about to wait
    if process_id == int(os.environ["DYING"]):
        deadline = time.monotonic() + 30
        while not os.path.exists(ready) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the survivor is in the all-reduce by now
        print("DYING", flush=True)
        os._exit(1)
    print("WAITING", flush=True)  # in the cross-process all-reduce of total
    open(ready, "w").close()
    report(total=float(distributed.to_host_everywhere(total(x))))
    """
)

#: scenario: (the process that dies, whether a collective ran before).
DEATHS = {
    "peer-dies-before-any-collective": (1, "0"),
    "peer-dies-after-a-collective": (1, "1"),
    "coordinator-dies": (0, "0"),
}


@pytest.fixture(scope="module")
def deaths(tmp_path_factory):
    """Runs every scenario's two processes at once; {scenario: results}."""
    argvs, envs = [], []
    ready_dir = tmp_path_factory.mktemp("ready")
    for name, (dying, warm) in DEATHS.items():
        coordinator = f"127.0.0.1:{multiprocess.free_port()}"
        for process_id in range(2):
            argvs.append(argv(DEAD_PEER, coordinator, 2, process_id))
            envs.append(
                {"DYING": str(dying), "WARM": warm, "READY": str(ready_dir / name)}
            )
    results = multiprocess.run_processes(argvs, envs=envs, timeout_s=90)
    return {name: results[2 * i : 2 * i + 2] for i, name in enumerate(DEATHS)}


@pytest.mark.parametrize("scenario", DEATHS)
def test_survivor_of_a_dead_peer_ends(deaths, scenario):
    dying = DEATHS[scenario][0]
    dead, survivor = deaths[scenario][dying], deaths[scenario][1 - dying]
    assert dead.returncode == 1 and "DYING" in dead.stdout, dead.describe()
    assert not survivor.timed_out, survivor.describe()
    assert survivor.returncode != 0, survivor.describe()
    assert "WAITING" in survivor.stdout, survivor.describe()
    assert reported(survivor) is None, survivor.describe()  # no result
    outlived_s = survivor.elapsed_s - dead.elapsed_s
    assert outlived_s <= HEARTBEAT_TIMEOUT_S + 5, survivor.describe()
