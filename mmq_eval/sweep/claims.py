"""Claims: which sweep process is evaluating which configuration of a results folder.

Before evaluating a configuration a sweep writes ``OUT/claims/<config_id>.json`` (pid, host,
SLURM job, time), under a file lock, unless a live claim is there; it removes the claim once the
result is stored. So sweeps sharing one folder split the work instead of repeating it. A claim
is stale, and is taken over, when its process is gone: same host and the pid no longer runs,
an earlier run of the same SLURM job (a requeued task finding its own claim), or no heartbeat for
``STALE_AFTER_S`` (a holder touches its claims every ``HEARTBEAT_S``), which covers other hosts.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


@dataclass(frozen=True)
class Claim:
    """Who holds a configuration."""

    pid: int
    host: str
    job: str | None  # SLURM "jobid#restart" when run by SLURM
    since: str

    def describe(self) -> str:
        """``pid P on host H`` (plus the SLURM job)."""
        job = f", SLURM job {self.job.split('#')[0]}" if self.job else ""
        return f"pid {self.pid} on host {self.host}{job}, since {self.since}"


def _slurm_job() -> str | None:
    job = os.environ.get("SLURM_JOB_ID")
    return f"{job}#{os.environ.get('SLURM_RESTART_COUNT', '0')}" if job else None


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Claims:
    """This process's claims in one results folder; use as a context manager (heartbeat thread)."""

    def __init__(self, out_dir: str | os.PathLike):
        self.folder = Path(out_dir) / "claims"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.folder / ".lock"))
        self.me = Claim(os.getpid(), socket.gethostname(), _slurm_job(), "")
        self._held: set[str] = set()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="sweep-claims", daemon=True)

    def __enter__(self) -> Claims:
        self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._beat.join()
        for config_id in list(self._held):
            self.release(config_id)

    def path(self, config_id: str) -> Path:
        """The claim file of ``config_id``."""
        return self.folder / f"{config_id}.json"

    def _read(self, path: Path) -> Claim | None:
        try:
            data = json.loads(path.read_text())
            return Claim(int(data["pid"]), str(data["host"]), data.get("job"), str(data.get("since", "")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):  # unreadable: treated as stale
            return Claim(-1, "", None, "")

    def _stale(self, claim: Claim, path: Path) -> bool:
        if claim.pid < 0:
            return True
        if claim.job and self.me.job and claim.job != self.me.job \
                and claim.job.split("#")[0] == self.me.job.split("#")[0]:
            return True
        if claim.host == self.me.host and not _pid_running(claim.pid):
            return True
        try:
            return time.time() - path.stat().st_mtime > STALE_AFTER_S
        except FileNotFoundError:
            return True

    def claim(self, config_id: str) -> Claim | None:
        """Claim ``config_id`` for this process: None when it is now ours, else the live claim of
        another process (a stale one is taken over)."""
        path = self.path(config_id)
        with self._lock:
            held = self._read(path)
            if held is not None and (held.pid, held.host) != (self.me.pid, self.me.host):
                if not self._stale(held, path):
                    return held
                warnings.warn(f"configuration {config_id}: taking over the stale claim of "
                              f"{held.describe() if held.pid >= 0 else 'an unreadable claim file'} ({path})",
                              stacklevel=2)
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            tmp = path.with_suffix(f".tmp{self.me.pid}")
            tmp.write_text(json.dumps({"pid": self.me.pid, "host": self.me.host, "job": self.me.job, "since": since}))
            os.replace(tmp, path)
            self._held.add(config_id)
        return None

    def release(self, config_id: str) -> None:
        """Drop this process's claim of ``config_id`` (after its result is stored, or on failure)."""
        path = self.path(config_id)
        with self._lock:
            held = self._read(path)
            if held is not None and (held.pid, held.host) == (self.me.pid, self.me.host):
                path.unlink(missing_ok=True)
            self._held.discard(config_id)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            for config_id in list(self._held):
                try:
                    os.utime(self.path(config_id))
                except FileNotFoundError:
                    pass
