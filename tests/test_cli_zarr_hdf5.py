"""`outcore import` / `outcore export` of .zarr and .h5 paths: the built command runs this
interpreter's `outcore.convert`; round trips are byte-identical, bad inputs get one-line
errors with the command's exit codes and leave nothing behind."""

import os
import pathlib
import subprocess
import sys
import venv

import numpy as np
import pytest
import transaction

import outcore

#: The command under test (OUTCORE_CLI: another build, e.g. one from before a change).
CLI = pathlib.Path(
    os.environ.get("OUTCORE_CLI")
    or pathlib.Path(__file__).resolve().parents[1] / "target" / "release" / "outcore"
)
STRUCT = np.dtype([("a", "<i4"), ("b", ">f8"), ("c", "S3")])
CASES = [
    ((301, 13), np.dtype("<f8"), "C"),
    ((13, 301), np.dtype(">f4"), "F"),
    ((257,), STRUCT, "C"),
    ((5, 77), STRUCT, "F"),
]


@pytest.fixture(autouse=True)
def built():
    if not CLI.exists():
        pytest.skip(f"{CLI} is not built (cargo build --release -p outcore-cli)")
    transaction.abort()
    yield
    transaction.abort()


def cli(*args, python=sys.executable):
    """Runs ``outcore ARGS`` with ``python`` as its converter."""
    env = dict(os.environ, OUTCORE_PYTHON=str(python))
    return subprocess.run(
        [str(CLI), *map(str, args)], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL
    )


def ok(*args):
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def fails(code, *args, python=sys.executable):
    out = cli(*args, python=python)
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("outcore: error: "), out.stderr
    return lines[0]


def make(url, name, shape, dtype, order):
    """A committed array with data and attributes, closed again (the command opens the store)."""
    db = outcore.open(url)
    A = outcore.BigArray(shape, dtype, order=order, blksize=4096)
    A.attrs = {"units": "m", "dims": ["t", "x"][: len(shape)], "nested": {"k": [1, None]}}
    db.root()[name] = A
    rng = np.random.default_rng(3)
    data = np.zeros(shape, dtype)
    if dtype.fields:
        data["a"] = rng.integers(-1000, 1000, shape)
        data["b"] = rng.standard_normal(shape)
        data["c"] = rng.choice([b"ab", b"xyz", b""], shape)
    else:
        data[...] = rng.standard_normal(shape)
    A[...] = data
    transaction.commit()
    db.close()


def assert_same(url, a, b):
    db = outcore.open(url, readonly=True)
    A, B = db.root()[a], db.root()[b]
    assert (B.shape, B.dtype, B.order) == (A.shape, A.dtype, A.order)
    assert A[...].tobytes(order="A") == B[...].tobytes(order="A")
    assert dict(B.attrs) == dict(A.attrs)
    db.close()


def names(url):
    db = outcore.open(url, readonly=True)
    found = sorted(db.root())
    db.close()
    return found


@pytest.mark.parametrize("zarr_format", [None, 2, 3])
@pytest.mark.parametrize("shape,dtype,order", CASES)
def test_zarr_round_trip(tmp_path, shape, dtype, order, zarr_format):
    zarr = pytest.importorskip("zarr")
    url = tmp_path / "db"
    make(url, "A", shape, dtype, order)
    target = tmp_path / "a.zarr"
    fmt = [] if zarr_format is None else ["--zarr-format", zarr_format]
    out = ok("export", url, "A", target, *fmt)
    assert out.startswith(f"exported A: shape {shape if len(shape) > 1 else f'({shape[0]},)'}")
    assert f"order {order}" in out and out.rstrip().endswith(f"to {target}")
    z = zarr.open(str(target), mode="r")
    assert z.metadata.zarr_format == (zarr_format or 3)
    out = ok("import", url, "B", target)
    assert out.startswith("imported B: ") and f"from {target} (tid " in out
    assert_same(url, "A", "B")
    assert not [p for p in os.listdir(tmp_path) if "outcore-export" in p]


@pytest.mark.parametrize("shape,dtype,order", CASES)
def test_hdf5_round_trip(tmp_path, shape, dtype, order):
    h5py = pytest.importorskip("h5py")
    url = tmp_path / "db"
    make(url, "A", shape, dtype, order)
    h5 = tmp_path / "a.h5"
    ok("export", url, "A", f"{h5}:/grp/a")
    ok("export", url, "A", h5, "--dataset", "other")  # added to the existing file
    ok("export", url, "A", tmp_path / "b.hdf5")  # the dataset is named after the array
    with h5py.File(h5, "r") as f:
        assert sorted(f) == ["grp", "other"] and f["grp/a"].attrs["units"] == "m"
    with h5py.File(tmp_path / "b.hdf5", "r") as f:
        assert list(f) == ["A"]
    ok("import", url, "B", f"{h5}:/grp/a")
    ok("import", url, "C", h5, "--dataset", "other")
    ok("import", url, "D", tmp_path / "b.hdf5")  # the file's only dataset
    for name in "BCD":
        assert_same(url, "A", name)


