"""Where a `ray_cluster` backend connects, and with which credentials.

The address comes from the case's options, else `RAY_ADDRESS`. The token comes
from the cluster `python -m harness cluster up` recorded, when the address is
that cluster's: the state file named by $PPO_HARNESS_CLUSTER_STATE (default
/tmp/ppo-harness-cluster.json) holds the path of its token file. For any other
cluster the user's own `RAY_AUTH_*` variables apply, as Ray documents them.

This module imports neither `ray` nor the harness: the backend asks it before
it touches Ray, and the harness uses the same names (the state file variable,
a client's environment) from here, so each is defined once.

Ray 2.60 reads `RAY_AUTH_MODE` once, when `ray` is imported, and the token
when it first connects; it has no public call to change either later. A
process that is to join a token-authenticated cluster should therefore have
these variables in its environment before `import ray`: `python -m harness
run` exports them before it starts its case processes (`export_for_children`).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_ENV_VAR = "PPO_HARNESS_CLUSTER_STATE"
"""Environment variable naming the state file of the cluster `harness cluster up` started."""
DEFAULT_STATE_FILE = "/tmp/ppo-harness-cluster.json"

# Precedence in Ray 2.60 (docs.ray.io, "Token Authentication"): RAY_AUTH_TOKEN over
# RAY_AUTH_TOKEN_PATH over ~/.ray/auth_token, so a token in the user's shell must go.
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")


class ConnectError(Exception):
    """The cluster cannot be used: no address, a malformed one, or nothing answering at it. One line."""


@dataclass(frozen=True)
class Connection:
    """How to join one cluster."""

    address: str
    """GCS address, HOST:PORT."""
    env: dict[str, str | None]
    """Variables the joining process needs (None: must be unset)."""
    token_source: str
    """Where the token comes from, for messages: the state file, or the user's environment."""

    def missing_from(self, environ: Mapping[str, str]) -> dict[str, str | None]:
        """The part of `env` that `environ` does not already hold."""
        return {k: v for k, v in self.env.items() if environ.get(k) != v}


def client_env(address: str, token_path: str) -> dict[str, str]:
    """Environment variables a client process needs to join a cluster `harness cluster up` started.

    `RAY_AUTH_TOKEN`, if set in the client's environment, takes precedence over
    `RAY_AUTH_TOKEN_PATH` and must be unset.
    """
    return {
        "RAY_ADDRESS": address,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": token_path,
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def state_file(environ: Mapping[str, str] = os.environ) -> Path:
    """The state file of the cluster `harness cluster up` started: $PPO_HARNESS_CLUSTER_STATE or the default."""
    return Path(environ.get(STATE_ENV_VAR) or DEFAULT_STATE_FILE)


def recorded_token_path(address: str, path: Path) -> str | None:
    """The token file of the cluster recorded in `path` if that cluster is at `address`, else None.

    Reads only the three keys it needs; a missing or unreadable file is no
    recorded cluster (`harness cluster status` reports an unreadable one).
    """
    try:
        data = json.loads(Path(path).read_text())
        addresses = {data.get("address"), data.get("advertised_address")} - {"", None}
        token_path = data.get("token_path")
    except (OSError, ValueError, AttributeError):
        return None
    return token_path if address.strip() in addresses and isinstance(token_path, str) and token_path else None


def resolve(options: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> Connection:
    """The address (options' `address`, else RAY_ADDRESS) and the credentials to join it with."""
    address = str(options.get("address") or environ.get("RAY_ADDRESS") or "").strip()
    if not address:
        raise ConnectError("ray_cluster needs an address: set it in the suite, RAY_ADDRESS, or --address")
    split_address(address)
    recorded = state_file(environ)
    token_path = recorded_token_path(address, recorded)
    if token_path is None:
        # Someone else's cluster: its credentials are the user's RAY_AUTH_* variables, untouched.
        return Connection(address, {"RAY_USAGE_STATS_ENABLED": "0"}, "the environment's RAY_AUTH_* variables")
    env: dict[str, str | None] = {k: v for k, v in client_env(address, token_path).items() if k != "RAY_ADDRESS"}
    return Connection(address, env | {"RAY_AUTH_TOKEN": None}, f"the cluster recorded in {recorded}")


def apply(env: Mapping[str, str | None], environ: MutableMapping[str, str] = os.environ) -> dict[str, str | None]:
    """Set (or, for None, unset) `env` in `environ`; returns the previous values for `restore`."""
    previous = {key: environ.get(key) for key in env}
    for key, value in env.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return previous


def restore(previous: Mapping[str, str | None], environ: MutableMapping[str, str] = os.environ) -> None:
    """Undo `apply`."""
    apply(previous, environ)


def export_for_children(addresses: list[str], environ: MutableMapping[str, str] = os.environ) -> Connection | None:
    """Put the credentials of the one cluster the `addresses` name into `environ`, for processes started later.

    Those processes then import Ray with the right `RAY_AUTH_MODE` and need no
    change of Ray's settings after import. With several distinct clusters
    nothing is exported: each case process sets its own before connecting.
    """
    if len(set(addresses)) != 1:
        return None
    connection = resolve({"address": addresses[0]}, environ)
    apply(connection.env, environ)
    return connection


def split_address(address: str) -> tuple[str, int]:
    """HOST and PORT of "HOST:PORT" (or "[v6]:PORT"); ConnectError if malformed."""
    host, sep, port_text = address.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConnectError(f"malformed Ray cluster address {address!r}: expected HOST:PORT such as 127.0.0.1:6379")
    return host, int(port_text)


def probe(address: str, timeout_s: float = 5.0) -> None:
    """Raise ConnectError within `timeout_s` unless a TCP connect to HOST:PORT succeeds."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except ConnectionRefusedError:
        why = "connection refused"
    except TimeoutError:
        why = f"no answer within {timeout_s:g} s"
    except socket.gaierror:
        why = f"unknown host {host!r}"
    except OSError as exc:
        why = exc.strerror or str(exc)
    raise ConnectError(f"cannot reach a Ray cluster at {address} ({why})")
