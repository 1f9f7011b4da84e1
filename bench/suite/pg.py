"""Workload 6: the full scan from PostgreSQL: outcore's PostgreSQL store (fault-filled, within
its budget) against a raw ``SELECT bytes FROM <schema>.outcore_data`` of the same blocks over
one psycopg connection, summed with NumPy."""

import os

import numpy as np

from .common import Bar, GiB, Section, check_sum, fmt, gbps, ratio, timed
from .systems import need, outcore_build, outcore_open


def with_schema(url, schema):
    return url + ("&" if "?" in url else "?") + f"outcore_schema={schema}"


def outcore_scan(url, cache, total):
    """A fresh database and connection, the whole array as one view, ``np.sum``."""
    db, conn, _ = outcore_open(url, cache)
    try:
        check_sum(float(np.sum(conn.root()["A"][:])), total, "outcore PostgreSQL")
    finally:
        db.close()


def raw_scan(psycopg, url, schema, total):
    """Streams every block body through a server-side cursor (binary) and sums it."""
    with psycopg.connect(url) as conn, conn.cursor(name="scan", binary=True) as cur:
        cur.itersize = 32
        cur.execute(f"SELECT bytes FROM {schema}.outcore_data")
        s = sum(float(np.frombuffer(b, dtype=np.float64).sum()) for (b,) in cur)
    check_sum(s, total, "raw SELECT")


def pg(cfg, data, log):
    """Workload 6 (needs ``--pg URL`` or OUTCORE_TEST_PG)."""
    psycopg = need("psycopg")
    part = data[: min(len(data), cfg.pg_size // 8)]
    total = float(part.sum())
    sec = Section("pg", f"6. Full scan from PostgreSQL ({part.nbytes / GiB:.3g} GiB)")
    sec.notes.append(
        f"Median of {cfg.rounds} passes after one untimed pass. outcore: a fresh `outcore.open` "
        f"per pass (budget {cfg.cache >> 20} MiB), the array as one view, `np.sum` (blocks fetched "
        "on first touch). Baseline: `SELECT bytes FROM <schema>.outcore_data` (the same block "
        "bodies) through one psycopg server-side binary cursor, each row summed with NumPy. Server "
        "and client share this machine."
    )
    schema = f"outcore_bench_{os.getpid()}"
    url = with_schema(cfg.pg_url, schema)
    try:
        outcore_build(url, part, cfg.cache)
        raw = timed(lambda: raw_scan(psycopg, cfg.pg_url, schema, total), cfg.rounds)
        log(f"  raw SELECT {gbps(part.nbytes, raw.median):.2f} GB/s")
        oc = timed(lambda: outcore_scan(url, cfg.cache, total), cfg.rounds)
        log(f"  outcore {gbps(part.nbytes, oc.median):.2f} GB/s")
    finally:
        with psycopg.connect(cfg.pg_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    header = ["system", "median s", "best s", "GB/s", "× raw SELECT"]
    sec.tables.append(
        (
            header,
            [
                [
                    "raw `SELECT bytes` + sum (baseline)",
                    fmt(raw.median),
                    fmt(raw.best),
                    fmt(gbps(part.nbytes, raw.median)),
                    "1",
                ],
                [
                    "outcore, PostgreSQL store",
                    fmt(oc.median),
                    fmt(oc.best),
                    fmt(gbps(part.nbytes, oc.median)),
                    fmt(ratio(raw.median, oc.median)),
                ],
            ],
        )
    )
    sec.chart_unit = "GB/s"
    sec.bars = [
        Bar("raw SELECT", gbps(part.nbytes, raw.median)),
        Bar("outcore", gbps(part.nbytes, oc.median)),
    ]
    return sec
