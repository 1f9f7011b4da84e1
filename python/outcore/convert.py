"""zarr and HDF5 in and out of a store from the command line: ``python -m outcore.convert``.

    python -m outcore.convert import STORE NAME SRC [--dataset PATH] [--blksize BYTES]
                                    [--force] [--compression CODEC] [--blobs S3_URL]
    python -m outcore.convert export STORE NAME DST [--dataset PATH] [--zarr-format 2|3]
                                    [--force]

SRC/DST is a ``.zarr`` directory or an ``.h5``/``.hdf5`` file; the dataset inside an HDF5 file
is ``FILE.h5:/group/ds`` or ``--dataset /group/ds`` (import: the file's only dataset by
default; export: the array's name). The ``outcore import``/``outcore export`` commands run this
module for such paths, with ``--json``: every line on stdout is then one JSON object,
``{"progress": [done, total]}`` per slab, then ``{"done": {...}}`` or
``{"error": message, "exit": code}``. zarr-python and h5py do the format work
(:mod:`outcore._interop`).

An import is one transaction (blocks written beyond the dirty budget are spilled to disk ahead
of the commit): a failed import leaves the store unchanged. An export reads one snapshot and
leaves no partial target: a new ``.zarr`` directory or HDF5 file is written under a temporary
name and renamed into place; a dataset added to an existing HDF5 file is deleted again if the
export fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from typing import Any

import transaction

from ._array import BigArray
from ._db import DB
from ._interop import Progress, from_hdf5, from_zarr, to_hdf5, to_zarr
from .errors import ConflictError, Error

#: An HDF5 file name, optionally followed by ``:`` and the dataset path inside it.
_H5_PATH = re.compile(r"^(?P<file>.*\.(?:h5|hdf5))(?::(?P<dataset>.*))?$", re.IGNORECASE)
#: Exit codes shared with the ``outcore`` command: runtime error, usage error, conflict.
RUNTIME, USAGE, CONFLICT = 1, 2, 4


class Failure(Exception):
    """An expected failure: its message is the whole story (no traceback)."""

    def __init__(self, message: str, code: int = RUNTIME) -> None:
        super().__init__(message)
        self.code = code


def _need(module: str, extra: str) -> None:
    """Imports ``module`` or fails naming what to install (into this interpreter)."""
    try:
        __import__(module)
    except ImportError as e:
        raise Failure(
            f"{sys.executable} cannot import {module} ({e}): install it with "
            f"`{sys.executable} -m pip install 'outcore[{extra}]'`"
        ) from None


def kind(path: str) -> tuple[str, str, str | None]:
    """``("zarr", path, None)`` or ``("hdf5", file, dataset_or_None)`` for ``path``."""
    m = _H5_PATH.match(path)
    if m:
        return "hdf5", m["file"], m["dataset"] or None
    if path.rstrip("/").lower().endswith(".zarr") or os.path.isdir(path):
        return "zarr", path, None
    raise Failure(f"{path} is neither a .zarr directory nor an .h5/.hdf5 file", USAGE)


def _dataset(given: str | None, option: str | None) -> str | None:
    """The dataset named in the path (``given``) or by ``--dataset`` (``option``)."""
    if given and option and given.strip("/") != option.strip("/"):
        raise Failure(f"two datasets given: {given!r} in the path and --dataset {option!r}", USAGE)
    return given or option


def _user() -> str:
    """The transaction's user, as ``outcore`` names it."""
    return next((os.environ[v] for v in ("USER", "LOGNAME") if os.environ.get(v)), "outcore")


def _only_dataset(h5file: str) -> str:
    """The path of the only dataset in ``h5file``; fails naming them if there are several."""
    import h5py

    found: list[str] = []
    with h5py.File(h5file, "r") as f:
        f.visititems(
            lambda name, obj: found.append("/" + name) if isinstance(obj, h5py.Dataset) else None
        )
    if len(found) == 1:
        return found[0]
    listed = ", ".join(found[:10]) + (", ..." if len(found) > 10 else "")
    raise Failure(
        f"{h5file} holds {len(found)} datasets{f' ({listed})' if found else ''}: name one as "
        f"{h5file}:/path/to/dataset or with --dataset"
    )


def _describe(A: BigArray) -> dict[str, Any]:
    """What the ``done`` line tells of ``A``."""
    dtype = A.dtype
    return {
        "shape": list(A.shape),
        "dtype": dtype.str if dtype.fields is None else str(dtype),
        "order": A.order,
        "nbytes": A.nbytes,
    }


#: Writes one record (``--json``: a JSON line on stdout).
Emit = Callable[[dict[str, Any]], None]


def _check_format(fmt: str, dataset: str | None) -> None:
    """Refuses ``--dataset`` for zarr, and says what to install when the format's library is
    missing."""
    if fmt == "zarr":
        if dataset:
            raise Failure("--dataset applies to HDF5 files only", USAGE)
        _need("zarr", "zarr")
    else:
        _need("h5py", "hdf5")


