"""The storage interface behaves the same on file:// and on a real S3 server."""

from __future__ import annotations

from pathlib import Path

import pytest

from convit.storage import StorageError, open_storage


@pytest.fixture(params=["file", "s3"])
def root_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/root"
    return f"s3://{request.getfixturevalue('bucket')}/some/prefix"


def test_roundtrip_list_range_delete(root_uri: str, tmp_path: Path) -> None:
    store = open_storage(root_uri)
    store.put("a/b.bin", b"0123456789")
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * 1000)
    store.put_file("a/c.bin", src)
    assert store.get("a/b.bin") == b"0123456789"
    assert store.get_range("a/b.bin", 3, 4) == b"3456"
    assert store.get("a/c.bin") == src.read_bytes()
    assert list(store.list("a/")) == ["a/b.bin", "a/c.bin"]
    assert store.size("a/c.bin") == 256_000
    assert store.size("a/missing") is None
    store.delete("a/b.bin")
    assert not store.exists("a/b.bin")
    with pytest.raises(StorageError, match="does not exist"):
        store.get("a/b.bin")


def test_missing_bucket_is_one_clear_error(s3: dict[str, str]) -> None:
    store = open_storage("s3://no-such-bucket-here/x")
    with pytest.raises(StorageError, match="no-such-bucket-here"):
        store.check_root()
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist"):
        store.get("k")


def test_bad_keys_and_schemes_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="unsupported storage URI"):
        open_storage("http://example.com/x")
    store = open_storage(f"file://{tmp_path}")
    with pytest.raises(StorageError, match="invalid object key"):
        store.get("../etc/passwd")
