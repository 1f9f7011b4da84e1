"""Address space: views of arrays of any size, many arrays, views across a window change.

Regression tests for writes lost across a reservation change, arrays that could not be
created or opened past ~32-64 TiB, and the 2,031st array of a connection failing.
"""

import numpy as np
import pytest
import transaction

import outcore


@pytest.fixture
def mem():
    transaction.abort()
    d = outcore.open("mem:")
    yield d
    transaction.abort()
    d.close()


def test_writes_through_views_from_before_and_after_a_window_change_are_all_kept(mem):
    root = mem.root()
    root["A"] = A = outcore.BigArray((4, 3), "f8")
    transaction.commit()
    a = A[:]
    A.resize((7 << 30, 3))  # 168 GiB: past the window `a` lives in
    b = A[:]
    a[0, 0] = 100
    b[0, 1] = 200
    transaction.commit()
    assert A[0].tolist() == [100, 200, 0]
    # After the boundary both views show the committed data.
    assert a[0].tolist() == [100, 200, 0] and b[0].tolist() == [100, 200, 0]


def test_same_bytes_written_differently_through_two_windows_fail_the_commit(mem):
    root = mem.root()
    root["A"] = A = outcore.BigArray((4, 3), "f8")
    A[1, 1] = 7
    transaction.commit()
    a = A[:]
    A.resize((7 << 30, 3))
    b = A[:]
    a[0, 0] = 1
    b[0, 0] = 2
    with pytest.raises(ValueError, match="changed differently"):
        transaction.commit()
    transaction.abort()
    assert A.shape == (4, 3)
    assert A[0].tolist() == [0, 0, 0] and A[1, 1] == 7


def test_writes_through_an_old_view_after_the_change_are_committed(mem):
    root = mem.root()
    root["A"] = A = outcore.BigArray((1 << 20,), "u1", blksize=1 << 16)
    transaction.commit()
    a = A[:]
    A.append(np.ones(200 << 20, "u1"))  # past the default 64 MiB window
    b = A[:]
    a[10] = 3  # a page b never wrote
    b[(1 << 20) + 5] = 9
    transaction.commit()
    assert A[10] == 3 and A[(1 << 20) + 5] == 9 and A[-1] == 1


@pytest.mark.parametrize("bits", [40, 47, 55, 62])
def test_arrays_past_the_address_space_are_created_viewed_in_parts_and_grown(mem, bits):
    root = mem.root()
    n = 2**bits - 1
    root["A"] = A = outcore.BigArray((n,), "u1")
    A[:10] = 1
    A[-1] = 7
    A[n // 2] = 5
    transaction.commit()
    assert A[-1] == 7 and A[0] == 1 and A[n // 2] == 5 and A[-2] == 0
    A.append(np.arange(3, dtype="u1"))
    assert A[-4:].tolist() == [7, 0, 1, 2]
    A.resize((n + 100,))
    assert A[-1] == 0 and A[n - 1] == 7
    transaction.commit()
    if bits >= 47:  # more than the 128 TiB of a process
        with pytest.raises(MemoryError, match="address space"):
            np.asarray(A)
    A.resize((0,))
    transaction.commit()
    assert A.shape == (0,)


def test_the_largest_array_is_2_63_bytes(mem):
    root = mem.root()
    root["A"] = A = outcore.BigArray((2**63 - 1,), "u1")
    A[-1] = 1
    transaction.commit()
    assert A[-1] == 1
    with pytest.raises(ValueError, match="too large"):
        A.append(np.zeros(1, "u1"))
    with pytest.raises(ValueError, match="too large"):
        root["B"] = outcore.BigArray((2**62,), "u2")


def test_many_arrays_in_one_connection(tmp_path):
    transaction.abort()
    d = outcore.open(str(tmp_path / "db"))
    root = d.root()
    n = 100_000
    for i in range(n):
        root[f"a{i}"] = A = outcore.BigArray((8,), "u1", blksize=4096)
        A[i % 8] = i % 251 + 1
        if i % 10_000 == 9_999:
            transaction.commit()
    arrays = [root[f"a{i}"] for i in range(n)]
    total = sum(int(A[:].sum()) for A in arrays)
    assert total == sum(i % 251 + 1 for i in range(n))
    transaction.abort()
    d.close()