def test_force_replaces(tmp_path):
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("zarr")
    url = tmp_path / "db"
    make(url, "A", (40, 3), np.dtype("<i8"), "C")
    make(url, "B", (7,), np.dtype("<u2"), "C")
    ok("export", url, "A", tmp_path / "a.zarr")
    ok("export", url, "A", tmp_path / "a.h5")
    ok("export", url, "B", tmp_path / "a.zarr", "--force")
    ok("export", url, "B", tmp_path / "a.h5", "--dataset", "A", "--force")
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["A"].shape == (7,)
    ok("import", url, "A", tmp_path / "a.zarr", "--force")
    assert_same(url, "A", "B")


def test_bad_inputs(tmp_path):
    zarr = pytest.importorskip("zarr")
    h5py = pytest.importorskip("h5py")
    url = tmp_path / "db"
    make(url, "A", (10,), np.dtype("<f8"), "C")
    # Missing sources, stores and arrays.
    assert "no zarr array at" in fails(1, "import", url, "X", tmp_path / "missing.zarr")
    assert "no HDF5 file at" in fails(1, "import", url, "X", tmp_path / "missing.h5")
    assert "no outcore store" in fails(1, "export", tmp_path / "nostore", "A", tmp_path / "n.zarr")
    assert "has no array named 'Z'" in fails(1, "export", url, "Z", tmp_path / "n.zarr")
    # A group, not an array.
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("inner", shape=(3,), dtype="i4")
    err = fails(1, "import", url, "X", tmp_path / "g.zarr")
    assert "is a zarr group, not an array" in err and "inner" in err
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_group("grp").create_dataset("inner", data=[1, 2])
        f.create_dataset("s", data=np.array(["a", "bb"], dtype=object), dtype=h5py.string_dtype())
    assert "HDF5 group, not a dataset" in fails(1, "import", url, "X", f"{tmp_path / 'f.h5'}:/grp")
    err = fails(1, "import", url, "X", tmp_path / "f.h5")
    assert "holds 2 datasets (/grp/inner, /s)" in err and "--dataset" in err
    assert "no dataset '/nope'" in fails(1, "import", url, "X", tmp_path / "f.h5", "--dataset", "/nope")
    # Object dtypes.
    assert "Python objects" in fails(1, "import", url, "X", f"{tmp_path / 'f.h5'}:/s")
    zarr.create_array(str(tmp_path / "s.zarr"), shape=(2,), dtype=str)
    assert "Python objects" in fails(1, "import", url, "X", tmp_path / "s.zarr")
    # Existing targets.
    ok("export", url, "A", tmp_path / "a.zarr")
    ok("export", url, "A", tmp_path / "a.h5")
    assert "a.zarr exists (use --force" in fails(1, "export", url, "A", tmp_path / "a.zarr")
    assert "already has a dataset 'A'" in fails(1, "export", url, "A", tmp_path / "a.h5")
    err = fails(1, "export", url, "A", f"{tmp_path / 'f.h5'}:/grp", "--force")
    assert "is an HDF5 group, not a dataset" in err
    assert "already has an array named 'A'" in fails(1, "import", url, "A", tmp_path / "a.zarr")
    # Options that do not fit the format: usage errors.
    assert "two datasets given" in fails(2, "import", url, "X", f"{tmp_path / 'a.h5'}:/A", "--dataset", "B")
    assert "--dataset applies to HDF5" in fails(2, "import", url, "X", tmp_path / "a.zarr", "--dataset", "B")
    # Nothing of the failures reached the store or left temporary files.
    assert names(url) == ["A"]
    assert not [p for p in os.listdir(tmp_path) if "outcore-export" in p]
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert sorted(f) == ["grp", "s"]


def test_python_without_outcore(tmp_path):
    """An interpreter that cannot import outcore: the error names what to install where."""
    pytest.importorskip("zarr")
    url = tmp_path / "db"
    make(url, "A", (10,), np.dtype("<f8"), "C")
    venv.create(tmp_path / "bare", with_pip=False)
    bare = tmp_path / "bare" / "bin" / "python"
    err = fails(1, "export", url, "A", tmp_path / "a.zarr", python=bare)
    assert f"{bare} cannot import outcore" in err
    assert "pip install 'outcore[zarr,hdf5]'" in err and "OUTCORE_PYTHON" in err
    assert not (tmp_path / "a.zarr").exists()
