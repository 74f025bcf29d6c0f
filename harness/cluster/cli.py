"""What `python -m harness cluster up|down|status` prints, and the one-line errors about a cluster."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from backends import ray_connect
from harness.cluster.lifecycle import cluster_down, cluster_up, count_alive, find_processes
from harness.cluster.state import default_state_file, read_state
from harness.errors import HarnessError

UP_HINT = "start one with `python -m harness cluster up --nodes 2`"


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
        if info is None:
            print(f"no cluster is up (no state file at {path}); nothing to stop")
        else:
            what = f"Ray cluster at {info.address}" if info.address else "Ray cluster of an interrupted `cluster up`"
            print(
                f"{what} stopped in {time.perf_counter() - start:.1f} s: {len(info.pids)} processes, "
                f"removed {len(info.temp_dirs)} temp dirs, the token file and {path}"
            )
    elif action == "status":
        print(cluster_status(path))
    else:
        raise HarnessError(f"unknown cluster action {action!r}; use one of: up, down, status")
    return 0


def cluster_status(state_file: Path | None = None) -> str:
    """One or two lines: the recorded cluster's address and how many nodes are alive."""
    path = Path(state_file) if state_file else default_state_file()
    info = read_state(path)
    if info is None:
        return f"no cluster is up (no state file at {path})"
    down = "python -m harness cluster down" + ("" if path == default_state_file() else f" --state-file {path}")
    running = find_processes(info)
    if info.status == "starting":
        return (
            f"a cluster recorded in {path} is starting, or its `cluster up` was interrupted "
            f"({len(running)} processes); `{down}` stops it"
        )
    if not running:
        return f"cluster at {info.address} is recorded in {path} but none of its processes run; run `{down}` to clear it"
    try:
        alive = count_alive(info, want=info.nodes, timeout_s=0.0, join_s=20.0)
    except HarnessError as exc:
        return f"cluster at {info.address}: not answering ({exc})"
    return f"cluster at {info.address}: {alive} of {info.nodes} nodes alive, {info.cpus_per_node:g} CPUs each\nstate file: {path}"


def probe_address(address: str, timeout_s: float = 5.0) -> None:
    """Raise HarnessError within `timeout_s` unless a TCP connect to HOST:PORT succeeds."""
    try:
        ray_connect.probe(address, timeout_s)
    except ray_connect.ConnectError as exc:
        hint = "" if str(exc).startswith("malformed") else f"; {UP_HINT} or check the address"
        raise HarnessError(f"{exc}{hint}") from None
