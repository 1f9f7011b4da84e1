"""Workload s3 (issue 18): block bodies in an S3-compatible object store (SeaweedFS on this
machine unless the environment names another), against the same server used raw, in one run:

* scan of the array with a cold local disk cache (emptied before each pass) against raw
  parallel GETs of the very objects outcore wrote (listed, fetched 16 at a time with obstore,
  each summed with NumPy);
* the same scan with a warm disk cache (every body cached, so mapped) against numpy.memmap
  of the same bytes in a local file;
* the same data through zarr v3 (2 MiB chunks, uncompressed) on the same server through
  ``zarr.storage.ObjectStore`` (obstore), reported beside;
* a commit of a quarter of the array's size (1 GiB in --full) against raw parallel PUTs of
  the same bytes as 2 MiB objects.

The server: ``AWS_ENDPOINT_URL`` & co. and ``OUTCORE_TEST_S3_URL`` (``s3://bucket/prefix``)
if set, else a private SeaweedFS started with scripts/s3-test-server.sh for the run."""

import asyncio
import contextlib
import os
import subprocess
import uuid

import numpy as np

from .common import (
    BLOCK_ELEMS,
    Bar,
    Check,
    MiB,
    Section,
    check_sum,
    fmt,
    gbps,
    ratio,
    remove,
    timed,
)
from .systems import need, slabs

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "scripts", "s3-test-server.sh")
PARALLEL = 16  # requests in flight of the raw baselines (outcore's own batches: 16 too)


@contextlib.contextmanager
def s3_server(log):
    """The S3 url (``s3://bucket/prefix``) to use, the server started for the run if the
    environment names none (and stopped after)."""
    if os.environ.get("OUTCORE_TEST_S3_URL"):
        yield os.environ["OUTCORE_TEST_S3_URL"]
        return
    log("  starting a private SeaweedFS (scripts/s3-test-server.sh)")
    out = subprocess.run(["bash", SCRIPT, "start"], check=True, capture_output=True, text=True)
    saved = dict(os.environ)
    for line in out.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        os.environ[key] = value.strip("'")
    try:
        yield os.environ["OUTCORE_TEST_S3_URL"]
    finally:
        subprocess.run(["bash", SCRIPT, "stop", os.environ["OUTCORE_TEST_S3_DIR"]], check=False)
        os.environ.clear()
        os.environ.update(saved)


def s3_store(url, prefix=None):
    """An obstore S3Store of the bucket of ``url`` (endpoint and credentials from AWS_*),
    rooted at ``prefix`` if given."""
    from obstore.store import S3Store

    bucket = url.removeprefix("s3://").split("/")[0]
    http = os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://")
    return S3Store(bucket, prefix=prefix, client_options={"allow_http": True} if http else None)


def cached_bytes(cache_dir):
    """Bytes of the bodies in the disk cache ``cache_dir``."""
    if not os.path.isdir(cache_dir):
        return 0
    return sum(e.stat().st_size for e in os.scandir(cache_dir) if e.is_file())


def prefix_of(url):
    return url.removeprefix("s3://").partition("/")[2]


async def _bounded(jobs):
    sem = asyncio.Semaphore(PARALLEL)

    async def one(job):
        async with sem:
            return await job()

    return await asyncio.gather(*(one(j) for j in jobs))


def raw_get_sum(obstore, store, paths):
    """Fetches every object in ``paths``, PARALLEL at a time, and sums each as float64."""

    def job(path):
        async def run():
            got = await obstore.get_async(store, path)
            return float(np.frombuffer(await got.bytes_async(), dtype=np.float64).sum())

        return run

    return sum(asyncio.run(_bounded([job(p) for p in paths])))


def raw_put(obstore, store, prefix, data):
    """Uploads ``data`` as 2 MiB objects under ``prefix``, PARALLEL at a time."""
    blocks = [(lo, hi) for lo, hi in slabs(len(data), BLOCK_ELEMS)]

    def job(lo, hi):
        async def run():
            body = memoryview(data[lo:hi]).cast("B")
            await obstore.put_async(store, f"{prefix}/{lo // BLOCK_ELEMS}", body)

        return run

    asyncio.run(_bounded([job(lo, hi) for lo, hi in blocks]))


def delete_prefix(obstore, store, prefix):
    """Deletes every object under ``prefix`` (untimed cleanup)."""
    paths = [m["path"] for batch in obstore.list(store, prefix=prefix) for m in batch]
    for lo in range(0, len(paths), 1000):
        obstore.delete(store, paths[lo : lo + 1000])


