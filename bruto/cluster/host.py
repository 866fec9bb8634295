"""This host's identity in the cluster: a random UUID kept in the shared directory.

The identity belongs to the shared directory, not to the machine: the claims
a host made stand for payments in *its* outbox, so a host whose directory is
wiped (tmpfs after a reboot) starts as a new host, and two stacks on one
machine (their own ``--shm-dir``) are two hosts.
"""

from __future__ import annotations

import os
import socket
import uuid

FILE_NAME = "host.id"


def host_id(shm_dir: str) -> uuid.UUID:
    """The UUID of the host whose shared directory this is, made by the first process that asks."""
    path = os.path.join(shm_dir, FILE_NAME)
    try:
        with open(path) as f:
            return uuid.UUID(f.read().strip())
    except FileNotFoundError:
        pass
    # Written whole under another name, then linked: a process racing us
    # either links first (we read its id) or finds ours complete.
    candidate = f"{path}.{os.getpid()}.tmp"
    with open(candidate, "w") as f:
        f.write(str(uuid.uuid4()) + "\n")
    try:
        os.link(candidate, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(candidate)
    with open(path) as f:
        return uuid.UUID(f.read().strip())


def host_label(shm_dir: str) -> str:
    """What an operator reads in ``bruto_hosts.label``: the machine and the directory."""
    return f"{socket.gethostname()}:{os.path.abspath(shm_dir)}"
