"""The manifest: what a transferred file holds, uploaded after the file itself.

A file is complete only when its manifest is on the server: the exporter
uploads the data (``<file>.part``, renamed), then ``<file>.manifest.json``; the
importer takes only files whose manifest is present and whose size, sha256
and row count match it. A truncated or replaced upload therefore never
passes as a whole file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streams.batch.formats import FormatOptions

SUFFIX = ".manifest.json"
VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """Everything an importer needs to trust and read a file."""

    file: str
    format: str
    columns: list[str]
    rows: int
    size: int
    sha256: str
    source: str
    watermark_column: str | None = None
    #: exclusive lower bound and inclusive upper bound of the watermark column
    watermark_from: str | None = None
    watermark_to: str | None = None
    delimiter: str = ","
    quoting: str = "minimal"
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    version: int = VERSION

    @property
    def name(self) -> str:
        """The manifest's own file name."""
        return self.file + SUFFIX

    @property
    def options(self) -> FormatOptions:
        return FormatOptions(self.format, self.delimiter, self.quoting)

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Manifest":
        """Parse a manifest; ``ValueError`` saying what is wrong."""
        try:
            raw: Any = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"manifest is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError("manifest is not a JSON object")
        missing = [k for k in ("file", "format", "columns", "rows", "size", "sha256", "source") if k not in raw]
        if missing:
            raise ValueError(f"manifest lacks {', '.join(missing)}")
        if raw.get("version", VERSION) != VERSION:
            raise ValueError(f"manifest version {raw.get('version')} is not {VERSION}")
        known = set(cls.__dataclass_fields__)
        manifest = cls(**{k: v for k, v in raw.items() if k in known})
        manifest.options  # noqa: B018 - validates format, delimiter, quoting
        return manifest


def file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a local file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
