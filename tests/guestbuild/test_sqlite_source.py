"""The pinned SQLite amalgamation: verified before use, never trusted by name."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from underbridge.errors import ToolchainError
from underbridge.guestbuild import sqlite_source


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("UNDERBRIDGE_CACHE", str(cache))
    return cache


def fake_tarball(path: Path) -> Path:
    """A tarball with the right member names and the wrong contents."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for member in sqlite_source.MEMBERS:
            data = b"/* not sqlite */\n"
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return path


def test_a_tarball_with_another_hash_is_refused(
    fresh_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bogus = fake_tarball(tmp_path / "bogus.tgz")
    monkeypatch.setenv("UNDERBRIDGE_SQLITE_TARBALL", str(bogus))
    with pytest.raises(ToolchainError, match="not the pinned"):
        sqlite_source.amalgamation_dir()
    assert not (fresh_cache / f"sqlite-{sqlite_source.SQLITE_VERSION}").exists()


def test_a_corrupted_cached_tarball_is_not_used(
    fresh_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = fresh_cache / "downloads" / Path(sqlite_source.TARBALL_URL).name
    cached.parent.mkdir(parents=True)
    fake_tarball(cached)
    monkeypatch.setenv("UNDERBRIDGE_SQLITE_TARBALL", str(fake_tarball(tmp_path / "b.tgz")))
    with pytest.raises(ToolchainError, match="not the pinned"):
        sqlite_source.amalgamation_dir()


def test_the_amalgamation_is_the_pinned_release() -> None:
    directory = sqlite_source.amalgamation_dir()  # the shared cache: fetched at most once
    header = (directory / "sqlite3.h").read_text()
    assert f'#define SQLITE_VERSION        "{sqlite_source.SQLITE_VERSION}"' in header
    source = (directory / "sqlite3.c").read_bytes()
    # Extracted whole, and unmodified: the amalgamation ends with its own end marker.
    assert source.rstrip().endswith(
        b"/************************** End of sqlite3.c ******************************/"
    )
