#!/usr/bin/env python3
"""outcore side by side: measures outcore and the alternatives (numpy.memmap, h5py, zarr v3,
TensorStore, raw files, PostgreSQL) on the same data in the same run and writes the ratios to
bench/results/RESULTS.md and bench/results/chart.png.

    bash bench/setup.sh                     # once: bench/.venv (Python 3.12) with every peer
    python bench/run.py --quick             # smoke run, about a minute
    python bench/run.py --full              # the issue's sizes (4 GiB; run on a quiet machine)
    python bench/run.py --full --only scan,fault --pg postgresql://...

Workloads: scan, fault, write, append, demo, pg (pg runs when --pg or OUTCORE_TEST_PG gives a
postgresql:// url); storage format v2 (issue 15): small-commits, many-small, resize,
deltas-scan; write path (issue 16): write-new, write-rewrite, mapping-budget; demo-wendelin
(outcore's demo against wendelin.core's, which needs `bash bench/wendelin-setup.sh` once);
latency (issue 17): random-rows (root: a memory cgroup); dask (issue 19): a reduction and a
computed write on a 2-process dask.distributed cluster, outcore vs zarr v3 vs one process;
object storage (issue 18): s3 (the S3 server AWS_* and OUTCORE_TEST_S3_URL name, else a
private SeaweedFS started for the run).
Run from any interpreter: it re-executes itself under bench/.venv.
"""

import argparse
import os
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
VENV_PYTHON = os.path.join(HERE, ".venv", "bin", "python")
WORKLOADS = (
    "scan",
    "fault",
    "write",
    "append",
    "demo",
    "pg",
    "small-commits",
    "many-small",
    "resize",
    "deltas-scan",
    "write-new",
    "write-rewrite",
    "mapping-budget",
    "demo-wendelin",
    "random-rows",
    "dask",
    "s3",
)


