"""Read-only opens of an embedded store on a read-only bind mount (needs root to mount)."""

import subprocess

import numpy as np
import pytest
import transaction

import outcore


@pytest.fixture
def ro_mount(tmp_path):
    """A populated store and a read-only bind mount of it; unmounted afterwards."""
    store, ro = tmp_path / "store", tmp_path / "ro"
    ro.mkdir()
    transaction.abort()
    db = outcore.open(str(store))
    db.root()["A"] = A = outcore.BigArray(shape=(3 * 2**20,), dtype="u1")
    A[:] = np.arange(3 * 2**20) % 251
    transaction.commit()
    db.close()
    mounted = subprocess.run(["mount", "--bind", str(store), str(ro)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount (needs root): {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_readonly_open_of_readonly_mount(ro_mount):
    with pytest.raises(OSError):
        (ro_mount / "probe").write_bytes(b"x")
    db = outcore.open(str(ro_mount), readonly=True)
    A = db.root()["A"]
    assert A.shape == (3 * 2**20,)
    assert np.array_equal(A[:], np.arange(3 * 2**20) % 251)
    assert len(db.history()) == 1
    with pytest.raises(ValueError):
        A[0] = 1
    transaction.abort()
    db.close()
