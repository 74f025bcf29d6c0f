"""The state file: what `cluster up` started, written before it starts anything.

`cluster up` records the temp dirs, client-server port and token file it is
about to use, with status "starting", before the first `ray start`; it adds
the address once the head is up and the processes once every node is alive
(status "up"). However `up` ends, `cluster down` can therefore find what it
started, by the temp dirs and the port the record names (see lifecycle.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from backends import ray_connect
from harness.errors import HarnessError

STATE_ENV_VAR = ray_connect.STATE_ENV_VAR
DEFAULT_STATE_FILE = ray_connect.DEFAULT_STATE_FILE
STATE_VERSION = 2
"""2 added status, client_server_port and owner; a version-1 file reads as an "up" cluster."""


@dataclass(frozen=True)
class ClusterInfo:
    """A local Ray cluster started by `cluster up`, as recorded in the state file."""

    address: str
    """GCS address clients connect to, "127.0.0.1:PORT"; "" until the head is up."""
    nodes: int
    """Number of Ray nodes (head included)."""
    cpus_per_node: float
    """CPUs each node advertises to the scheduler."""
    token_path: str
    """File holding this cluster's random auth token (mode 0600)."""
    temp_dirs: tuple[str, ...]
    """One short `--temp-dir` per node, head first."""
    pids: tuple[int, ...] = ()
    """Long-running processes of the cluster found after start (or stopped by down)."""
    advertised_address: str = ""
    """The GCS address Ray itself advertises (the machine's routable IP, same port)."""
    status: Literal["starting", "up"] = "up"
    """"starting" from before the first `ray start` until every node is alive."""
    client_server_port: int = 0
    """The Ray client server's port (the only process of the head that names neither temp dir)."""
    owner_pid: int = 0
    """The `cluster up` process while status is "starting"."""
    owner_create_time: float = 0.0
    """Its start time, so that a reused pid is not taken for it."""

    @property
    def port(self) -> int:
        """The GCS port."""
        return int(self.address.rpartition(":")[2])

    @property
    def env(self) -> dict[str, str]:
        """Environment variables a client process needs to join this cluster (RAY_AUTH_TOKEN unset)."""
        return ray_connect.client_env(self.address, self.token_path)

    def to_json(self) -> str:
        """Serialise to JSON text, with a schema version."""
        return json.dumps({"version": STATE_VERSION, **dataclasses.asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterInfo:
        """Parse JSON written by `to_json` (this version or 1); ValueError/KeyError/TypeError if it is not."""
        data = json.loads(text)
        if data.pop("version", None) not in (1, STATE_VERSION):
            raise ValueError(f"state file version is not {STATE_VERSION}")
        data["temp_dirs"] = tuple(data["temp_dirs"])
        data["pids"] = tuple(data["pids"])
        if data.get("status", "up") not in ("starting", "up"):
            raise ValueError(f"unknown status {data['status']!r}")
        return cls(**data)


def default_state_file() -> Path:
    """Where `cluster up` records the cluster: $PPO_HARNESS_CLUSTER_STATE or /tmp/ppo-harness-cluster.json."""
    return ray_connect.state_file(os.environ)


def read_state(state_file: Path | None = None) -> ClusterInfo | None:
    """The cluster recorded in `state_file`, or None if there is no such file."""
    path = Path(state_file) if state_file else default_state_file()
    try:
        return ClusterInfo.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HarnessError(f"cluster state file {path} is unreadable ({exc}); delete it") from None


def write_state(path: Path, info: ClusterInfo) -> None:
    """Record `info` atomically: write a sibling, then rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(info.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