def do_import(args: argparse.Namespace, emit: Emit) -> dict[str, Any]:
    """``import``: one transaction creating (or with --force replacing) ``args.name``."""
    fmt, path, given = kind(args.src)
    dataset = _dataset(given, args.dataset)
    _check_format(fmt, dataset)
    if not os.path.exists(path):
        raise Failure(f"no {'zarr array' if fmt == 'zarr' else 'HDF5 file'} at {path}")
    if fmt == "hdf5" and dataset is None:
        dataset = _only_dataset(path)
    db = DB(args.store, compression=args.compression, blobs=args.blobs)
    try:
        tm = transaction.TransactionManager()
        root = db.open(transaction_manager=tm).root()
        if args.name in root and not args.force:
            raise Failure(
                f"{args.store} already has an array named {args.name!r} (use --force to replace it)"
            )
        progress = _progress(emit)
        if fmt == "zarr":
            A = from_zarr(path, root, args.name, blksize=args.blksize, progress=progress)
        else:
            A = from_hdf5(
                path, root, args.name, path=dataset, blksize=args.blksize, progress=progress
            )
        done = _describe(A)
        txn = tm.get()
        txn.user = _user()
        txn.note(f"import {args.name}")
        tm.commit()
        done["tid"] = f"{db.history(1)[0]['tid']:016x}"
    except BaseException:
        tm.abort()
        raise
    finally:
        db.close()
    done["source"] = path if fmt == "zarr" else f"{path}:{dataset}"
    return done


def _temp_name(path: str) -> str:
    """A temporary name next to ``path`` (same file system: renamed into place at the end)."""
    head, tail = os.path.split(path.rstrip("/"))
    return os.path.join(head, f".{tail}.outcore-export-{os.getpid()}")


def do_export(args: argparse.Namespace, emit: Emit) -> dict[str, Any]:
    """``export``: ``args.name`` at the store's head to a new zarr array or HDF5 dataset."""
    fmt, path, given = kind(args.dst)
    dataset = _dataset(given, args.dataset)
    if fmt != "zarr" and args.zarr_format is not None:
        raise Failure("--zarr-format applies to .zarr targets only", USAGE)
    _check_format(fmt, dataset)
    db = DB(args.store, readonly=True)
    try:
        root = db.open(transaction_manager=transaction.TransactionManager()).root()
        if args.name not in root:
            raise Failure(f"{args.store} has no array named {args.name!r}")
        A = root[args.name]
        progress = _progress(emit)
        if fmt == "zarr":
            _export_zarr(A, path, args, progress)
            target = path
        else:
            dataset = dataset or args.name
            _export_hdf5(A, path, dataset, args.force, progress)
            target = f"{path}:{dataset}"
        done = _describe(A)
    finally:
        db.close()
    done["target"] = target
    return done


def _progress(emit: Emit) -> Progress:
    return lambda done, total: emit({"progress": [done, total]})


def _export_zarr(A: BigArray, path: str, args: argparse.Namespace, progress: Progress) -> None:
    if os.path.exists(path) and not args.force:
        raise Failure(f"{path} exists (use --force to replace it)")
    temp = _temp_name(path)
    try:
        to_zarr(A, temp, zarr_format=args.zarr_format or 3, overwrite=True, progress=progress)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        os.rename(temp, path)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _export_hdf5(A: BigArray, path: str, dataset: str, force: bool, progress: Progress) -> None:
    import h5py

    if not os.path.exists(path):
        temp = _temp_name(path)
        try:
            with h5py.File(temp, "w") as f:
                to_hdf5(A, f, dataset, progress=progress)
            os.rename(temp, path)
        finally:
            if os.path.exists(temp):
                os.remove(temp)
        return
    with h5py.File(path, "a") as f:
        if dataset in f:
            if not isinstance(f[dataset], h5py.Dataset):
                raise Failure(f"{path}:{dataset} is an HDF5 group, not a dataset")
            if not force:
                raise Failure(
                    f"{path} already has a dataset {dataset!r} (use --force to replace it)"
                )
            del f[dataset]
        try:
            to_hdf5(A, f, dataset, progress=progress)
        except BaseException:
            if dataset in f:
                del f[dataset]
            raise


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m outcore.convert",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--json", action="store_true", help="JSON lines on stdout (for `outcore`)")
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="a .zarr array or HDF5 dataset becomes an array")
    imp.add_argument("store")
    imp.add_argument("name")
    imp.add_argument("src")
    imp.add_argument("--dataset")
    imp.add_argument("--blksize", type=int)
    imp.add_argument("--force", action="store_true")
    imp.add_argument("--compression")
    imp.add_argument("--blobs")
    exp = sub.add_parser("export", help="an array becomes a .zarr array or HDF5 dataset")
    exp.add_argument("store")
    exp.add_argument("name")
    exp.add_argument("dst")
    exp.add_argument("--dataset")
    exp.add_argument("--zarr-format", type=int, choices=(2, 3))
    exp.add_argument("--force", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs one import or export; returns the exit code (0, or 1, 2, 4 as ``outcore``)."""
    args = _parser().parse_args(argv)

    def emit(record: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(record), flush=True)
        elif "progress" in record:
            done, total = record["progress"]
            print(f"\r{done}/{total} bytes", end="", file=sys.stderr, flush=True)

    try:
        run = do_import if args.command == "import" else do_export
        done = run(args, emit)
    except Failure as e:
        return _fail(args.json, str(e), e.code)
    except ConflictError as e:
        return _fail(args.json, f"write conflict: {e} (run the command again)", CONFLICT)
    except (Error, OSError, KeyError, TypeError, ValueError) as e:
        return _fail(args.json, str(e.args[0]) if isinstance(e, KeyError) else str(e), RUNTIME)
    if args.json:
        emit({"done": done})
    else:
        print(f"\r{args.command}ed {args.name}: {json.dumps(done)}")
    return 0


def _fail(as_json: bool, message: str, code: int) -> int:
    if as_json:
        print(json.dumps({"error": message, "exit": code}), flush=True)
    else:
        print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
