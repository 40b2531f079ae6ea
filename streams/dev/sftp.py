"""The project's own SFTP server for batch transfer: OpenSSH's sshd with a private config.

``streams dev sftp up`` runs ``/usr/sbin/sshd -D -e -f <home>/sftp/sshd_config``
in the foreground (detached from the terminal, pid in ``<home>/sftp/sshd.pid``):
key authentication only, SFTP only (``internal-sftp``, no shell, no
forwarding), listening on 127.0.0.1. Keys are made on first use under
``<home>/sftp/``: the server's host key, a client key (authorised for the
current user) and a ``known_hosts`` file naming the host key, so clients check
the server like any other.

**Jail.** As root, the session is locked into a folder with ``ChrootDirectory``.
sshd requires every component of that path to be owned by root and writable by
no one else; when the project folder qualifies the jail is ``<home>/sftp/jail``,
otherwise (a checkout under ``/tmp``) ``/var/lib/streams-sftp/<hash of home>``.
Not as root, sshd cannot chroot: the session starts in the folder instead
(``internal-sftp -d``), which is not a jail (``status`` says so).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

from streams.dev.process import ServiceError, pid_alive, port_open, read_pid, spawn, tail, terminate

SSHD = os.environ.get("STREAMS_SSHD", "/usr/sbin/sshd")
READY_MARKER = "Server listening"


def _root_owned_chain(path: Path) -> bool:
    """True if sshd would accept ``path`` as ChrootDirectory (every component root-owned, not group/other writable)."""
    for part in [path, *path.parents]:
        try:
            st = part.stat()
        except FileNotFoundError:
            continue  # created later, by root, 0755
        if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


class LocalSftp:
    """One local sshd serving SFTP: ``up``, ``down``, ``status``."""

    def __init__(self, root: Path, port: int, *, user: str | None = None) -> None:
        self.root = root.resolve()
        self.port = port
        self.user = user or getpass.getuser()
        self.config = self.root / "sshd_config"
        self.log_file = self.root / "sshd.log"
        self.pid_file = self.root / "sshd.pid"
        self.host_key = self.root / "host_ed25519"
        self.client_key = self.root / "client_ed25519"
        self.known_hosts = self.root / "known_hosts"
        self.authorized_keys = self.root / "authorized_keys"
        self.chroot = os.geteuid() == 0

    @classmethod
    def from_settings(cls, settings) -> "LocalSftp":
        return cls(settings.home_path / "sftp", settings.local_sftp_port)

    @property
    def files(self) -> Path:
        """The folder clients see as ``/`` (the jail), on this machine's disk."""
        local = self.root / "jail"
        if not self.chroot or _root_owned_chain(local):
            return local
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return Path("/var/lib/streams-sftp") / digest

    def client_env(self, remote_dir: str = "/") -> dict[str, str]:
        """The ``STREAMS_SFTP_*`` settings of a client of this server."""
        return {"STREAMS_SFTP_HOST": "127.0.0.1", "STREAMS_SFTP_PORT": str(self.port),
                "STREAMS_SFTP_USER": self.user, "STREAMS_SFTP_KEY_FILE": str(self.client_key),
                "STREAMS_SFTP_KNOWN_HOSTS": str(self.known_hosts), "STREAMS_SFTP_REMOTE_DIR": remote_dir}

    # --- set-up -------------------------------------------------------------------
    def _keys(self) -> None:
        from streams.batch.remote import load_asyncssh

        asyncssh = load_asyncssh()
        self.root.mkdir(parents=True, exist_ok=True)
        for path in (self.host_key, self.client_key):
            if not path.exists():
                key = asyncssh.generate_private_key("ssh-ed25519")
                key.write_private_key(str(path))
                key.write_public_key(str(path) + ".pub")
                path.chmod(0o600)
        host_pub = Path(str(self.host_key) + ".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.authorized_keys.write_text(Path(str(self.client_key) + ".pub").read_text())

    def _write_config(self) -> None:
        files = self.files
        files.mkdir(parents=True, exist_ok=True)
        if self.chroot:
            files.chmod(0o755)
        jail = (f"ChrootDirectory {files}\nForceCommand internal-sftp" if self.chroot
                else f"ForceCommand internal-sftp -d {files}")
        self.config.write_text(f"""# written by streams (streams/dev/sftp.py); rewritten on every start
Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile none
AuthorizedKeysFile {self.authorized_keys}
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
AllowUsers {self.user}
Subsystem sftp internal-sftp
{jail}
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
LogLevel INFO
""")

    # --- lifecycle ----------------------------------------------------------------
    def running(self) -> bool:
        return pid_alive(read_pid(self.pid_file), "sshd")

    def status(self) -> dict:
        return {"running": self.running(), "pid": read_pid(self.pid_file), "host": "127.0.0.1", "port": self.port,
                "user": self.user, "files": str(self.files), "jailed": self.chroot,
                "key_file": str(self.client_key), "known_hosts": str(self.known_hosts)}

    def up(self, timeout: float = 20.0) -> float:
        """Start sshd (no-op if it runs); returns the seconds it took (0 if it was running)."""
        if self.running():
            return 0.0
        if not Path(SSHD).exists():
            raise ServiceError(f"{SSHD} not found: install Debian's openssh-server "
                               "(make test installs it with scripts/ensure-deb.sh when run as root)")
        if port_open("127.0.0.1", self.port):
            raise ServiceError(f"port {self.port} is taken by another process (STREAMS_LOCAL_SFTP_PORT)")
        started = time.monotonic()
        self._keys()
        self._write_config()
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation folder
        check = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode:
            raise ServiceError(f"sshd refused its config {self.config}: {check.stderr.strip()}")
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        pid = spawn([SSHD, "-D", "-e", "-f", str(self.config)], self.log_file, self.pid_file)
        while time.monotonic() - started < timeout:
            with open(self.log_file, "rb") as fh:
                fh.seek(offset)
                if READY_MARKER.encode() in fh.read() and port_open("127.0.0.1", self.port):
                    return time.monotonic() - started
            if not pid_alive(pid):
                raise ServiceError(f"sshd exited:\n{tail(self.log_file)}")
            time.sleep(0.05)
        raise ServiceError(f"sshd not listening after {timeout:.0f}s:\n{tail(self.log_file)}")

    def down(self) -> bool:
        pid = read_pid(self.pid_file)
        stopped = pid is not None and terminate(pid, "sshd", timeout=10)
        self.pid_file.unlink(missing_ok=True)
        return stopped

    def remove_files(self) -> None:
        """Delete the served folder (tests)."""
        shutil.rmtree(self.files, ignore_errors=True)
