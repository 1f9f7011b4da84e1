"""zarr and HDF5 import and export: byte-identical round trips, clear errors."""

import warnings

import numpy as np
import pytest
import transaction

import outcore

STRUCT = np.dtype([("a", "<i4"), ("b", ">f8"), ("c", "S3")])


@pytest.fixture
def db(tmp_path):
    transaction.abort()
    d = outcore.open(str(tmp_path / "db"))
    yield d
    transaction.abort()
    d.close()


def _array(db, name, shape, dtype, order):
    A = outcore.BigArray(shape, dtype, order=order, blksize=4096)
    A.attrs = {"units": "m", "dims": ["t", "x"][: len(shape)], "nested": {"k": [1, None]}}
    db.root()[name] = A
    rng = np.random.default_rng(7)
    data = np.zeros(shape, dtype)
    if dtype.fields:
        data["a"] = rng.integers(-1000, 1000, shape)
        data["b"] = rng.standard_normal(shape)
        data["c"] = rng.choice([b"ab", b"xyz", b""], shape)
    else:
        data[...] = rng.standard_normal(shape)
    A[...] = data
    transaction.commit()
    return A


def _same(A, B):
    assert (B.shape, B.dtype, B.order) == (A.shape, A.dtype, A.order)
    assert A[...].tobytes(order="A") == B[...].tobytes(order="A")  # in the arrays' order
    assert dict(B.attrs) == dict(A.attrs)


CASES = [
    ((301, 13), np.dtype("<f8"), "C"),
    ((13, 301), np.dtype(">f4"), "F"),
    ((257,), STRUCT, "C"),
    ((5, 77), STRUCT, "F"),
]


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("shape,dtype,order", CASES)
def test_zarr_round_trip(db, tmp_path, shape, dtype, order, zarr_format):
    zarr = pytest.importorskip("zarr")
    A = _array(db, "A", shape, dtype, order)
    chunks = (7, 5)[: len(shape)]  # not aligned with 4 KiB blocks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zarr.errors.UnstableSpecificationWarning)
        z = outcore.to_zarr(A, str(tmp_path / "a.zarr"), chunks=chunks, zarr_format=zarr_format)
        assert z.chunks == chunks
        np.testing.assert_array_equal(z[...], A[...])
        if zarr_format == 2:
            assert z.metadata.order == order
        B = outcore.from_zarr(str(tmp_path / "a.zarr"), db, "B")
    transaction.commit()
    _same(A, B)


def test_zarr_default_chunks_are_blocks(db, tmp_path):
    pytest.importorskip("zarr")
    A = _array(db, "A", (1000, 8), np.dtype("f8"), "C")
    z = outcore.to_zarr(A, str(tmp_path / "a.zarr"))
    assert z.chunks == (64, 8)  # 4 KiB blocks of 64-byte rows


def test_zarr_bad_inputs(db, tmp_path):
    zarr = pytest.importorskip("zarr")
    with pytest.raises(FileNotFoundError, match="no zarr array at"):
        outcore.from_zarr(str(tmp_path / "missing.zarr"), db, "X")
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("inner", shape=(3,), dtype="i4")
    with pytest.raises(TypeError, match="is a zarr group, not an array.*inner"):
        outcore.from_zarr(str(tmp_path / "g.zarr"), db, "X")
    s = zarr.create_array(str(tmp_path / "s.zarr"), shape=(2,), dtype=str)
    with pytest.raises(TypeError, match="Python objects"):
        outcore.from_zarr(s, db, "X")
    with pytest.raises(TypeError, match="zarr array or a path"):
        outcore.from_zarr(42, db, "X")
    with pytest.raises(TypeError, match="BigArray"):
        outcore.to_zarr(np.zeros(3), str(tmp_path / "n.zarr"))
    assert "X" not in db.root()


@pytest.mark.parametrize("shape,dtype,order", CASES)
def test_hdf5_round_trip(db, tmp_path, shape, dtype, order):
    h5py = pytest.importorskip("h5py")
    A = _array(db, "A", shape, dtype, order)
    chunks = (3, 5)[: len(shape)]  # HDF5 chunks fit in the shape; not aligned with blocks
    with h5py.File(tmp_path / "a.h5", "w") as f:
        ds = outcore.to_hdf5(A, f, "grp/a", chunks=chunks)
        assert ds.chunks == chunks
        np.testing.assert_array_equal(ds[...], A[...])
        assert ds.attrs["units"] == "m"  # plain attributes for other HDF5 readers too
        B = outcore.from_hdf5(f["grp/a"], db, "B")
    C = outcore.from_hdf5(str(tmp_path / "a.h5"), db, "C", path="grp/a")
    transaction.commit()
    _same(A, B)
    _same(A, C)


def test_hdf5_foreign_attrs_and_file_name(db, tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        ds = f.create_dataset("d", data=np.arange(10, dtype="u2"))
        ds.attrs["units"] = "s"
        ds.attrs["scale"] = np.float32(0.5)
        ds.attrs["range"] = np.array([0, 9])
    B = outcore.from_hdf5(str(tmp_path / "f.h5"), db, "B", path="/d")
    transaction.commit()
    assert dict(B.attrs) == {"units": "s", "scale": 0.5, "range": [0, 9]}
    np.testing.assert_array_equal(B[...], np.arange(10))
    assert outcore.to_hdf5(B, str(tmp_path / "g.h5"), "copy") == "/copy"


def test_hdf5_bad_inputs(db, tmp_path):
    h5py = pytest.importorskip("h5py")
    with pytest.raises(FileNotFoundError, match="no HDF5 file"):
        outcore.from_hdf5(str(tmp_path / "missing.h5"), db, "X", path="d")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_group("grp").create_dataset("inner", data=[1, 2])
        f.create_dataset("s", data=np.array(["a", "bb"], dtype=object), dtype=h5py.string_dtype())
        with pytest.raises(TypeError, match="HDF5 group, not a dataset.*inner"):
            outcore.from_hdf5(f["grp"], db, "X")
        with pytest.raises(TypeError, match="Python objects"):
            outcore.from_hdf5(f["s"], db, "X")
    with pytest.raises(KeyError, match="no dataset 'nope'"):
        outcore.from_hdf5(str(tmp_path / "f.h5"), db, "X", path="nope")
    with pytest.raises(TypeError, match="path="):
        outcore.from_hdf5(str(tmp_path / "f.h5"), db, "X")
    assert "X" not in db.root()


def test_streaming_in_slabs(db, tmp_path, monkeypatch):
    """Copies go slab by slab: with small slabs every part still arrives."""
    zarr = pytest.importorskip("zarr")
    monkeypatch.setattr(outcore._interop, "SLAB_BYTES", 4096)
    A = _array(db, "A", (1000, 13), np.dtype("f8"), "C")
    seen = []
    z = outcore.to_zarr(A, str(tmp_path / "a.zarr"), chunks=(9, 13), progress=lambda *p: seen.append(p))
    # 104-byte rows, 4 KiB slabs: 36 rows (whole 9-row chunks) at a time.
    assert seen[0] == (36 * 104, 104000) and seen[-1] == (104000, 104000) and len(seen) == 28
    B = outcore.from_zarr(z, db, "B")
    transaction.commit()
    _same(A, B)
    assert zarr.open(str(tmp_path / "a.zarr"), mode="r").nchunks_initialized == 112
