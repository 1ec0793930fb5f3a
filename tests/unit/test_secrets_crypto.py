"""Encryption of secrets at rest: AES-256-GCM round trips, the key's sources and its file."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest

from sandlot.errors import SecretError
from sandlot.secrets.crypto import (
    KEY_ENV,
    NONCE_BYTES,
    VERSION,
    Cipher,
    decode_key,
    encode_key,
    key_path,
    load_cipher,
    load_key,
)


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def test_a_value_round_trips_and_each_encryption_differs() -> None:
    cipher = Cipher(os.urandom(32))
    value = "pässwörd \U0001f511 with spaces\nand lines"
    one = cipher.encrypt("t-1", "TOKEN", value)
    two = cipher.encrypt("t-1", "TOKEN", value)
    assert one != two  # a fresh nonce every time
    assert one[0] == VERSION and len(one) == 1 + NONCE_BYTES + len(value.encode()) + 16
    assert value.encode() not in one
    assert cipher.decrypt("t-1", "TOKEN", one) == value == cipher.decrypt("t-1", "TOKEN", two)


def test_a_wrong_key_is_a_secret_error_naming_the_secret() -> None:
    blob = Cipher(os.urandom(32)).encrypt("t", "DB_PASSWORD", "s3cret-value")
    with pytest.raises(SecretError, match="DB_PASSWORD") as caught:
        Cipher(os.urandom(32)).decrypt("t", "DB_PASSWORD", blob)
    assert "does not decrypt" in str(caught.value)
    assert "s3cret-value" not in str(caught.value)
    assert caught.value.details == {"name": "DB_PASSWORD"}


def test_a_ciphertext_is_bound_to_its_tenant_and_name() -> None:
    cipher = Cipher(os.urandom(32))
    blob = cipher.encrypt("alice", "TOKEN", "alice's token")
    for tenant, name in [("alice", "OTHER"), ("bob", "TOKEN"), ("alic", "eTOKEN")]:
        with pytest.raises(SecretError, match="does not decrypt"):
            cipher.decrypt(tenant, name, blob)
    assert cipher.decrypt("alice", "TOKEN", blob) == "alice's token"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # the tag
        lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:],  # the ciphertext
        lambda b: bytes([2]) + b[1:],  # an unknown version
        lambda b: b[:10],  # cut short
        lambda b: b"",
    ],
)
def test_tampered_or_unknown_ciphertexts_are_secret_errors(mangle) -> None:
    cipher = Cipher(os.urandom(32))
    blob = cipher.encrypt("t", "NAME", "value-1234")
    with pytest.raises(SecretError, match="NAME"):
        cipher.decrypt("t", "NAME", mangle(blob))


def test_the_key_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    for text in (encode_key(key), encode_key(key).rstrip("="), f"  {encode_key(key)}\n"):
        monkeypatch.setenv(KEY_ENV, text)
        assert load_key(tmp_path) == key
    assert not key_path(tmp_path).exists()  # the environment wins: no key file made


@pytest.mark.parametrize(
    "text",
    [
        "not base64 at all!",
        base64.urlsafe_b64encode(os.urandom(16)).decode(),  # 16 bytes: too short
        base64.urlsafe_b64encode(os.urandom(33)).decode(),
        base64.b64encode(b"\xfb" * 32).decode(),  # standard, not urlsafe, base64
        "a" * 44,
    ],
)
def test_a_malformed_key_is_a_clear_secret_error(
    text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, text)
    with pytest.raises(SecretError, match="SANDLOT_SECRET_KEY is not a secret key") as caught:
        load_key(tmp_path)
    assert "32 random bytes in urlsafe base64" in str(caught.value)
    assert text not in str(caught.value)  # never echoes the key


def test_the_key_file_is_created_0600_once_and_reused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    key = load_key(home)
    path = key_path(home)
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert decode_key(path.read_text(), "file") == key and len(key) == 32
    assert load_key(home) == key
    assert [p.name for p in home.iterdir()] == ["secret.key"]  # no temporary file left
    blob = load_cipher(home).encrypt("t", "N", "v" * 10)
    assert load_cipher(home, create=False).decrypt("t", "N", blob) == "v" * 10


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    barrier = threading.Barrier(8)
    keys: list[bytes] = []

    def go() -> None:
        barrier.wait()
        keys.append(load_key(tmp_path))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.key"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_can_read_is_refused(mode: int, tmp_path: Path) -> None:
    load_key(tmp_path)
    os.chmod(key_path(tmp_path), mode)
    with pytest.raises(SecretError, match=rf"refusing the secret key file .*{mode:04o}.*chmod 600"):
        load_key(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_key_file_of_another_user_is_refused(tmp_path: Path) -> None:
    load_key(tmp_path)
    os.chown(key_path(tmp_path), 65534, 65534)
    with pytest.raises(SecretError, match="belongs to uid 65534"):
        load_key(tmp_path)


def test_a_symlinked_or_malformed_key_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text(encode_key(os.urandom(32)))
    target.chmod(0o600)
    home = tmp_path / "home"
    home.mkdir()
    key_path(home).symlink_to(target)
    with pytest.raises(SecretError, match="cannot read the secret key file"):
        load_key(home)
    key_path(home).unlink()
    fd = os.open(key_path(home), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"\xff\xfe garbage")
    os.close(fd)
    with pytest.raises(SecretError, match=r"the secret key file .* is not a secret key"):
        load_key(home)


def test_no_key_file_and_no_creation_is_a_secret_error(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="no secret key"):
        load_key(tmp_path, create=False)
    assert not key_path(tmp_path).exists()
