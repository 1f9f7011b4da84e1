import pytest
import transaction

import outcore


@pytest.fixture(params=["mem", "local"])
def db(request, tmp_path):
    url = "mem:" if request.param == "mem" else str(tmp_path / "db")
    transaction.abort()
    d = outcore.open(url)
    yield d
    transaction.abort()
    d.close()


@pytest.fixture
def local_url(tmp_path):
    return str(tmp_path / "db")
