"""The stack's processes: started detached (own session, output to a log file), found again from
another process by pid and start time, stopped as a process group. Linux only (/proc)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class TeamStackError(RuntimeError):
    """A service of the team stack could not start, stop or answer."""


# Popen objects of the processes this process started: kept so that they are not garbage collected
# while running (a ResourceWarning) and so that an exited child is reaped, not left a zombie that
# /proc still lists.
_children: dict[int, subprocess.Popen] = {}


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]; None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with the pid, it tells a reused pid apart."""
    stat = _stat(pid)
    return int(stat[19]) if stat else None


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]


def alive(pid: int | None, ticks: int | None = None) -> bool:
    """Whether process ``pid`` (started at ``ticks``, if given) runs: not gone, not a zombie, not a reused pid."""
    if not pid:
        return False
    _reap(pid)
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and (ticks is None or int(stat[19]) == ticks)


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for pid in _all_pids():
        stat = _stat(pid)
        if stat and stat[0] != "Z" and int(stat[2]) == pgid:
            members.append(pid)
    return members


def descendants(pid: int) -> list[int]:
    """``pid`` and its live descendants (PostgreSQL's postmaster and its backends)."""
    children: dict[int, list[int]] = {}
    for other in _all_pids():
        stat = _stat(other)
        if stat and stat[0] != "Z":
            children.setdefault(int(stat[1]), []).append(other)
    found, todo = [], [pid] if alive(pid) else []
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


# What a service inherits from the shell that starts it: nothing else, so that no secret of the caller's
# (the admin's password in DDPMLAB_TEAM_ADMIN_PASSWORD, cloud keys, tokens) reaches a server process.
INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
             "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")  # where to find CA certificates: no secret


def as_root() -> bool:
    return os.geteuid() == 0


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of this process's environment (INHERITED and the LC_* locale), plus ``extra``."""
    kept = {k: v for k, v in os.environ.items() if k in INHERITED or k.startswith("LC_")}
    return kept | dict(extra or {})


def spawn(
    command: Sequence[str], log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None, account=None
) -> tuple[int, int]:
    """Start ``command`` in a new session (so a Ctrl-C in the terminal that started it does not
    reach it, and it can be stopped as a group), stdout and stderr appended to ``log``. ``env``:
    the whole environment (default :func:`child_env`). ``account``: a
    :class:`~ddpmlab.team.service_account.Account` to run as (its uid and primary group, no
    other group), when this process is root. Returns (pid, start ticks)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    # umask 077: whatever the service writes (SeaweedFS's filer keeps people's S3 secrets in its
    # leveldb) is its owner's alone, even where a folder above is open to others. So is the log.
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {Path(command[0]).name}\n".encode())
        out.flush()
        process = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
            env=dict(env) if env is not None else child_env(), umask=0o077, **run_as(account),
        )  # fmt: skip
    _children[process.pid] = process
    return process.pid, start_ticks(process.pid) or 0


def stop_group(pid: int | None, ticks: int | None, timeout_s: float = 30) -> None:
    """SIGTERM the process group that ``pid`` leads (its workers included), SIGKILL what is left after ``timeout_s``."""
    if not pid:
        return
    now = start_ticks(pid)
    if now is not None and ticks is not None and now != ticks:
        return  # the pid belongs to another process now; ours is gone (a live group would have kept its id)
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _reap(pid)
            if not group_members(pid):
                return
            time.sleep(0.1)
    raise TeamStackError(f"process group {pid} still runs after SIGKILL")


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, log: Path, pid: int | None = None, ticks: int | None = None
) -> None:
    """Poll ``check`` until it is true; fail with the tail of ``log`` when ``timeout_s`` passes or process ``pid`` exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if pid is not None and not alive(pid, ticks):
            raise TeamStackError(f"{what} exited while starting; the end of {log}:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise TeamStackError(f"{what} did not answer within {timeout_s:.0f} s; the end of {log}:\n{log_tail(log)}")
        time.sleep(0.5)


def log_tail(log: Path, lines: int = 40) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``port``: like servers, SO_REUSEADDR, so that connections of
    a stopped one lingering in TIME_WAIT do not count."""
    with socket.socket(_family(host)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str, avoid: set[int] | None = None, grpc_offset: int | None = None) -> int:
    """A port on ``host`` that nothing listens on, not in ``avoid``; with ``grpc_offset``, port +
    offset must be free too (SeaweedFS derives some gRPC ports that way, whatever its flags say)."""
    avoid = avoid or set()
    for _ in range(200):
        with socket.socket(_family(host)) as s:
            try:
                s.bind((host, 0))
            except OSError as e:
                raise TeamStackError(f"cannot listen on {host!r} ({e.strerror}): is it an address of this machine?") from None
            port = s.getsockname()[1]
        pair = [port] if grpc_offset is None else [port, port + grpc_offset]
        if pair[-1] <= 65535 and not avoid.intersection(pair) and all(port_free(host, p) for p in pair[1:]):
            avoid.update(pair)
            return port
    raise TeamStackError(f"found no free port on {host}")


def run_as(account) -> dict:
    """subprocess keyword arguments that run a child as ``account`` (None: as this process's user)."""
    return {} if account is None else {"user": account.uid, "group": account.gid, "extra_groups": []}


def write_private(path: Path, text: str, owner=None) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), atomically. ``owner``: an
    :class:`~ddpmlab.team.service_account.Account` to own it (default: this process's user)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # a leftover tmp file may have had other bits
    if owner is not None:
        os.chown(tmp, owner.uid, owner.gid)
    os.replace(tmp, path)
