"""A one-machine Ray cluster for tests: its own user, its own sshd on 127.0.0.1, `ray` run as that user.

Why its own user: ``ray stop`` (in every start command) and ``ray down`` kill the Ray processes
of the user who runs them, so the test cluster and its client run as ``modaltune-ci``, whose
``ray stop`` cannot touch anyone else's Ray. Its ``TMPDIR`` (in its home) holds Ray's session
and current-cluster file, so a driver elsewhere on the machine never finds this cluster in
/tmp/ray. Everything here ends the processes it started by pid or process group, never by name.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
from typing_extensions import Self

USER = "modaltune-ci"
SSHD = Path("/usr/sbin/sshd")
VENV_BIN = Path(sys.executable).parent  # the venv running the tests; the cluster runs the same one


def missing_prerequisites() -> str | None:
    """Why the loopback cluster cannot run here, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "needs root: it creates the user modaltune-ci and runs its own sshd"
    if not SSHD.is_file():
        return f"needs Debian's openssh-server ({SSHD}); .ci/run installs it"
    for tool in ("rsync", "ssh", "ssh-keygen", "useradd", "setfacl"):
        if shutil.which(tool) is None:
            return f"needs {tool} (Debian's rsync, openssh-server and acl; .ci/run installs them)"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class User:
    """The cluster's account: it runs the Ray client (``ray up/submit/down``) and, over ssh, the nodes."""

    name: str
    uid: int
    gid: int
    home: Path

    @property
    def tmpdir(self) -> Path:
        return self.home / "t"  # short: Ray's socket paths under it must stay below 108 bytes

    def env(self) -> dict[str, str]:
        return {
            "HOME": str(self.home), "USER": self.name, "LOGNAME": self.name, "LANG": "C.UTF-8",
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "TMPDIR": str(self.tmpdir),
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def run(self, args: Sequence[str], *, cwd: Path, timeout: float) -> tuple[int, str]:
        """Run ``args`` as this user in a new process group; on overrun kill that group."""
        process = subprocess.Popen(
            list(args), cwd=cwd, env=self.env(), user=self.uid, group=self.gid, extra_groups=[],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            return 124, output + f"\n[killed after {timeout} s]"
        return process.returncode, output

    def can(self, test: str, path: Path) -> bool:
        """``test TEST PATH`` as this user, e.g. ``can("-r", file)``."""
        return self.run(["test", test, str(path)], cwd=Path("/"), timeout=10)[0] == 0

    def mkdir(self, relative: str, mode: int = 0o755) -> Path:
        path = self.home / relative
        path.mkdir(mode=mode, exist_ok=True)
        os.chown(path, self.uid, self.gid)
        path.chmod(mode)
        return path

    def write(self, relative: str, text: str, mode: int = 0o600) -> Path:
        """A file in the home folder (whose parent exists), owned by the user."""
        path = self.home / relative
        path.write_text(text, encoding="utf-8")
        os.chown(path, self.uid, self.gid)
        path.chmod(mode)
        return path

    def processes(self) -> list[psutil.Process]:
        """Every process this user runs (only this test starts any)."""
        return [p for p in psutil.process_iter(["uids", "name"]) if p.info["uids"] and p.info["uids"].real == self.uid]

    def end_processes(self) -> None:
        """SIGKILL, by pid, whatever this user still runs (e.g. ssh control masters after ``ray down``)."""
        for process in self.processes():
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


def ensure_user(name: str = USER) -> User:
    """The dedicated account, created on first use. Password ``*``: no password login, yet not
    "locked" (a ``!`` password makes sshd refuse even key logins when PAM is off)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", "--password", "*", name], check=True)
        entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


@contextmanager
def traversable(user: User, targets: Sequence[Path]) -> Iterator[None]:
    """Let ``user`` reach ``targets`` while the block runs: an ACL entry granting search (x), and
    nothing else, on each ancestor folder it cannot enter (e.g. /root above a pyenv interpreter
    that the venv links to), and read + search on a target folder it cannot list (a checkout in
    a private ``mktemp -d`` folder, as CI makes); afterwards each folder's ACL is as it was."""
    granted: dict[Path, bool] = {}  # folder -> had an extended ACL before

    def grant(folder: Path, permissions: str) -> None:
        getfacl = ["getfacl", "--skip-base", "--absolute-names", str(folder)]
        acl = subprocess.run(getfacl, capture_output=True, text=True, check=True)
        granted.setdefault(folder, bool(acl.stdout.strip()))
        subprocess.run(["setfacl", "-m", f"u:{user.name}:{permissions}", str(folder)], check=True)

    try:
        for target in targets:
            for folder in reversed(target.parents):
                if folder not in granted and not user.can("-x", folder):
                    grant(folder, "x")
            if target.is_dir() and not (user.can("-x", target) and user.can("-r", target)):
                grant(target, "rx")
        yield
    finally:
        for folder, extended in granted.items():
            restore = ["-x", f"u:{user.name}"] if extended else ["-b"]
            subprocess.run(["setfacl", *restore, str(folder)], check=False)


def reset_home(user: User, leftovers: Sequence[str]) -> None:
    """Remove what an earlier run left in the user's home, by name; keep the rest (.bashrc etc.)."""
    for name in leftovers:
        path = user.home / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    user.mkdir(user.tmpdir.name, 0o700)


def ssh_client(user: User, sshd_port: int) -> Path:
    """A fresh ed25519 key for ``user``, authorised for its own logins, and an ssh config that sends
    127.0.0.1 to our sshd's port (Ray's launcher has no port setting). Returns the private key."""
    ssh = user.mkdir(".ssh", 0o700)
    key = ssh / "id_modaltune_ci"
    for path in (key, key.with_suffix(".pub")):
        path.unlink(missing_ok=True)
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "modaltune-ci test", "-f", str(key)]
    code, output = user.run(keygen, cwd=user.home, timeout=30)
    assert code == 0, output
    user.write(".ssh/authorized_keys", key.with_suffix(".pub").read_text(encoding="utf-8"))
    user.write(".ssh/config", f"Host 127.0.0.1\n  Port {sshd_port}\n")
    return key


class Sshd:
    """An sshd of our own: 127.0.0.1 only, a port of its own, key logins for one user, its own config."""

    def __init__(self, directory: Path, user: User) -> None:
        self.directory = directory
        self.user = user
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        host_key = self.directory / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        config = self.directory / "sshd_config"
        config.write_text(
            "\n".join([
                f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", "PidFile none",
                f"AllowUsers {self.user.name}", "AuthenticationMethods publickey", "PubkeyAuthentication yes",
                "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin no",
                "UsePAM no", "X11Forwarding no", "PrintMotd no", "AuthorizedKeysFile .ssh/authorized_keys", "",
            ]),
            encoding="utf-8",
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
        log = (self.directory / "sshd.log").open("w")
        self.process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"sshd did not listen on 127.0.0.1:{self.port} within 15 s:\n{self.log()}")

    def log(self) -> str:
        return (self.directory / "sshd.log").read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        """Stop the sshd we started, and the per-connection children still in its process group."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