def reexec_in_venv():
    """Re-runs this script under bench/.venv's interpreter, where setup.sh installed the peers."""
    if os.path.abspath(sys.prefix) == os.path.join(HERE, ".venv"):
        return
    if not os.path.exists(VENV_PYTHON):
        sys.exit(
            "bench/.venv is missing: run `bash bench/setup.sh` first (creates it with "
            "Python >= 3.12, the peers and a release build of outcore)"
        )
    os.execv(VENV_PYTHON, [VENV_PYTHON, os.path.abspath(__file__), *sys.argv[1:]])


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, 3 rounds (default)")
    size.add_argument("--full", action="store_true", help="the issue's sizes: 4 GiB, 1 GiB budget")
    p.add_argument("--only", help=f"comma-separated workloads of {','.join(WORKLOADS)}")
    p.add_argument(
        "--systems",
        help="comma-separated readers for scan/fault (outcore,outcore-lz4,"
        "memmap,h5-contig,h5-chunked,zarr,tensorstore)",
    )
    p.add_argument("--pg", help="postgresql:// url for workload 6 (default: $OUTCORE_TEST_PG)")
    p.add_argument(
        "--dir", default="/var/tmp", help="where the scratch directory of the stores is made"
    )
    p.add_argument(
        "--out", default=os.path.join(HERE, "results"), help="where RESULTS.md and chart.png go"
    )
    p.add_argument("--size-mib", type=int, help="array size of workloads 1-3, write-new/-rewrite")
    p.add_argument("--cache-mib", type=int, help="outcore's budget (cache_bytes)")
    p.add_argument("--slab-mib", type=int, help="bytes per read of h5py, zarr, TensorStore scans")
    p.add_argument("--dask-mib", type=int, help="array size of workload dask (half is written)")
    p.add_argument("--rounds", type=int, help="timed repetitions (medians are reported)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    return p.parse_args(argv)


def config(args):
    from suite.common import Config, MiB

    cfg = Config.full() if args.full else Config.quick()
    if args.size_mib:
        cfg.size = args.size_mib * MiB
    if args.cache_mib:
        cfg.cache = args.cache_mib * MiB
    if args.slab_mib:
        cfg.slab = args.slab_mib * MiB
    if args.dask_mib:
        cfg.dask_size = args.dask_mib * MiB
    if args.rounds:
        cfg.rounds = max(1, args.rounds)
    cfg.pg_url = args.pg or os.environ.get("OUTCORE_TEST_PG")
    return cfg


def main(argv=None):
    reexec_in_venv()
    sys.path.insert(0, HERE)
    args = parse_args(argv if argv is not None else sys.argv[1:])
    try:
        from suite import (
            append,
            common,
            dask_cluster,
            deltas,
            demo,
            demo_vs_wendelin,
            many_small,
            mappings,
            pg,
            read,
            report,
            resize,
            rows,
            s3,
            small_commits,
            systems,
            write,
            write_fill,
        )
    except ImportError as e:
        sys.exit(f"{e}: bench/.venv is incomplete; run `bash bench/setup.sh`")

    cfg = config(args)
    only = set(args.only.split(",")) if args.only else set(WORKLOADS)
    unknown = only - set(WORKLOADS)
    if unknown:
        sys.exit(f"unknown workloads: {', '.join(sorted(unknown))} (known: {', '.join(WORKLOADS)})")
    picked = set(args.systems.split(",")) if args.systems else None
    if picked and picked - set(systems.READERS):
        sys.exit(
            f"unknown systems: {', '.join(sorted(picked - set(systems.READERS)))} "
            f"(known: {', '.join(systems.READERS)})"
        )
    if "pg" in only and not cfg.pg_url:
        if args.only:
            sys.exit(
                "workload pg needs --pg URL or OUTCORE_TEST_PG (scripts/pg-test-server.sh start)"
            )
        only.discard("pg")
    skipped = []
    why = demo_vs_wendelin.missing() if "demo-wendelin" in only else None
    if why:
        only.discard("demo-wendelin")
        skipped.append(("demo-wendelin", f"skipped: {why}"))
    command = "python bench/run.py " + " ".join(sys.argv[1:])
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

    # A scratch directory of our own: the only thing removed at the end.
    cfg.dir = tempfile.mkdtemp(prefix="outcore-bench-", dir=args.dir)
    machine_lines = common.machine(cfg)
    for line in machine_lines:
        log(line)
    for key, why in skipped:
        log(f"workload {key} {why}")
    sections, errors = [], skipped

    def run(key, fn):
        if key not in only:
            return
        log(f"workload {key}")
        try:
            sections.append(fn())
        except Exception as e:  # noqa: BLE001 -- one broken peer must not lose the others
            traceback.print_exc()
            errors.append((key, f"{type(e).__name__}: {e}"))

    try:
        data = total = readers = None
        if only & {"scan", "fault", "write", "pg", "s3"}:
            log(f"generating {cfg.n * 8 >> 20} MiB of data")
            data, total = common.make_data(cfg.n)
        if only & {"scan", "fault"}:
            readers = systems.readers(cfg, picked)
            log("building the stores (untimed)")
            read.prepare(readers, data, log)
        run("scan", lambda: read.scan(cfg, readers, data, total, log))
        run("fault", lambda: read.fault(cfg, readers, data, log))
        run("write", lambda: write.write(cfg, data, log))
        run("append", lambda: append.append(cfg, log))
        run("demo", lambda: demo.demo(cfg, log))
        run("pg", lambda: pg.pg(cfg, data, log))
        run("small-commits", lambda: small_commits.small_commits(cfg, log))
        run("many-small", lambda: many_small.many_small(cfg, log))
        run("resize", lambda: resize.resize(cfg, log))
        run("deltas-scan", lambda: deltas.deltas_scan(cfg, log))
        run("write-new", lambda: write_fill.write_new(cfg, log))
        run("write-rewrite", lambda: write_fill.write_rewrite(cfg, log))
        run("mapping-budget", lambda: mappings.mapping_budget(cfg, log))
        run("demo-wendelin", lambda: demo_vs_wendelin.demo_vs_wendelin(cfg, log))
        run("random-rows", lambda: rows.random_rows(cfg, log))
        run("dask", lambda: dask_cluster.dask_cluster(cfg, log))
        run("s3", lambda: s3.s3(cfg, data, log))
    finally:
        if not args.keep:
            common.remove(cfg.dir)
    if "pg" not in only and not args.only:
        errors.append(("pg", "skipped: no --pg URL and no OUTCORE_TEST_PG"))
    report.write(cfg, sections, machine_lines, command, errors, args.out)
    log(f"wrote {os.path.relpath(args.out)}/RESULTS.md and chart.png")
    checks = [c for s in sections for c in s.checks]
    for c in checks:
        print(f"  {common.verdict(c.passed):4}  {c.what}: {c.measured} (goal {c.target})")
    return 1 if errors and any(not e.startswith("skipped") for _, e in errors) else 0


if __name__ == "__main__":
    sys.exit(main())
