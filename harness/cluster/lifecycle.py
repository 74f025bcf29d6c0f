"""Start and stop a real multi-node Ray cluster on this machine, by pid.

`cluster_up` runs `ray start --head` plus `nodes - 1` `ray start --address=...`
worker nodes, each with its own short temp dir. `cluster_down` stops exactly
the processes of that cluster and nothing else: other people may run Ray on
the same machine, so `ray stop` (which kills every Ray process it can find)
is never used. A process belongs to the cluster when its command line names
one of the cluster's temp dirs, its GCS address, or its client server's port,
or when it descends from such a process.

Every cluster uses token authentication with its own random token file, and
every subprocess gets an explicit environment. Relying on Ray's defaults is
not safe here: in Ray 2.60 a local `ray.init()` writes `~/.ray/auth_token`,
after which `ray start --head` enables auth but `ray start --address=...`
does not (see /work/shared/RAY_NOTES.md), and `RAY_AUTH_TOKEN` in a user's
shell would override any token file (docs.ray.io, "Token Authentication",
token sources and precedence).

This module never imports `ray`: the caller must never join a cluster by
accident, so every question put to a cluster is asked from a subprocess.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil

from backends import processes
from backends.host import short_temp_root
from harness.cluster.state import ClusterInfo, default_state_file, read_state, write_state
from harness.errors import HarnessError

START_TIMEOUT_S = 90.0  # one `ray start`; measured 2-6 s on a 2-core machine
NODES_TIMEOUT_S = 60.0  # until every node is alive, after the last `ray start`
TERM_GRACE_S = 5.0  # SIGTERM -> SIGKILL
OWNER_GRACE_S = 60.0  # an interrupted `cluster up` stopping what it started

# Run in a subprocess: join the cluster, poll until `want` nodes are alive or
# the deadline passes, print the count last. Polling inside one subprocess
# pays the ~1.5 s `ray.init` once instead of once per poll.
_COUNT_NODES = """
import sys, time, ray
address, want, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
while True:
    alive = sum(1 for node in ray.nodes() if node["Alive"])
    if alive >= want or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print(alive)
