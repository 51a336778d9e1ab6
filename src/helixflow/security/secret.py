"""The server secret: one value every replica shares, from which each use derives its own key.

Where it comes from, first found wins:

1. the environment variable named by ``security.secret_env`` (``HELIXFLOW_SECRET``);
2. the file named by ``security.secret_file`` (a mounted secret, say);
3. ``<data_dir>/secret``, created on first start with 32 random bytes (URL-safe base64 text,
   mode 0600, written atomically and never overwritten). An existing file that its group or
   others may read is refused: the message says how to ``chmod`` it.

The secret is never used directly: :func:`derive` turns it into one key per purpose (HKDF),
so that the key hashing API keys is not the one encrypting signing keys.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from helixflow.config import Settings
from helixflow.errors import ConfigurationError

log = logging.getLogger(__name__)

SECRET_FILE_NAME = "secret"
GENERATED_BYTES = 32
MIN_SECRET_BYTES = 16
"""A shorter secret is refused: it could be guessed, and every key hash with it."""
DERIVED_BYTES = 32
_INFO_PREFIX = b"helixflow/"


def load_secret(settings: Settings, environ: Mapping[str, str] | None = None) -> bytes:
    """The server secret as bytes (see the module's docstring for where it comes from).

    ``environ``: where to read ``security.secret_env`` (default ``os.environ``; this is the
    one read of the environment outside the settings tree, as the variable's value must not
    be kept in the settings object).
    """
    security = settings.security
    env = os.environ if environ is None else environ
    if security.secret_env:
        value = env.get(security.secret_env, "").strip()
        if value:
            return _checked(value.encode(), f"the environment variable {security.secret_env}")
    if security.secret_file is not None:
        return _read_configured(security.secret_file)
    return _read_or_create(settings.data_dir / SECRET_FILE_NAME)


def derive(secret: bytes, purpose: str) -> bytes:
    """A 32-byte key for ``purpose`` (``api-key-hash``, ``signing-key-encryption``...):
    HKDF-SHA256 of the secret, so that one use's key says nothing of another's."""
    if not purpose:
        raise ValueError("a derived key needs a purpose")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=DERIVED_BYTES,
        salt=None,
        info=_INFO_PREFIX + purpose.encode(),
    )
    return hkdf.derive(secret)


def _checked(secret: bytes, source: str) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"the server secret from {source} is {len(secret)} bytes long; use at least "
            f"{MIN_SECRET_BYTES} random bytes (e.g. `openssl rand -base64 32`)."
        )
    return secret


def _read_text(path: Path, source: str) -> bytes:
    try:
        text = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the server secret from {source}: {exc}") from exc
    return _checked(text, source)


def _read_configured(path: Path) -> bytes:
    source = f"security.secret_file ({path})"
    with contextlib.suppress(OSError):
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            log.warning("the server secret file %s may be read by other users; chmod 600 it", path)
    return _read_text(path, source)


def _read_or_create(path: Path) -> bytes:
    try:
        info = path.stat()
    except FileNotFoundError:
        _create(path)
        info = path.stat()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the server secret {path}: {exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ConfigurationError(f"the server secret {path} is not a regular file.")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigurationError(
            f"the server secret {path} has mode {mode:04o}: other users may read it. "
            f"Run `chmod 600 {path}` and start again."
        )
    return _read_text(path, str(path))


def _create(path: Path) -> None:
    """Write a new secret atomically: a private temporary file, fsynced, then hard-linked to
    its name, which fails rather than replacing a secret another process created first."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create the data directory {path.parent}: {exc}") from exc
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    value = secrets.token_urlsafe(GENERATED_BYTES).encode() + b"\n"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, value)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return  # another process was first: its secret is the one
        _fsync_directory(path.parent)
        log.info("created the server secret %s (share it between replicas)", path)
    except OSError as exc:
        raise ConfigurationError(f"cannot create the server secret {path}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
