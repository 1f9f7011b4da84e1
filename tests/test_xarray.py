"""xarray: lazy DataArrays over A.to_dask(), the "outcore" backend and outcore.xarray.save."""

import numpy as np
import pytest
import transaction

import outcore

xr = pytest.importorskip("xarray")
dask = pytest.importorskip("dask")
from dask.callbacks import Callback  # noqa: E402

import outcore.xarray  # noqa: E402


class Tasks(Callback):
    """Counts the dask tasks run (reads of an outcore array are tasks)."""

    def __init__(self):
        super().__init__()
        self.keys = []

    def _pretask(self, key, dsk, state):
        self.keys.append(key)


def test_dataarray_over_to_dask_is_lazy(tmp_path):
    transaction.abort()
    db = outcore.open(str(tmp_path / "db"))
    db.root()["A"] = A = outcore.BigArray((1000, 4), "f8", blksize=4096)
    A[...] = np.arange(4000.0).reshape(1000, 4)
    transaction.commit()
    with Tasks() as tasks:
        arr = xr.DataArray(A.to_dask(chunks=(100, 4)), dims=("time", "x"))
        first = arr.isel(time=slice(0, 3))
        assert tasks.keys == []  # building and slicing read nothing
        np.testing.assert_array_equal(first.values, A[:3])
    assert 0 < len(tasks.keys) < 10  # one chunk, not all ten
    db.close()


def _dataset():
    time = np.arange(6)
    return xr.Dataset(
        {
            "temp": (("time", "x"), np.arange(18.0).reshape(6, 3), {"units": "K", "scale": np.float32(0.5)}),
            "flag": (("time",), np.array([1, 0, 1, 1, 0, 0], dtype="i2"), {"meaning": "ok"}),
        },
        coords={"time": ("time", time, {"units": "s"}), "label": ("x", np.array([b"a", b"b", b"c"]))},
    )


def test_dataset_round_trip_is_lazy(shared_url):
    ds = _dataset()
    transaction.abort()
    db = outcore.open(shared_url)
    outcore.xarray.save(ds, db)
    transaction.commit()
    assert db.root()["temp"].attrs["dims"] == ["time", "x"]
    with Tasks() as tasks:
        # xarray loads index coordinates (here "time") into memory; nothing else is read.
        lazy = xr.open_dataset(shared_url, engine="outcore", drop_variables=["time"])
        assert isinstance(lazy["temp"].data, dask.array.Array)
        assert "label" in lazy.coords
        assert tasks.keys == []
        back = xr.open_dataset(shared_url, engine="outcore")
        xr.testing.assert_identical(back.load(), ds)
    assert tasks.keys
    assert back["temp"].attrs == {"units": "K", "scale": 0.5}
    db.close()


def test_save_a_lazy_dataset(tmp_path):
    """A Dataset read lazily from one store is written into another slab by slab."""
    first, second = str(tmp_path / "one"), str(tmp_path / "two")
    transaction.abort()
    db = outcore.open(first)
    outcore.xarray.save(_dataset(), db)
    transaction.commit()
    lazy = xr.open_dataset(first, engine="outcore")
    other = outcore.open(second)
    outcore.xarray.save(lazy, other)
    transaction.commit()
    xr.testing.assert_identical(xr.open_dataset(second, engine="outcore").load(), _dataset())
    db.close()
    other.close()


def test_arrays_without_dims_and_at(tmp_path):
    url = str(tmp_path / "db")
    transaction.abort()
    db = outcore.open(url)
    db.root()["plain"] = P = outcore.BigArray((2, 3), "i4")
    P[...] = 1
    P.attrs["units"] = "m"
    transaction.commit()
    tid = db.history(1)[0]["tid"]
    P[...] = 2
    transaction.commit()
    ds = xr.open_dataset(url, engine="outcore", at=tid)
    assert ds["plain"].dims == ("dim_0", "dim_1")
    assert ds["plain"].attrs == {"units": "m"}
    assert int(ds["plain"].sum()) == 6
    assert int(xr.open_dataset(url, engine="outcore")["plain"].sum()) == 12
    assert "plain" not in xr.open_dataset(url, engine="outcore", drop_variables=["plain"])
    P.attrs["dims"] = ["only one"]
    transaction.commit()
    with pytest.raises(ValueError, match="must list 2 dimension names"):
        xr.open_dataset(url, engine="outcore")
    db.close()


def test_save_refuses_object_variables(tmp_path):
    transaction.abort()
    db = outcore.open(str(tmp_path / "db"))
    ds = xr.Dataset({"names": ("x", np.array(["a", None], dtype=object))})
    with pytest.raises(TypeError, match="Python objects"):
        outcore.xarray.save(ds, db)
    transaction.abort()
    db.close()