"""


def cluster_up(nodes: int, cpus_per_node: float | None = None, state_file: Path | None = None) -> ClusterInfo:
    """Start a head and `nodes - 1` worker nodes on this machine; wait until all are alive.

    The state file is written before the first `ray start`. Raises HarnessError
    (after stopping whatever it started) if a cluster is already recorded and
    alive, if a `ray start` fails, or if the nodes are not alive within the
    timeout; SIGINT, SIGTERM and SIGHUP stop what was started too, then raise
    KeyboardInterrupt or SystemExit(128 + signal).
    """
    path = Path(state_file) if state_file else default_state_file()
    if nodes < 1:
        raise HarnessError(f"--nodes must be at least 1, got {nodes}")
    cpus = cpus_per_node if cpus_per_node is not None else max(1, (os.cpu_count() or 1) // nodes)
    # `ray start --num-cpus` takes an integer, and CPU may not go in --resources.
    if cpus < 1 or cpus != int(cpus):
        raise HarnessError(f"cpus per node must be a whole number >= 1, got {cpus}")
    cpus = int(cpus)

    old = read_state(path)
    if old is not None:
        if _owner_alive(old) or find_processes(old):
            flag = "" if path == default_state_file() else f" --state-file {path}"
            where = f"at {old.address}" if old.address else f"(being started by pid {old.owner_pid})"
            raise HarnessError(f"a cluster is already up {where}; run `python -m harness cluster down{flag}` first")
        teardown(old, path)  # stale record: its processes are gone; clear its files

    me = psutil.Process()
    info = ClusterInfo("", nodes, float(cpus), "", (), status="starting", owner_pid=me.pid, owner_create_time=me.create_time())
    with _signals_raise():
        try:
            # A fresh random token per cluster: mkstemp creates the file with mode 0600,
            # so nobody else on the machine can read it and join.
            fd, token_path = tempfile.mkstemp(prefix="rtok", dir=short_temp_root())
            info = dataclasses.replace(info, token_path=token_path)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            # Short dirs: Unix socket paths under them must stay within 107 bytes.
            for _ in range(nodes):
                info = dataclasses.replace(
                    info, temp_dirs=(*info.temp_dirs, tempfile.mkdtemp(prefix="rt", dir=short_temp_root()))
                )
            info = dataclasses.replace(info, client_server_port=_free_port())
            # Recorded before the first `ray start`: however this function ends, `cluster down` finds its processes.
            write_state(path, info)
            info = _start(info, path, cpus)
        except BaseException as exc:
            teardown(info, path)
            if isinstance(exc, HarnessError) or not isinstance(exc, Exception):
                raise  # HarnessError, or KeyboardInterrupt/SystemExit after cleaning up
            raise HarnessError(f"could not start a Ray cluster: {exc}") from exc
    return info


def _start(info: ClusterInfo, path: Path, cpus: int) -> ClusterInfo:
    """The head, then the worker nodes together; the state file updated after each step."""
    head_dir, *worker_dirs = info.temp_dirs
    _wait_ray_start(
        _popen_ray_start(
            [
                "--head",
                "--port=0",
                *_common_flags(head_dir, cpus),
                "--include-dashboard=false",
                f"--ray-client-server-port={info.client_server_port}",
            ],
            _child_env(info),
            head_dir,
        ),
        head_dir,
    )
    advertised = read_head_address(head_dir)
    info = dataclasses.replace(info, address=f"127.0.0.1:{advertised.rpartition(':')[2]}", advertised_address=advertised)
    write_state(path, info)
    env = _child_env(info)
    # Started together: each takes a few seconds.
    workers = [_popen_ray_start([f"--address={info.address}", *_common_flags(d, cpus)], env, d) for d in worker_dirs]
    for proc, d in zip(workers, worker_dirs, strict=True):
        _wait_ray_start(proc, d)
    alive = count_alive(info, want=info.nodes, timeout_s=NODES_TIMEOUT_S)
    if alive < info.nodes:
        raise HarnessError(f"only {alive} of {info.nodes} Ray nodes came up within {NODES_TIMEOUT_S:.0f} s")
    pids = tuple(sorted(p.pid for p in find_processes(info)))
    info = dataclasses.replace(info, pids=pids, status="up", owner_pid=0, owner_create_time=0.0)
    write_state(path, info)
    return info


def cluster_down(state_file: Path | None = None) -> ClusterInfo | None:
    """Stop the recorded cluster's processes and delete its temp dirs, token and state file.

    Returns the cluster's record with `pids` set to the processes it stopped, or
    None when no cluster is recorded (nothing to do: `down` twice is fine). An
    `up` still starting this cluster is stopped first; it stops what it started.
    """
    path = Path(state_file) if state_file else default_state_file()
    info = read_state(path)
    if info is None:
        return None
    found = {p.pid for p in find_processes(info)}
    owner = _owner_alive(info)
    if owner is not None:
        # It stops what it started (SIGTERM raises in `cluster_up`), and nothing can start after it is gone.
        processes.stop([owner], OWNER_GRACE_S)
    # Whatever the owner did not stop, or all of it when `up` died without a chance to (SIGKILL).
    stopped = teardown(info, path)
    return dataclasses.replace(info, pids=tuple(sorted(found | stopped)))


def find_processes(info: ClusterInfo) -> list[psutil.Process]:
    """The cluster's running processes: every process whose command line names one of its temp dirs,
    its GCS address or its client server's port, plus their children (agents and workers rename
    themselves "ray::..."). Never this process."""
    patterns = _patterns(info)
    found: dict[int, psutil.Process] = {}
    me = os.getpid()
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.pid == me or not any(p.search(cmdline) for p in patterns):
                continue
            found[proc.pid] = proc
            for child in proc.children(recursive=True):
                found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return [p for p in found.values() if processes.running(p)]


def teardown(info: ClusterInfo, state_file: Path) -> set[int]:
    """Stop the cluster's processes (SIGTERM, then SIGKILL) and delete its files; the pids it signalled.

    The state file goes last, so an interrupted teardown leaves a record `down` can finish.
    """
    stopped: set[int] = set()
    # A second pass catches processes a raylet spawned while the first was stopping.
    for _ in range(2):
        procs = find_processes(info)
        if not procs:
            break
        stopped.update(p.pid for p in procs)
        # `ray start` launchers first, so that none starts a daemon after its node was stopped; then the
        # order `ray stop` uses (ray/scripts/scripts.py): raylets, so that their fate-sharing agents and
        # workers exit with them, the GCS last. Sent all at once, SIGTERM left raylet and GCS hanging.
        for bucket in _buckets(procs):
            processes.stop(bucket, TERM_GRACE_S, kill_wait_s=2.0)
    leftover = find_processes(info)
    if leftover:
        raise HarnessError(f"could not stop Ray processes {sorted(p.pid for p in leftover)} of the cluster at {info.address}")
    for d in info.temp_dirs:
        shutil.rmtree(d, ignore_errors=True)
    if info.token_path:
        Path(info.token_path).unlink(missing_ok=True)
    state_file = Path(state_file)
    state_file.with_name(state_file.name + ".tmp").unlink(missing_ok=True)
    state_file.unlink(missing_ok=True)
    return stopped


def read_head_address(head_temp_dir: str) -> str:
    """The "IP:PORT" a head started with --port=0 wrote to its temp dir; HarnessError if none."""
    path = Path(head_temp_dir) / "ray_current_cluster"
    try:
        address = path.read_text().strip()
    except OSError:
        raise HarnessError(f"the Ray head started but wrote no address to {path}") from None
    if not re.fullmatch(r"[\w.:\[\]-]+:\d+", address):
        raise HarnessError(f"the Ray head wrote an unexpected address {address!r} to {path}")
    return address


def count_alive(info: ClusterInfo, want: int, timeout_s: float, join_s: float = 60.0) -> int:
    """Alive nodes, counted by a subprocess that polls for up to `timeout_s`.

    `join_s` bounds `ray.init` in the subprocess: ~1.5 s normally, longer on a
    busy machine, and forever when the GCS is up but no raylet is.
    """
    limit = timeout_s + join_s
    try:
        result = subprocess.run(
            [sys.executable, "-c", _COUNT_NODES, info.address, str(want), str(timeout_s)],
            env=_child_env(info),
            capture_output=True,
            text=True,
            timeout=limit,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"could not count the nodes of {info.address} within {limit:.0f} s") from None
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines or not lines[-1].isdigit():
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise HarnessError(f"could not join the cluster at {info.address} to count its nodes: {tail}")
    return int(lines[-1])


# --- internals -------------------------------------------------------------


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """While starting: SIGTERM and SIGHUP raise SystemExit(128 + signal), as SIGINT raises KeyboardInterrupt,
    so that the caller's clean-up runs (by default they end the process on the spot)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread, and signals only arrive there
        return

    def raise_exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    # Only where the default (death) is in force: `nohup` ignores SIGHUP on purpose, and SIGINT already raises.
    previous = {
        sig: signal.signal(sig, raise_exit) for sig in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(sig) == signal.SIG_DFL
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _owner_alive(info: ClusterInfo) -> psutil.Process | None:
    """The `cluster up` still starting this cluster, if it runs (and is not this process)."""
    if info.status != "starting" or not info.owner_pid or info.owner_pid == os.getpid():
        return None
    try:
        proc = psutil.Process(info.owner_pid)
        same = abs(proc.create_time() - info.owner_create_time) < 0.01  # a reused pid is another process
    except psutil.Error:
        return None
    return proc if same and processes.running(proc) else None


def _ray_executable() -> str:
    # The `ray` script next to this interpreter, so the cluster runs the same
    # Ray as the harness even when the venv is not activated.
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else "ray"


def _child_env(info: ClusterInfo) -> dict[str, str]:
    """The full environment for a Ray subprocess of this cluster."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=info.token_path, RAY_USAGE_STATS_ENABLED="0")
    if info.address:
        env["RAY_ADDRESS"] = info.address
    return env


def _common_flags(temp_dir: str, cpus: int) -> list[str]:
    # Ray 2.60 replaces a loopback --node-ip-address by the machine's routable
    # IP (services.resolve_ip_for_localhost) and the GCS listens on all
    # interfaces anyway: the token, not the bind address, keeps others out.
    return [
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={cpus}",
        "--dashboard-agent-listen-port=0",
        "--disable-usage-stats",
    ]


def _free_port() -> int:
    # The Ray client server defaults to port 10001 with SO_REUSEPORT, so two
    # clusters on one machine would silently share it; give ours its own.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _popen_ray_start(args: list[str], env: dict[str, str], temp_dir: str) -> subprocess.Popen:
    # Output goes to a file, not a pipe: daemons that inherit a pipe would keep
    # it open and a reader would wait for EOF forever.
    with open(Path(temp_dir) / "ray_start.log", "wb") as log:
        return subprocess.Popen(
            [_ray_executable(), "start", *args], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def _wait_ray_start(proc: subprocess.Popen, temp_dir: str) -> None:
    try:
        rc = proc.wait(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise HarnessError(f"`ray start` did not finish within {START_TIMEOUT_S:.0f} s (log: {temp_dir}/ray_start.log)") from None
    if rc != 0:
        raise HarnessError(f"`ray start` failed with status {rc}: {_last_error(temp_dir)}")


def _last_error(temp_dir: str) -> str:
    try:
        lines = (Path(temp_dir) / "ray_start.log").read_text(errors="replace").splitlines()
    except OSError:
        return "no output"
    errors = [line for line in lines if "Error" in line or "ERROR" in line] or lines or ["no output"]
    return re.sub(r"\x1b\[[0-9;]*m", "", errors[-1]).strip()  # strip colour codes


def _patterns(info: ClusterInfo) -> list[re.Pattern]:
    # Whole-token matches, so "/tmp/rtab" never matches "/tmp/rtabc" and
    # "1.2.3.4:4503" never matches "1.2.3.4:45037".
    patterns = [re.compile(re.escape(d) + r"(?![\w.-])") for d in info.temp_dirs]
    addresses = {info.address, info.advertised_address}
    if not info.advertised_address and info.temp_dirs:
        # An `up` interrupted after the head started but before it recorded the address.
        with contextlib.suppress(HarnessError):
            addresses.add(read_head_address(info.temp_dirs[0]))
    patterns += [re.compile(r"(?<![\w.])" + re.escape(a) + r"(?!\d)") for a in addresses if a]
    if info.client_server_port:
        # The client server names only the address, which an interrupted `up` may not have read yet.
        patterns.append(re.compile(rf"ray\.util\.client\.server .*--port={info.client_server_port}(?!\d)"))
    return patterns


def _buckets(procs: list[psutil.Process]) -> list[list[psutil.Process]]:
    """Split into [`ray start` launchers, raylets, everything else, GCS servers], the order to stop them in."""

    def name(proc: psutil.Process) -> str:
        try:
            return proc.name()
        except psutil.Error:
            return ""

    def launcher(proc: psutil.Process) -> bool:
        try:
            args = proc.cmdline()
        except psutil.Error:
            return False
        return any(Path(a).name == "ray" and args[i + 1 : i + 2] == ["start"] for i, a in enumerate(args[:2]))

    launchers = [p for p in procs if launcher(p)]
    raylets = [p for p in procs if name(p) == "raylet"]
    gcs = [p for p in procs if name(p) == "gcs_server"]
    rest = [p for p in procs if p not in launchers and p not in raylets and p not in gcs]
    return [b for b in (launchers, raylets, rest, gcs) if b]