def s3(cfg, data, log):
    """Workload s3 (needs obstore, zarr; starts SeaweedFS unless AWS_* name a server)."""
    obstore = need("obstore")
    zarr = need("zarr")
    outcore = need("outcore")
    transaction = need("transaction")
    part = data[: min(len(data), cfg.n)]
    total = float(part.sum())
    commit_part = data[: max(BLOCK_ELEMS, (len(part) // 4) // BLOCK_ELEMS * BLOCK_ELEMS)]
    size, csize = part.nbytes, commit_part.nbytes
    sec = Section("s3", f"S3. Object storage ({size / MiB:.0f} MiB array, SeaweedFS)")
    rounds = cfg.rounds
    sec.notes.append(
        f"Median of {rounds} passes after one untimed pass; server and client share this "
        "machine (loopback). outcore: the embedded store as index, bodies in the object store, "
        f"a fresh `outcore.open` per pass (RAM budget {cfg.cache >> 20} MiB), the array as one "
        "view, `np.sum`, through a writable connection (blocks copied in with `UFFDIO_COPY`) "
        "and a read-only one (`readonly=True`: decoded frames moved in). Cold: the disk cache "
        "emptied before each pass (untimed); warm: every "
        "body in it (mapped; untimed passes until it is). Raw GETs/PUTs: obstore, "
        f"{PARALLEL} requests in flight, the same "
        "objects (GETs) or the same bytes as 2 MiB objects (PUTs). zarr: v3, 2 MiB chunks, no "
        "compression, `zarr.storage.ObjectStore` on the same server. Commit: a new array of "
        f"{csize / MiB:.0f} MiB written (untimed), then `commit()` timed (uploads and the index)."
    )
    run_id = uuid.uuid4().hex[:8]
    with s3_server(log) as base:
        url = f"{base.rstrip('/')}/bench-{run_id}"
        store = s3_store(url)
        path = cfg.fresh_path("s3-index")
        cache_dir = cfg.path(f"s3-cache-{run_id}")

        def open_db(disk=2 * size, readonly=False):
            db = outcore.open(
                path,
                cache_bytes=cfg.cache,
                cache_dir=cache_dir,
                cache_disk_bytes=disk,
                readonly=readonly,
            )
            tm = transaction.TransactionManager()
            return db, db.open(transaction_manager=tm), tm

        # Build (untimed): the index store remembers the object store.
        log(f"  building {size >> 20} MiB in {url}")
        db = outcore.open(path, blobs=url, cache_bytes=cfg.cache, cache_disk_bytes=0)
        tm = transaction.TransactionManager()
        conn = db.open(transaction_manager=tm)
        conn.root()["A"] = A = outcore.BigArray((len(part),), np.float64)
        tm.commit()
        for lo, hi in slabs(len(part), 128 * BLOCK_ELEMS):
            A[lo:hi] = part[lo:hi]
            tm.commit()
        del A
        db.close()

        def outcore_scan(readonly=False):
            db, conn, _ = open_db(readonly=readonly)
            try:
                check_sum(float(np.sum(conn.root()["A"][:])), total, "outcore S3")
            finally:
                db.close()

        cold = timed(outcore_scan, rounds, setup=lambda: remove(cache_dir))
        log(f"  outcore, cold cache {gbps(size, cold.median):.2f} GB/s")
        # A read-only connection loads blocks by moving decoded frames in (no page allocation
        # per 4 KiB, which a writable view's UFFDIO_COPY pays).
        cold_ro = timed(
            lambda: outcore_scan(readonly=True), rounds, setup=lambda: remove(cache_dir)
        )
        log(f"  outcore, cold cache, read-only {gbps(size, cold_ro.median):.2f} GB/s")
        objects = [m["path"] for batch in obstore.list(store, prefix=prefix_of(url)) for m in batch]
        raw = timed(
            lambda: check_sum(raw_get_sum(obstore, store, objects), total, "raw GETs"), rounds
        )
        log(f"  raw parallel GETs {gbps(size, raw.median):.2f} GB/s ({len(objects)} objects)")
        # Bodies fetched faster than the disk takes them are not all cached by one pass.
        for _ in range(8):
            if cached_bytes(cache_dir) >= size:
                break
            outcore_scan()
        warm = timed(outcore_scan, rounds)
        log(f"  outcore, warm cache {gbps(size, warm.median):.2f} GB/s")
        remove(cache_dir)

        mm_path = cfg.path(f"s3-memmap-{run_id}")
        part.tofile(mm_path)
        mm = timed(
            lambda: check_sum(
                float(np.sum(np.memmap(mm_path, dtype=np.float64, mode="r"))), total, "memmap"
            ),
            rounds,
        )
        remove(mm_path)
        log(f"  numpy.memmap {gbps(size, mm.median):.2f} GB/s")

        zprefix = f"{prefix_of(url)}-zarr"
        zstore = zarr.storage.ObjectStore(s3_store(url, zprefix))
        z = zarr.create_array(
            zstore, shape=part.shape, chunks=(BLOCK_ELEMS,), dtype="f8", compressors=None
        )
        for lo, hi in slabs(len(part), 128 * BLOCK_ELEMS):
            z[lo:hi] = part[lo:hi]
        zt = timed(
            lambda: check_sum(float(np.sum(zarr.open_array(zstore, mode="r")[:])), total, "zarr"),
            rounds,
        )
        log(f"  zarr v3 on S3 {gbps(size, zt.median):.2f} GB/s")
        delete_prefix(obstore, store, zprefix)

        serial = iter(range(1_000_000))
        pending = {}

        def fill():
            db, conn, tm = open_db(disk=0)
            name = f"C{next(serial)}"
            conn.root()[name] = C = outcore.BigArray((len(commit_part),), np.float64)
            C[:] = commit_part
            pending.update(db=db, tm=tm)

        def commit():
            pending["tm"].commit()
            pending["db"].close()

        oc_commit = timed(commit, rounds, setup=fill)
        log(f"  outcore commit {gbps(csize, oc_commit.median):.2f} GB/s")
        puts = iter(range(1_000_000))
        raw_put_t = timed(
            lambda: raw_put(obstore, store, f"{prefix_of(url)}-raw/{next(puts)}", commit_part),
            rounds,
        )
        log(f"  raw parallel PUTs {gbps(csize, raw_put_t.median):.2f} GB/s")
        delete_prefix(obstore, store, f"{prefix_of(url)}-raw")
        delete_prefix(obstore, store, prefix_of(url))
        remove(path)

    rows = [
        ("raw parallel GETs (baseline of cold)", raw, size, None),
        ("outcore, cold disk cache", cold, size, raw),
        ("outcore, cold disk cache, read-only connection", cold_ro, size, raw),
        ("numpy.memmap, local file (baseline of warm)", mm, size, None),
        ("outcore, warm disk cache (mapped)", warm, size, mm),
        ("zarr v3 on the same server", zt, size, raw),
        ("raw parallel PUTs (baseline of commit)", raw_put_t, csize, None),
        ("outcore commit", oc_commit, csize, raw_put_t),
    ]
    sec.tables.append(
        (
            ["what", "median s", "best s", "GB/s", "× its baseline"],
            [
                [
                    label,
                    fmt(t.median),
                    fmt(t.best),
                    fmt(gbps(n, t.median)),
                    "1" if base is None else fmt(ratio(base.median, t.median)),
                ]
                for label, t, n, base in rows
            ],
        )
    )
    for what, t, base, goal in (
        ("S3 scan, cold cache ≥ 0.8× raw parallel GETs", cold, raw, 0.8),
        ("S3 scan, cold cache, read-only connection ≥ 0.8× raw parallel GETs", cold_ro, raw, 0.8),
        ("S3 scan, warm cache ≥ 0.9× numpy.memmap", warm, mm, 0.9),
        ("S3 commit ≥ 0.8× raw parallel PUTs", oc_commit, raw_put_t, 0.8),
    ):
        x = ratio(base.median, t.median)
        sec.checks.append(Check(what, f"{fmt(x)}×", f"≥ {goal}×", x >= goal))
    sec.chart_unit = "GB/s"
    sec.bars = [
        Bar("raw GETs", gbps(size, raw.median)),
        Bar("outcore cold", gbps(size, cold.median)),
        Bar("outcore cold RO", gbps(size, cold_ro.median)),
        Bar("zarr S3", gbps(size, zt.median)),
        Bar("memmap", gbps(size, mm.median)),
        Bar("outcore warm", gbps(size, warm.median)),
        Bar("raw PUTs", gbps(csize, raw_put_t.median)),
        Bar("outcore commit", gbps(csize, oc_commit.median)),
    ]
    return sec
