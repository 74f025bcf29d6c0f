"""Start, inspect and stop a real multi-node Ray cluster on this machine.

`cluster_up` runs `ray start --head` plus `nodes - 1` `ray start --address=...`
worker nodes, each with its own short temp dir, and records the cluster in a
small JSON state file. `cluster_down` stops exactly the processes of that
cluster and nothing else: other people may run Ray on the same machine, so
`ray stop` (which kills every Ray process it can find) is never used.

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
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from harness.errors import HarnessError

STATE_ENV_VAR = "PPO_HARNESS_CLUSTER_STATE"
DEFAULT_STATE_FILE = "/tmp/ppo-harness-cluster.json"
STATE_VERSION = 1

START_TIMEOUT_S = 90.0  # one `ray start`; measured 2-6 s on a 2-core machine
NODES_TIMEOUT_S = 60.0  # until every node is alive, after the last `ray start`
TERM_GRACE_S = 5.0  # SIGTERM -> SIGKILL

UP_HINT = "start one with `python -m harness cluster up --nodes 2`"

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


@dataclass(frozen=True)
class ClusterInfo:
    """A local Ray cluster started by `cluster_up`, as recorded in the state file."""

    address: str
    """GCS address clients connect to, "127.0.0.1:PORT"."""
    nodes: int
    """Number of Ray nodes (head included)."""
    cpus_per_node: float
    """CPUs each node advertises to the scheduler."""
    token_path: str
    """File holding this cluster's random auth token (mode 0600)."""
    temp_dirs: tuple[str, ...]
    """One short `--temp-dir` per node, head first."""
    pids: tuple[int, ...]
    """Long-running processes of the cluster found after start (or stopped by down)."""
    advertised_address: str = ""
    """The GCS address Ray itself advertises (the machine's routable IP, same port)."""

    @property
    def port(self) -> int:
        """The GCS port."""
        return int(self.address.rpartition(":")[2])

    @property
    def env(self) -> dict[str, str]:
        """Environment variables a client process needs to join this cluster.

        `RAY_AUTH_TOKEN`, if set in the client's environment, takes precedence
        over `RAY_AUTH_TOKEN_PATH` and must be unset.
        """
        return {
            "RAY_ADDRESS": self.address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.token_path,
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def to_json(self) -> str:
        """Serialise to JSON text, with a schema version."""
        return json.dumps({"version": STATE_VERSION, **dataclasses.asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterInfo:
        """Parse JSON written by `to_json`; ValueError/KeyError/TypeError if it is not."""
        data = json.loads(text)
        if data.pop("version", None) != STATE_VERSION:
            raise ValueError(f"state file version is not {STATE_VERSION}")
        data["temp_dirs"] = tuple(data["temp_dirs"])
        data["pids"] = tuple(data["pids"])
        return cls(**data)


def default_state_file() -> Path:
    """Where `cluster up` records the cluster: $PPO_HARNESS_CLUSTER_STATE or /tmp/ppo-harness-cluster.json."""
    return Path(os.environ.get(STATE_ENV_VAR) or DEFAULT_STATE_FILE)


def read_state(state_file: Path | None = None) -> ClusterInfo | None:
    """The cluster recorded in `state_file`, or None if there is no such file."""
    path = Path(state_file) if state_file else default_state_file()
    try:
        return ClusterInfo.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HarnessError(f"cluster state file {path} is unreadable ({exc}); delete it") from None


def cluster_up(nodes: int, cpus_per_node: float | None = None, state_file: Path | None = None) -> ClusterInfo:
    """Start a head and `nodes - 1` worker nodes on this machine; wait until all are alive.

    Raises HarnessError (after stopping whatever it started) if a cluster is
    already recorded and alive, if a `ray start` fails, or if the nodes are not
    alive within the timeout.
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
        if _find_processes(old):
            flag = "" if path == default_state_file() else f" --state-file {path}"
            raise HarnessError(f"a cluster is already up at {old.address}; run `python -m harness cluster down{flag}` first")
        _teardown(old, path)  # stale record: its processes are gone; clear its files

    # A fresh random token per cluster: mkstemp creates the file with mode 0600,
    # so nobody else on the machine can read it and join.
    fd, token_path = tempfile.mkstemp(prefix="rtok", dir="/tmp")
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    # Short dirs: Unix socket paths under them must stay within 107 bytes.
    temp_dirs = [tempfile.mkdtemp(prefix="rt", dir="/tmp") for _ in range(nodes)]
    info = ClusterInfo("", nodes, float(cpus), token_path, tuple(temp_dirs), ())
    env = _child_env(info)
    try:
        _ray_start(
            [
                "--head",
                "--port=0",
                *_common_flags(temp_dirs[0], cpus),
                "--include-dashboard=false",
                f"--ray-client-server-port={_free_port()}",
            ],
            env,
            temp_dirs[0],
        )
        advertised = _read_head_address(temp_dirs[0])
        info = dataclasses.replace(info, address=f"127.0.0.1:{advertised.rpartition(':')[2]}", advertised_address=advertised)
        # Record the cluster now, so `cluster down` can clean up even if we are
        # interrupted before the worker nodes are up.
        _write_state(path, info)
        env = _child_env(info)
        workers = [
            _popen_ray_start([f"--address={info.address}", *_common_flags(d, cpus)], env, d) for d in temp_dirs[1:]
        ]  # started together: each takes a few seconds
        for proc, d in zip(workers, temp_dirs[1:], strict=True):
            _wait_ray_start(proc, d)
        alive = _count_alive(info, want=nodes, timeout_s=NODES_TIMEOUT_S)
        if alive < nodes:
            raise HarnessError(f"only {alive} of {nodes} Ray nodes came up within {NODES_TIMEOUT_S:.0f} s")
        pids = tuple(sorted(p.pid for p in _find_processes(info)))
        info = dataclasses.replace(info, pids=pids)
        _write_state(path, info)
    except BaseException as exc:
        _teardown(info, path)
        if isinstance(exc, HarnessError) or not isinstance(exc, Exception):
            raise  # HarnessError, or KeyboardInterrupt/SystemExit after cleaning up
        raise HarnessError(f"could not start a Ray cluster: {exc}") from exc
    return info


def cluster_down(state_file: Path | None = None) -> ClusterInfo:
    """Stop the recorded cluster's processes and delete its temp dirs, token and state file.

    Returns the cluster's record with `pids` set to the processes it stopped.
    """
    path = Path(state_file) if state_file else default_state_file()
    info = read_state(path)
    if info is None:
        raise HarnessError(f"no cluster is up (no state file at {path}); {UP_HINT}")
    stopped = _teardown(info, path)
    return dataclasses.replace(info, pids=tuple(sorted(stopped)))


def cluster_status(state_file: Path | None = None) -> str:
    """One or two lines: the recorded cluster's address and how many nodes are alive."""
    path = Path(state_file) if state_file else default_state_file()
    info = read_state(path)
    if info is None:
        return f"no cluster is up (no state file at {path})"
    if not _find_processes(info):
        return (
            f"cluster at {info.address} is recorded in {path} but none of its processes run; "
            "run `python -m harness cluster down` to clear it"
        )
    try:
        alive = _count_alive(info, want=info.nodes, timeout_s=0.0, join_s=20.0)
    except HarnessError as exc:
        return f"cluster at {info.address}: not answering ({exc})"
    return f"cluster at {info.address}: {alive} of {info.nodes} nodes alive, {info.cpus_per_node:g} CPUs each\nstate file: {path}"


def probe_address(address: str, timeout_s: float = 5.0) -> None:
    """Raise HarnessError within `timeout_s` unless a TCP connect to HOST:PORT succeeds."""
    host, sep, port_text = address.strip().rpartition(":")
    host = host.strip("[]")  # "[::1]:6379"
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HarnessError(f"malformed Ray cluster address {address!r}: expected HOST:PORT such as 127.0.0.1:6379")
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout_s):
            return
    except ConnectionRefusedError:
        why = "connection refused"
    except TimeoutError:
        why = f"no answer within {timeout_s:g} s"
    except socket.gaierror:
        why = f"unknown host {host!r}"
    except OSError as exc:
        why = exc.strerror or str(exc)
    raise HarnessError(f"cannot reach a Ray cluster at {address} ({why}); {UP_HINT} or check the address")


def cluster_env_for(address: str) -> dict[str, str]:
    """The env vars of the cluster in the default state file if it is at `address`, else {}."""
    try:
        info = read_state()
    except HarnessError:
        return {}
    if info is None or address.strip() not in (info.address, info.advertised_address):
        return {}
    return info.env


def run_cluster_command(action: str, nodes: int, cpus_per_node: float | None, state_file: Path | None) -> int:
    """Carry out `python -m harness cluster up|down|status` and print the result."""
    path = Path(state_file) if state_file else default_state_file()
    start = time.perf_counter()
    if action == "up":
        info = cluster_up(nodes, cpus_per_node, path)
        print(
            f"Ray cluster up in {time.perf_counter() - start:.1f} s: "
            f"{info.nodes} nodes x {info.cpus_per_node:g} CPUs at {info.address}"
        )
        print(f"state file: {path}")
        print("to use it from a shell:")
        for key, value in info.env.items():
            print(f"  export {key}={shlex.quote(value)}")
        if "RAY_AUTH_TOKEN" in os.environ:
            print("  unset RAY_AUTH_TOKEN  # it would override RAY_AUTH_TOKEN_PATH")
    elif action == "down":
        info = cluster_down(path)
        print(
            f"Ray cluster at {info.address} stopped in {time.perf_counter() - start:.1f} s: {len(info.pids)} processes, "
            f"removed {len(info.temp_dirs)} temp dirs, the token file and {path}"
        )
    elif action == "status":
        print(cluster_status(path))
    else:
        raise HarnessError(f"unknown cluster action {action!r}; use one of: up, down, status")
    return 0


# --- internals -------------------------------------------------------------


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


def _ray_start(args: list[str], env: dict[str, str], temp_dir: str) -> None:
    _wait_ray_start(_popen_ray_start(args, env, temp_dir), temp_dir)


def _last_error(temp_dir: str) -> str:
    try:
        lines = (Path(temp_dir) / "ray_start.log").read_text(errors="replace").splitlines()
    except OSError:
        return "no output"
    errors = [line for line in lines if "Error" in line or "ERROR" in line] or lines or ["no output"]
    return re.sub(r"\x1b\[[0-9;]*m", "", errors[-1]).strip()  # strip colour codes


def _read_head_address(head_temp_dir: str) -> str:
    # With --port=0 the head picks a port and writes "IP:PORT" here.
    path = Path(head_temp_dir) / "ray_current_cluster"
    try:
        address = path.read_text().strip()
    except OSError:
        raise HarnessError(f"the Ray head started but wrote no address to {path}") from None
    if not re.fullmatch(r"[\w.:\[\]-]+:\d+", address):
        raise HarnessError(f"the Ray head wrote an unexpected address {address!r} to {path}")
    return address


def _count_alive(info: ClusterInfo, want: int, timeout_s: float, join_s: float = 60.0) -> int:
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


def _patterns(info: ClusterInfo) -> list[re.Pattern]:
    # Whole-token matches, so "/tmp/rtab" never matches "/tmp/rtabc" and
    # "1.2.3.4:4503" never matches "1.2.3.4:45037".
    dirs = [re.compile(re.escape(d) + r"(?![\w.-])") for d in info.temp_dirs]
    addresses = {a for a in (info.address, info.advertised_address) if a}
    return dirs + [re.compile(r"(?<![\w.])" + re.escape(a) + r"(?!\d)") for a in addresses]


def _find_processes(info: ClusterInfo) -> list[psutil.Process]:
    """Processes whose command line names one of the cluster's temp dirs or its GCS
    address (the Ray client server only names the address), plus their children
    (agents and workers rename themselves "ray::...")."""
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
    return [p for p in found.values() if _running(p)]


def _running(proc: psutil.Process) -> bool:
    # Orphaned daemons are reparented to init, which may reap them late: a
    # zombie has already exited and must not be waited on.
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal_and_wait(procs: list[psutil.Process], sig: int, wait_s: float) -> list[psutil.Process]:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(sig)
    deadline = time.monotonic() + wait_s
    while True:
        left = [p for p in procs if _running(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _buckets(procs: list[psutil.Process]) -> list[list[psutil.Process]]:
    """Split into [raylets, everything else, GCS servers], the order to stop them in."""

    def name(proc: psutil.Process) -> str:
        try:
            return proc.name()
        except psutil.Error:
            return ""

    raylets = [p for p in procs if name(p) == "raylet"]
    gcs = [p for p in procs if name(p) == "gcs_server"]
    rest = [p for p in procs if p not in raylets and p not in gcs]
    return [b for b in (raylets, rest, gcs) if b]


def _teardown(info: ClusterInfo, state_file: Path) -> set[int]:
    """Stop the cluster's processes (SIGTERM, then SIGKILL) and delete its files."""
    stopped: set[int] = set()
    # A second pass catches processes a raylet spawned while the first was stopping.
    for _ in range(2):
        procs = _find_processes(info)
        if not procs:
            break
        stopped.update(p.pid for p in procs)
        # The order `ray stop` uses (ray/scripts/scripts.py): raylets first, so
        # their fate-sharing agents and workers exit with them; the GCS last.
        # Sent all at once, SIGTERM left raylet and GCS hanging until SIGKILL.
        for bucket in _buckets(procs):
            left = _signal_and_wait(bucket, signal.SIGTERM, TERM_GRACE_S)
            _signal_and_wait(left, signal.SIGKILL, 2.0)
    leftover = _find_processes(info)
    if leftover:
        raise HarnessError(f"could not stop Ray processes {sorted(p.pid for p in leftover)} of the cluster at {info.address}")
    for d in info.temp_dirs:
        shutil.rmtree(d, ignore_errors=True)
    for f in (info.token_path, state_file):
        Path(f).unlink(missing_ok=True)
    return stopped


def _write_state(path: Path, info: ClusterInfo) -> None:
    # Write then rename, so a reader never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(info.to_json())
    os.replace(tmp, path)
