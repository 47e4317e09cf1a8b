"""Config files on disk: reading one (or an included or hba file) with one clear error line,
resolving an include's relative path as odyssey does, and writing a config file back (the
dashboard's editor, the control API's `config_apply`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pooler.config.errors import ConfigError, Diagnostic, Pos


def read_text_file(path: str, what: str = "config file") -> str:
    """Read a UTF-8 file or raise a ConfigError with one clear line."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            [
                Diagnostic(
                    None, f"failed to open {what} '{path}': No such file or directory", file=path
                )
            ]
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            [Diagnostic(None, f"failed to open {what} '{path}': is a directory", file=path)]
        ) from None
    except PermissionError:
        raise ConfigError(
            [Diagnostic(None, f"failed to open {what} '{path}': Permission denied", file=path)]
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [Diagnostic(None, f"failed to open {what} '{path}': {reason}", file=path)]
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(
            [
                Diagnostic(
                    Pos(path, line, column),
                    f"{what} is not valid UTF-8 (byte 0x{data[exc.start]:02x})",
                )
            ]
        ) from None


def resolve_relative(path: str, including_file: str | None) -> str:
    """Resolve a path as odyssey does (working directory); fall back to the including file's
    directory when the path does not exist relative to the working directory."""
    if os.path.isabs(path) or os.path.exists(path) or including_file is None:
        return path
    if including_file.startswith("<"):
        return path
    candidate = os.path.join(os.path.dirname(including_file), path)
    if os.path.exists(candidate):
        return candidate
    return path


def write_atomically(path: Path, text: str) -> None:
    """Replace the file in one rename, keeping its permissions (readers never see half)."""
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
