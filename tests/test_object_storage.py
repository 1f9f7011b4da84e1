"""Block bodies in an S3-compatible object store (``blobs=``): chosen at creation, recorded
in the store, so later opens need only the url. Needs the test S3 server
(scripts/s3-test-server.sh); skipped without one."""

import numpy as np
import pytest
import transaction

import outcore


def test_blobs_are_recorded_at_creation(index_url, s3_url):
    blobs = s3_url
    transaction.abort()
    db = outcore.open(index_url, blobs=blobs)
    try:
        with db.transaction() as root:
            root["a"] = a = outcore.BigArray((3, 100_000), "f8")
            a[1] = np.arange(100_000)
        assert blobs in db._native.describe()
    finally:
        db.close()
    # Reopened without blobs=: the store says where its bodies are.
    db = outcore.open(index_url)
    try:
        a = db.root()["a"]
        assert a[1].sum() == np.arange(100_000).sum()
        assert a[0].sum() == 0
        assert blobs in db._native.describe()
        assert db.verify()["problems"] == []
    finally:
        transaction.abort()
        db.close()
    # Another object store for it is refused.
    with pytest.raises(ValueError, match="keeps its block bodies in"):
        outcore.open(index_url, blobs=blobs + "-other")


def test_bad_blobs_urls_are_refused(tmp_path):
    with pytest.raises(ValueError, match="s3://bucket"):
        outcore.open(str(tmp_path / "db"), blobs="https://example.invalid/x")


def test_disk_cache(tmp_path, s3_url):
    url = str(tmp_path / "db")
    transaction.abort()
    db = outcore.open(url, blobs=s3_url, cache_dir=tmp_path / "cache", cache_disk_bytes=1 << 30)
    try:
        with db.transaction() as root:
            root["a"] = a = outcore.BigArray((1_000_000,), "f8")
            a[:] = 2.0
    finally:
        db.close()
    db = outcore.open(url, cache_dir=tmp_path / "cache")
    try:
        assert db.root()["a"][:].sum() == 2_000_000.0
        assert db.root()["a"][:].sum() == 2_000_000.0  # again, mapped from the cache
    finally:
        transaction.abort()
        db.close()
    assert sum(f.stat().st_size for f in (tmp_path / "cache").iterdir()) >= 8_000_000


def test_default_disk_cache_and_turning_it_off(tmp_path, s3_url):
    url = str(tmp_path / "db")
    home = tmp_path / "xdg-cache" / "outcore"  # XDG_CACHE_HOME, set by the s3_url fixture
    transaction.abort()
    db = outcore.open(url, blobs=s3_url, cache_disk_bytes=0)
    try:
        with db.transaction() as root:
            root["a"] = a = outcore.BigArray((500_000,), "f8")
            a[:] = 3.0
        assert db.root()["a"][:].sum() == 1_500_000.0
    finally:
        transaction.abort()
        db.close()
    assert not home.exists(), "cache_disk_bytes=0: no disk cache"
    db = outcore.open(url)
    try:
        assert db.root()["a"][:].sum() == 1_500_000.0
    finally:
        transaction.abort()
        db.close()
    (store,) = home.iterdir()  # one directory per object store
    assert store.name.startswith(s3_url.split("/")[2] + "-")
    assert sum(f.stat().st_size for f in store.iterdir()) >= 4_000_000
