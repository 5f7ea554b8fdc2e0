"""The data directory and the SQLite file hold learners' names and keys: only the service's user may read them.

Modes are set when the service creates them (so nothing is readable by others even for an instant) and
tightened at start when an older version, a restore or a copy left them open. Only what the service's
user owns is changed; anything else is reported, never a reason to refuse to start.
"""

import logging
import os
import stat
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600

log = logging.getLogger(__name__)


def private_dir(path: Path) -> Path:
    """Creates the directory 0700 (parents as the umask says), or tightens it if it exists."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    restrict(path, PRIVATE_DIR)
    return path


def private_file(path: Path) -> None:
    """Creates an empty file 0600 unless it exists, then tightens it: SQLite takes an empty file as a new
    database and gives its -wal and -shm files the main file's mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        restrict(path, PRIVATE_FILE)


def restrict(path: Path, allowed: int) -> None:
    """Removes any permission bit beyond `allowed` from a path the service's user owns."""
    try:
        info = path.stat()
        current = stat.S_IMODE(info.st_mode)
        if current & ~allowed == 0:
            return
        if info.st_uid != os.geteuid():
            log.warning("%s has permissions %o and another owner; make it %o", path, current, current & allowed)
            return
        path.chmod(current & allowed)
        log.warning("%s had permissions %o; now %o (it holds learners' data or keys)", path, current, current & allowed)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("could not tighten the permissions of %s: %s", path, exc)


def fsync_dir(directory: Path) -> None:
    """Makes a file just created or renamed in `directory` survive a power cut (its entry, not only its data)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
