import os
import uuid

import pytest
import transaction

import outcore


def pg_url():
    """A fresh store on the test PostgreSQL server (scripts/test.sh starts one)."""
    base = os.environ.get("OUTCORE_TEST_PG")
    if not base:
        why = "OUTCORE_TEST_PG is not set (scripts/test.sh starts a server)"
        if os.environ.get("OUTCORE_REQUIRE_PG"):
            # The test command promised a server: a broken set-up must not pass as green.
            pytest.fail(f"{why}, but OUTCORE_REQUIRE_PG says this run has one")
        pytest.skip(why)
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}outcore_schema=py_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_url(tmp_path, monkeypatch):
    """A fresh ``s3://bucket/prefix`` on the test S3 server (scripts/test.sh starts one).
    Default disk caches go under the test's temporary directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    base = os.environ.get("OUTCORE_TEST_S3_URL")
    if not base:
        why = "OUTCORE_TEST_S3_URL is not set (scripts/test.sh starts an S3 server)"
        if os.environ.get("OUTCORE_REQUIRE_S3"):
            pytest.fail(f"{why}, but OUTCORE_REQUIRE_S3 says this run has one")
        pytest.skip(why)
    return f"{base.rstrip('/')}/py-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["mem", "local", "pg"])
def db(request, tmp_path):
    if request.param == "mem":
        url = "mem:"
    elif request.param == "local":
        url = str(tmp_path / "db")
    else:
        url = pg_url()
    transaction.abort()
    d = outcore.open(url)
    yield d
    transaction.abort()
    d.close()


@pytest.fixture
def local_url(tmp_path):
    return str(tmp_path / "db")


@pytest.fixture(params=["local", "pg"])
def shared_url(request, tmp_path):
    """The url of a fresh store that other processes can open too (embedded or PostgreSQL)."""
    return str(tmp_path / "db") if request.param == "local" else pg_url()


@pytest.fixture(params=["local", "pg"])
def index_url(request, tmp_path):
    """The url of a fresh store to hold the index of an object-storage store."""
    return str(tmp_path / "db") if request.param == "local" else pg_url()


@pytest.fixture
def pg_store_url():
    """The url of a fresh store on the test PostgreSQL server."""
    return pg_url()
