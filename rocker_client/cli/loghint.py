"""Where rockerd's log is, for the end of an error line: only where the reader can look.

rockerd's pid comes from the socket (SO_PEERCRED of a connection to it); a socket that
systemd made and passed on answers with pid 1, and then the journal has rockerd's log.
Otherwise its cgroup says whether it runs as a systemd service, and else /proc/PID/fd/2
says where its stderr goes. A non-root user cannot read any of that (nor the journal of a
system service, as a rule), and the error it got already carries rockerd's reason: no hint.
"""

from __future__ import annotations

import os


def log_hint(socket_path: str) -> str:
    """"see ..." naming rockerd's log, or "" where there is nothing the caller could read."""
    if os.geteuid() != 0:
        return ""
    pid = _daemon_pid(socket_path)
    if pid is None:
        return ""
    if pid == 1:
        return "see `journalctl -u rockerd` (systemd started it)"
    unit = _service_unit(pid)
    if unit:
        return f"see `journalctl -u {unit}`"
    try:
        target = os.readlink(f"/proc/{pid}/fd/2")
    except OSError:
        return ""
    if target == "/dev/null":
        return "rockerd's stderr goes to /dev/null: restart it with its stderr sent to a file to see why"
    if target.startswith("/"):
        return f"see rockerd's stderr, {target}"
    return f"see rockerd's stderr ({target}, wherever the program that started rockerd (pid {pid}) reads it)"


def _daemon_pid(path: str) -> int | None:
    import socket  # here: only a failure's message asks (start time, issue 21)
    import struct

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(2.0)
        s.connect(path)
        pid, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return pid if pid > 0 else None
    except OSError:
        return None
    finally:
        s.close()


def _service_unit(pid: int) -> str:
    """The systemd service rockerd runs as ("" if none): the last part of its cgroup path."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in lines:
        name = line.rpartition("/")[2]
        if name.endswith(".service"):
            return name
    return ""


def with_hint(message: str, socket_path: str) -> str:
    """The message, and where to read more if the caller can."""
    hint = log_hint(socket_path)
    return f"{message}: {hint} for more" if hint else message
