"""The systems compared, behind one small interface: each store is built once from the same
in-RAM data (``build``) and then read through a ``Reader`` (open, full sum, range sum, one
element, close). Peers that are not installed are reported as skipped, never fatal."""

import dataclasses
import importlib
import os

import numpy as np
import outcore
import transaction

from .common import BLOCK_ELEMS, MiB, remove


class Missing(Exception):
    """A peer library is not installed."""


def need(module):
    """Imports ``module`` or raises :class:`Missing` with the fix."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise Missing(f"{module} is not installed ({e}); run `bash bench/setup.sh`") from None


def slabs(n, slab_elems):
    for lo in range(0, n, slab_elems):
        yield lo, min(lo + slab_elems, n)


# ---------------------------------------------------------------------------------- outcore


def outcore_open(path, cache, compression=None, readonly=False, dirty_bytes=None):
    """A database and a connection with its own transaction manager (so several stores in one
    process never commit together). ``dirty_bytes`` sets the process-wide dirty budget (it
    stays set for later opens)."""
    kwargs = {"readonly": True} if readonly else {"compression": compression}
    if dirty_bytes is not None:
        kwargs["dirty_bytes"] = dirty_bytes
    db = outcore.open(path, cache_bytes=cache, **kwargs)
    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)
    return db, conn, tm


def outcore_build(path, data, cache, compression=None, chunk=256 * MiB):
    """Stores ``data`` as root["A"], committing every ``chunk`` bytes (bounded dirty memory)."""
    outcore_build_from(path, len(data), lambda lo, hi: data[lo:hi], cache, compression, chunk)


def outcore_build_from(path, n, source, cache, compression=None, chunk=256 * MiB):
    """Stores ``n`` float64 as root["A"], elements ``lo..hi`` being ``source(lo, hi)``,
    committing every ``chunk`` bytes; returns the exact sum of what it stored."""
    remove(path)
    db, conn, tm = outcore_open(path, cache, compression)
    conn.root()["A"] = A = outcore.BigArray((n,), np.float64)
    tm.commit()
    # Dirty blocks of a fault-filled store stay in its RAM budget until the commit.
    blocks = max(1, min(chunk, cache // 2) // (2 * MiB))
    total = 0.0
    for lo, hi in slabs(n, blocks * BLOCK_ELEMS):
        part = source(lo, hi)
        A[lo:hi] = part
        total += float(np.sum(part))
        tm.commit()
    db.close()
    return total


class OutcoreReader:
    """outcore: the embedded store (blocks mapped from its segment files) or, with
    ``compression``, the fault-filled path (blocks decoded into ``cache`` bytes of RAM). With
    ``prefetch``, range reads call ``A.prefetch`` on the range first. With ``readonly``, the
    store is opened read-only (fault-filled blocks are then moved into place, not copied)."""

    def __init__(self, label, path, cache, compression=None, prefetch=False, readonly=False):
        self.label, self.path, self.cache, self.compression = label, path, cache, compression
        self.prefetch, self.readonly = prefetch, readonly
        self.db = None

    def build(self, data):
        outcore_build(self.path, data, self.cache, self.compression)

    def files(self):
        return [self.path]

    def open(self):
        self.db, self.conn, self.tm = outcore_open(self.path, self.cache, readonly=self.readonly)
        self.A = self.conn.root()["A"]
        self.a = self.A[:]

    def load(self):
        self.A.load()

    def sum_all(self):
        return float(np.sum(self.a))

    def sum_range(self, lo, hi):
        if self.prefetch:
            self.A.prefetch(slice(lo, hi))
        return float(np.sum(self.a[lo:hi]))

    def get(self, i):
        return self.a[i]

    def close(self):
        self.a = self.A = None
        self.db.close()
        self.db = self.conn = self.tm = None


# ---------------------------------------------------------------------------------- numpy


class MemmapReader:
    """numpy.memmap of a raw file of float64."""

    def __init__(self, label, path):
        self.label, self.path = label, path

    def build(self, data):
        data.tofile(self.path)

    def files(self):
        return [self.path]

    def open(self):
        self.m = np.memmap(self.path, dtype=np.float64, mode="r")

    def load(self):
        pass

    def sum_all(self):
        return float(np.sum(self.m))

    def sum_range(self, lo, hi):
        return float(np.sum(self.m[lo:hi]))

    def get(self, i):
        return self.m[i]

    def close(self):
        m, self.m = self.m, None
        m._mmap.close()


class InRamReader:
    """The data in RAM: the upper bound of a scan."""

    label = "in-RAM numpy array (limit)"

    def __init__(self, data):
        self.data = data

    def sum_all(self):
        return float(np.sum(self.data))


# ---------------------------------------------------------------------------------- h5py


class H5Reader:
    """h5py, contiguous or chunked (2 MiB chunks, no filter). Scans read ``slab``-sized pieces
    with ``read_direct`` into one reused buffer (reading 4 GiB at once would double the RAM)."""

    def __init__(self, label, path, chunked, slab):
        self.label, self.path, self.chunked, self.slab = label, path, chunked, slab
        self.h5 = need("h5py")

    def build(self, data):
        with self.h5.File(self.path, "w") as f:
            chunks = (BLOCK_ELEMS,) if self.chunked else None
            ds = f.create_dataset("A", shape=data.shape, dtype=np.float64, chunks=chunks)
            for lo, hi in slabs(len(data), 8 * BLOCK_ELEMS):
                ds[lo:hi] = data[lo:hi]

    def files(self):
        return [self.path]

    def open(self):
        self.f = self.h5.File(self.path, "r")
        self.ds = self.f["A"]
        self.buf = np.empty(self.slab // 8, dtype=np.float64)

    def load(self):
        pass

    def sum_range(self, lo, hi):
        out = self.buf[: hi - lo] if hi - lo <= len(self.buf) else np.empty(hi - lo)
        self.ds.read_direct(out, np.s_[lo:hi], np.s_[0 : hi - lo])
        return float(np.sum(out))

    def sum_all(self):
        return sum(self.sum_range(lo, hi) for lo, hi in slabs(len(self.ds), len(self.buf)))

    def get(self, i):
        return self.ds[i]

    def close(self):
        self.f.close()
        self.f = self.ds = self.buf = None


# ---------------------------------------------------------------------------------- zarr


def zarr_create(zarr, path, shape, chunks):
    """A zarr v3 array on the local file system, uncompressed."""
    return zarr.create_array(
        store=zarr.storage.LocalStore(path),
        shape=shape,
        chunks=chunks,
        dtype="float64",
        compressors=None,
        zarr_format=3,
        overwrite=True,
    )


class ZarrReader:
    """zarr-python 3 (zarr v3 format, no compressor, 2 MiB chunks)."""

    def __init__(self, label, path, slab):
        self.label, self.path, self.slab = label, path, slab
        self.zarr = need("zarr")

    def build(self, data):
        z = zarr_create(self.zarr, self.path, data.shape, (BLOCK_ELEMS,))
        for lo, hi in slabs(len(data), self.slab // 8):
            z[lo:hi] = data[lo:hi]

    def files(self):
        return [self.path]

    def open(self):
        self.z = self.zarr.open_array(self.zarr.storage.LocalStore(self.path, read_only=True))

    def load(self):
        pass

    def sum_range(self, lo, hi):
        return float(np.sum(self.z[lo:hi]))

    def sum_all(self):
        return sum(self.sum_range(lo, hi) for lo, hi in slabs(self.z.shape[0], self.slab // 8))

    def get(self, i):
        return self.z[i]

    def close(self):
        self.z = None


class TensorStoreReader:
    """TensorStore's zarr3 driver reading the zarr store written by zarr-python (the same
    files), with its chunk cache off."""

    def __init__(self, label, zarr_path, slab):
        self.label, self.path, self.slab = label, zarr_path, slab
        self.ts = need("tensorstore")

    def build(self, data):
        pass  # reads the zarr store

    def files(self):
        return [self.path]

    def open(self):
        spec = {
            "driver": "zarr3",
            "kvstore": {"driver": "file", "path": os.path.abspath(self.path)},
            "context": {"cache_pool": {"total_bytes_limit": 0}},
            "recheck_cached_data": False,
        }
        self.arr = self.ts.open(spec, read=True).result()

    def load(self):
        pass

    def sum_range(self, lo, hi):
        return float(np.sum(self.arr[lo:hi].read().result()))

    def sum_all(self):
        n = self.arr.shape[0]
        return sum(self.sum_range(lo, hi) for lo, hi in slabs(n, self.slab // 8))

    def get(self, i):
        return self.arr[i].read().result()

    def close(self):
        self.arr = None


# ---------------------------------------------------------------------------------- catalogue


#: Keys of the readers of workloads 1 and 2, in report order.
READERS = ("outcore", "outcore-lz4", "outcore-lz4-ro", "memmap", "h5-contig", "h5-chunked", "zarr", "tensorstore")


@dataclasses.dataclass
class Skipped:
    """A reader whose library is not installed."""

    label: str
    reason: str


def readers(cfg, names=None):
    """The readers of workloads 1 and 2 by key, in report order; those whose library is
    missing are :class:`Skipped`. ``names`` picks a subset by key."""
    lz4 = f"outcore, lz4 store (fault-filled, budget {cfg.cache >> 20} MiB)"
    specs = [
        (
            "outcore",
            "outcore, embedded store (mapped)",
            lambda label: OutcoreReader(label, cfg.path("outcore"), cfg.cache),
        ),
        (
            "outcore-lz4",
            lz4,
            lambda label: OutcoreReader(label, cfg.path("outcore-lz4"), cfg.cache, "lz4"),
        ),
        (
            "outcore-lz4-ro",
            lz4.replace("fault-filled", "fault-filled, opened read-only: blocks moved in"),
            lambda label: OutcoreReader(
                label, cfg.path("outcore-lz4-ro"), cfg.cache, "lz4", readonly=True
            ),
        ),
        (
            "memmap",
            "numpy.memmap of a raw file",
            lambda label: MemmapReader(label, cfg.path("raw.f64")),
        ),
        (
            "h5-contig",
            "h5py contiguous",
            lambda label: H5Reader(label, cfg.path("contig.h5"), False, cfg.slab),
        ),
        (
            "h5-chunked",
            "h5py chunked (2 MiB)",
            lambda label: H5Reader(label, cfg.path("chunked.h5"), True, cfg.slab),
        ),
        (
            "zarr",
            "zarr v3 (2 MiB chunks, uncompressed)",
            lambda label: ZarrReader(label, cfg.path("zarr"), cfg.slab),
        ),
        (
            "tensorstore",
            "TensorStore zarr3 (same zarr files)",
            lambda label: TensorStoreReader(label, cfg.path("zarr"), cfg.slab),
        ),
    ]
    out = {}
    for key, label, make in specs:
        if names is not None and key not in names:
            continue
        try:
            if key == "tensorstore":
                need("zarr")  # zarr-python writes the store TensorStore reads
            out[key] = make(label)
        except Missing as e:
            out[key] = Skipped(label, str(e))
    return out
