"""Warnings of the Rust core reach Python's ``logging`` (the ``outcore`` logger)."""

import logging
import os
import subprocess
import sys

import pytest
import transaction

import outcore

OUTGREW = "outgrew its address-space window"


def _outgrow(db):
    """Makes the Rust core warn: an array grows past the address-space window its views
    (one with an uncommitted write) live in, and a new view needs another."""
    db.root()["A"] = A = outcore.BigArray((4096,), "u1", blksize=4096)
    A[0] = 1
    A.resize((8 << 20,))  # 2048 blocks; the window (rounded up to 2 MiB) holds 512
    A[-1] = 2
    return A


def test_rust_warnings_reach_the_outcore_logger(caplog):
    transaction.abort()
    db = outcore.open("mem:", reserve_bytes=1 << 16)
    with caplog.at_level(logging.WARNING, logger="outcore"):
        A = _outgrow(db)
    found = [r for r in caplog.records if OUTGREW in r.getMessage()]
    assert len(found) == 1, caplog.records
    record = found[0]
    assert record.name == "outcore.db.handle.windows"
    assert record.levelno == logging.WARNING
    assert record.pathname.endswith("windows.rs") and record.lineno > 0
    assert A.shape == (8 << 20,)
    transaction.abort()
    db.close()


def test_level_is_configurable_and_handlers_may_call_outcore(caplog):
    transaction.abort()
    db = outcore.open("mem:", reserve_bytes=1 << 16)
    seen = []

    class CallsBack(logging.Handler):
        def emit(self, record):
            # Delivery holds no lock of the core: calling back into outcore is fine.
            seen.append((record.getMessage(), db.history(1), list(db.root())))

    handler = CallsBack()
    logging.getLogger("outcore").addHandler(handler)
    try:
        outcore.set_log_level("ERROR")
        with caplog.at_level(logging.DEBUG, logger="outcore"):
            _outgrow(db)
        assert not [r for r in caplog.records if OUTGREW in r.getMessage()]
        outcore.set_log_level(logging.WARNING)
        transaction.abort()
        with caplog.at_level(logging.WARNING, logger="outcore"):
            _outgrow(db)
        assert [m for m, _, _ in seen if OUTGREW in m]
        assert seen[-1][2] == ["A"]
    finally:
        logging.getLogger("outcore").removeHandler(handler)
        outcore.set_log_level("warn")
    transaction.abort()
    db.close()


def test_events_of_other_threads_are_delivered_too():
    # An event outside any outcore call (here: at import, about a bad OUTCORE_LOG) goes
    # through the queue and the delivery thread.
    code = """
import logging, threading
got = threading.Event()
class Handler(logging.Handler):
    def emit(self, record):
        if "ignoring OUTCORE_LOG" in record.getMessage():
            got.set()
logging.getLogger("outcore").addHandler(Handler())
import outcore
assert got.wait(120), "never delivered"
print("delivered")
"""
    env = {**os.environ, "OUTCORE_LOG": "outcore=loud"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "delivered\n", out.stderr


def test_bad_levels_are_refused():
    with pytest.raises(ValueError, match="bad log filter"):
        outcore.set_log_level("outcore=loud")
    with pytest.raises(TypeError, match="logging level"):
        outcore.set_log_level(None)
