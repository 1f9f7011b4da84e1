"""The package as shipped: version, licenses, an extension without debug info."""

import pathlib
import re

import outcore


def test_version_is_the_crate_version():
    root = pathlib.Path(__file__).resolve().parents[1]
    cargo = (root / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    assert outcore.__version__ == version


def test_license_files_exist():
    root = pathlib.Path(__file__).resolve().parents[1]
    assert "MIT License" in (root / "LICENSE-MIT").read_text()
    assert "Apache License" in (root / "LICENSE-APACHE").read_text()


def _elf_sections(data):
    """The section names of a 64-bit little-endian ELF file."""
    shoff = int.from_bytes(data[0x28:0x30], "little")
    shentsize, shnum, shstrndx = (int.from_bytes(data[o : o + 2], "little") for o in (0x3A, 0x3C, 0x3E))
    headers = [data[shoff + i * shentsize : shoff + (i + 1) * shentsize] for i in range(shnum)]
    strtab = headers[shstrndx]
    str_off = int.from_bytes(strtab[0x18:0x20], "little")
    names = []
    for h in headers:
        start = str_off + int.from_bytes(h[0:4], "little")
        names.append(data[start : data.index(b"\0", start)].decode())
    return names


def test_the_extension_carries_no_debug_info():
    so = pathlib.Path(outcore._native.__file__)
    data = so.read_bytes()
    assert data[:4] == b"\x7fELF"
    debug = [n for n in _elf_sections(data) if n.startswith(".debug")]
    assert not debug, f"{so} ({len(data) >> 20} MiB) has debug sections {debug}"


def test_one_bigarray_per_array_and_connection():
    import transaction

    transaction.abort()
    db = outcore.open("mem:")
    root = db.root()
    root["A"] = A = outcore.BigArray((3,), "u1")
    assert root["A"] is A and root["A"] is root["A"]
    transaction.commit()
    assert root["A"] is A
    other = db.open(transaction_manager=transaction.TransactionManager())
    assert other.root()["A"] is not A and other.root()["A"] is other.root()["A"]
    other.close()
    db.close()


def test_options_are_keyword_only_and_the_package_is_typed():
    import inspect

    params = inspect.signature(outcore.open).parameters
    assert [p.name for p in params.values() if p.kind is p.POSITIONAL_OR_KEYWORD] == ["url"]
    try:
        outcore.open("mem:", 1 << 20)
    except TypeError as e:
        assert "positional" in str(e)
    else:
        raise AssertionError("a positional option was accepted")
    package = pathlib.Path(outcore.__file__).parent
    assert (package / "py.typed").exists() and (package / "_native.pyi").exists()
