"""The wheel as shipped: `maturin build --release` installs into a clean venv and works there.

The build reuses the release artifacts of `maturin develop --release` (seconds when they are
current); the fresh venv gets the wheel and its dependencies and nothing else.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

SMOKE = textwrap.dedent(
    """
    import pathlib, sys
    import numpy as np, transaction, outcore

    package = pathlib.Path(outcore.__file__).parent
    assert package.is_relative_to(sys.prefix), f"{package} is not the venv's copy"
    assert (package / "py.typed").exists() and (package / "_native.pyi").exists()
    url = sys.argv[1]
    with outcore.open(url) as db:
        db.root()["A"] = A = outcore.BigArray((1000, 3), "i8")
        A[:] = np.arange(3000).reshape(1000, 3)
        transaction.commit()
    with outcore.open(url, readonly=True) as db:
        A = db.root()["A"]
        assert A[999, 2] == 2999 and int(A.sum()) == 2999 * 3000 // 2
        assert db.stats().arrays == 1
    print("ok", outcore.__version__)
    """
)


def run(*args, **kwargs):
    """Runs a command; a failure shows its output."""
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, f"{args[:3]} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.mark.slow
def test_wheel_installs_into_a_clean_venv(tmp_path):
    maturin = shutil.which("maturin", path=str(pathlib.Path(sys.executable).parent))
    if maturin is None:
        pytest.skip("maturin is not installed next to this Python (scripts/test.sh installs it)")
    env = dict(os.environ, PYO3_PYTHON=sys.executable)
    env.pop("VIRTUAL_ENV", None)
    wheels = tmp_path / "wheels"
    build = [maturin, "build", "--release", "--locked", "-q", "-o", wheels, "-i", sys.executable]
    run(*build, cwd=ROOT, env=env)
    (wheel,) = wheels.glob("outcore-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # This venv's pip installs into the clean one (which has no pip of its own).
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", wheel)
    # Not from the source tree: `import outcore` must find the installed copy.
    out = run(python, "-c", SMOKE, tmp_path / "store", cwd=tmp_path)
    assert out.stdout.startswith("ok "), out.stdout + out.stderr
