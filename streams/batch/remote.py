"""The SFTP side of batch transfer (asyncssh): connect with host-key checking, upload atomically, list, move.

Connection settings are ``STREAMS_SFTP_*``; unset, the local server
(``streams dev sftp up``) with its own key and ``known_hosts``. Every failure to
reach or use the server becomes a :class:`TransferError` naming the server and
what failed; nothing is half-done on the server by an upload: data goes to
``<name>.part`` and is renamed in one step (``posix-rename``) once complete.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import posixpath
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from streams.errors import StreamsError
from streams.settings import Settings

PART_SUFFIX = ".part"


class TransferError(StreamsError):
    """The SFTP server could not be reached or refused an operation."""


def load_asyncssh() -> Any:
    """The ``asyncssh`` module, imported without the warnings its import raises in ``cryptography``
    ("DSA is deprecated ...", one per type hint naming a DSA class): they concern DSA keys, which
    nothing here uses, and would otherwise reach the user of every command."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="DSA is deprecated", category=UserWarning)
        import asyncssh
    return asyncssh


def connection_options(settings: Settings) -> dict[str, Any]:
    """asyncssh.connect keyword arguments from the settings."""
    if settings.uses_local_sftp:
        local = settings.home_path / "sftp"
        host, port = "127.0.0.1", settings.local_sftp_port
        key: Path | None = settings.sftp_key_file or local / "client_ed25519"
        known_hosts: Path | None = settings.sftp_known_hosts or local / "known_hosts"
    else:
        host, port = str(settings.sftp_host), settings.sftp_port
        key, known_hosts = settings.sftp_key_file, settings.sftp_known_hosts
    options: dict[str, Any] = {"host": host, "port": port, "username": settings.sftp_user or getpass.getuser(),
                               "connect_timeout": 10, "agent_path": None}
    if key is not None:
        options["client_keys"] = [str(key)]
    if settings.sftp_password is not None:
        options["password"] = settings.sftp_password.get_secret_value()
    if settings.sftp_insecure_no_host_check:
        options["known_hosts"] = None
    elif known_hosts is not None:
        options["known_hosts"] = str(known_hosts)
    # else asyncssh reads ~/.ssh/known_hosts
    return options


def where(settings: Settings) -> str:
    o = connection_options(settings)
    return f"sftp://{o['username']}@{o['host']}:{o['port']}{settings.sftp_remote_dir}"


class Remote:
    """An open SFTP session rooted at ``STREAMS_SFTP_REMOTE_DIR``."""

    def __init__(self, sftp: Any, base: str, where: str) -> None:
        self.sftp = sftp
        self.base = base
        self.where = where

    def path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

    async def ensure_dir(self, *parts: str) -> str:
        path = self.path(*parts)
        if not await self.sftp.isdir(path):
            await self.sftp.makedirs(path, exist_ok=True)
        return path

    async def upload(self, local: Path, name: str, *, subdir: str = "") -> str:
        """Put ``local`` at ``name`` atomically: ``<name>.part`` first, then one rename.
        An existing ``name`` is replaced (a re-export of the same rows)."""
        folder = await self.ensure_dir(subdir) if subdir else self.base
        final = posixpath.join(folder, name)
        part = final + PART_SUFFIX
        await self.sftp.put(str(local), part)
        await self.sftp.posix_rename(part, final)
        return final

    async def names(self, subdir: str = "") -> list[str]:
        """File names in the folder (no sub-folders, no ``.part`` uploads in progress)."""
        folder = self.path(subdir) if subdir else self.base
        out = []
        for entry in await self.sftp.readdir(folder):
            if entry.filename in (".", "..") or entry.filename.endswith(PART_SUFFIX):
                continue
            if entry.attrs.type == 1:  # SSH_FILEXFER_TYPE_REGULAR
                out.append(entry.filename)
        return sorted(out)

    async def read(self, name: str) -> bytes:
        async with self.sftp.open(self.path(name), "rb") as fh:
            return await fh.read()

    async def download(self, name: str, local: Path) -> None:
        await self.sftp.get(self.path(name), str(local))

    async def write(self, name: str, data: bytes, *, subdir: str = "") -> str:
        """Write a small file atomically (a manifest, a report)."""
        folder = await self.ensure_dir(subdir) if subdir else self.base
        final = posixpath.join(folder, name)
        async with self.sftp.open(final + PART_SUFFIX, "wb") as fh:
            await fh.write(data)
        await self.sftp.posix_rename(final + PART_SUFFIX, final)
        return final

    async def move(self, name: str, subdir: str) -> None:
        """Move ``name`` into ``subdir`` (replacing a file of that name there)."""
        await self.ensure_dir(subdir)
        await self.sftp.posix_rename(self.path(name), self.path(subdir, name))

    async def exists(self, name: str) -> bool:
        return bool(await self.sftp.exists(self.path(name)))


@contextlib.asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[Remote]:
    """An SFTP session; raises :class:`TransferError` saying which server and why it failed."""
    asyncssh = load_asyncssh()
    logging.getLogger("asyncssh").setLevel(logging.WARNING)  # its INFO lines are per connection and channel
    options = connection_options(settings)
    target = where(settings)
    try:
        conn = await asyncssh.connect(**options)
    except (OSError, asyncssh.Error) as exc:
        raise TransferError(f"cannot connect to {target}: {type(exc).__name__}: {exc}") from None
    try:
        async with conn, conn.start_sftp_client() as sftp:
            base = settings.sftp_remote_dir or "/"
            if not await sftp.isdir(base):
                await sftp.makedirs(base, exist_ok=True)
            yield Remote(sftp, base, target)
    except asyncssh.SFTPError as exc:
        raise TransferError(f"{target}: SFTP operation failed: {exc.reason or exc}") from None
    except (OSError, asyncssh.Error) as exc:
        raise TransferError(f"{target}: connection lost: {type(exc).__name__}: {exc}") from None
