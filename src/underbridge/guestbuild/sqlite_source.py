"""The SQLite amalgamation the SQLite guest is built from: fetched, verified, cached.

Source: the npm registry's tarball of better-sqlite3 12.11.1, whose deps/sqlite3/
directory holds the official, unmodified amalgamation of SQLite 3.53.2 (sqlite3.c and
sqlite3.h). The tarball is pinned by its sha256; nothing else is trusted.

Invariants:
  - Nothing fetched is committed: the tarball and the extracted files live under
    toolchain.cache_root()/downloads and .../sqlite-<version>/.
  - Files appear in the cache only by atomic rename after the hash check, so a file at
    its cache path is always complete and verified (concurrent test workers may race;
    both write identical bytes).
  - UNDERBRIDGE_SQLITE_TARBALL may name a local copy of the same tarball (offline
    machines); it is hash-checked like a download.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from underbridge.errors import ToolchainError
from underbridge.guestbuild.toolchain import build_object, cache_root

SQLITE_VERSION = "3.53.2"
TARBALL_URL = "https://registry.npmjs.org/better-sqlite3/-/better-sqlite3-12.11.1.tgz"
TARBALL_SHA256 = "ebf0ed75a7a59dbcb3b24bbd014ef49d9f15bc328e4adcbf516f2a8fadfa2835"
MEMBERS = {
    "package/deps/sqlite3/sqlite3.c": "sqlite3.c",
    "package/deps/sqlite3/sqlite3.h": "sqlite3.h",
}
_TIMEOUT_S = 120


def amalgamation_dir() -> Path:
    """The directory holding the verified sqlite3.c and sqlite3.h, fetching on first use."""
    target = cache_root() / f"sqlite-{SQLITE_VERSION}"
    if all((target / name).is_file() for name in MEMBERS.values()):
        return target
    tarball = _tarball()
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for member, name in MEMBERS.items():
            extracted = archive.extractfile(member)
            if extracted is None:
                raise ToolchainError(f"{TARBALL_URL} has no {member}")
            _write_atomically(target / name, extracted.read())
    return target


def _tarball() -> bytes:
    cached = cache_root() / "downloads" / Path(TARBALL_URL).name
    if cached.is_file():
        data = cached.read_bytes()
        if hashlib.sha256(data).hexdigest() == TARBALL_SHA256:
            return data
    local = os.environ.get("UNDERBRIDGE_SQLITE_TARBALL")
    data = Path(local).read_bytes() if local else _download()
    digest = hashlib.sha256(data).hexdigest()
    if digest != TARBALL_SHA256:
        raise ToolchainError(
            f"the SQLite source tarball has sha256 {digest}, not the pinned {TARBALL_SHA256}",
            hint=f"it came from {local or TARBALL_URL}; refusing to build from it",
        )
    _write_atomically(cached, data)
    return data


def _download() -> bytes:
    try:
        with urllib.request.urlopen(TARBALL_URL, timeout=_TIMEOUT_S) as response:
            return bytes(response.read())
    except (urllib.error.URLError, OSError) as exc:
        raise ToolchainError(
            f"cannot download the SQLite amalgamation from {TARBALL_URL}: {exc}",
            hint="check the network, or set UNDERBRIDGE_SQLITE_TARBALL to a local copy "
            "of that file",
        ) from exc


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


#: How the guest's SQLite is compiled (with musl-gcc), and why:
#:   OS_OTHER=1        no built-in OS layer: guest/apps/ycsb/ubvfs.c is the only one;
#:   THREADSAFE=0      one thread, no mutexes;
#:   TEMP_STORE=3      temporary tables and statement journals in memory;
#:   OMIT_WAL          WAL needs shared memory the VFS does not offer (rollback journal);
#:   MAX_MMAP_SIZE=0   every page goes through xRead/xWrite, i.e. through the fs server;
#:   OMIT_LOAD_EXTENSION, DEFAULT_MEMSTATUS=0  nothing to dlopen; no malloc statistics.
SQLITE_FLAGS: tuple[str, ...] = (
    "-O2",
    "-g0",
    "-fno-pic",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-DSQLITE_OS_OTHER=1",
    "-DSQLITE_THREADSAFE=0",
    "-DSQLITE_TEMP_STORE=3",
    "-DSQLITE_OMIT_WAL",
    "-DSQLITE_MAX_MMAP_SIZE=0",
    "-DSQLITE_OMIT_LOAD_EXTENSION",
    "-DSQLITE_DEFAULT_MEMSTATUS=0",
)


def sqlite_object() -> Path:
    """sqlite3.o for musl guests (compiled once, about 40 s, then cached)."""
    return build_object(amalgamation_dir() / "sqlite3.c", libc="musl", flags=SQLITE_FLAGS)
