"""Key wrapping for each target against the Key Protect stand-in (which really wraps with
AES-GCM and refuses what the documentation does not allow), IAM tokens, and the CLI."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from lukspack.cli import main
from lukspack.cloud.errors import CloudError, CredentialsError
from lukspack.cloud.iam import TokenSource, fetch_token
from lukspack.cloud.kms import KeyProtect, parse_key_crn, wrap_key, wrap_plaintext
from lukspack.errors import KeyFileError
from tests.cloud.conftest import API_KEY, INSTANCE, ROOT_KEY, STANDARD_KEY


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def keyfile(tmp_path: Path, data: bytes, name: str = "k.key") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    p.chmod(0o600)
    return p


DEK = base64.b64encode(bytes(range(32)))  # 44 characters, decodes to a 32-byte XTS key


def test_what_is_wrapped_per_target() -> None:
    # IBM's VPC example: passphrase abc123 -> `echo -n abc123 | base64` -> YWJjMTIz
    assert wrap_plaintext(b"abc123", "vpc") == "YWJjMTIz"
    with pytest.raises(KeyFileError, match="newline"):
        wrap_plaintext(b"abc123\n", "vpc")
    assert wrap_plaintext(DEK, "classic") == DEK.decode()  # the base64 DEK itself
    assert wrap_plaintext(DEK, "luks-raw") == DEK.decode()  # the DEK text exactly
    with pytest.raises(KeyFileError, match="32 or 64 bytes"):
        wrap_plaintext(base64.b64encode(bytes(24)), "classic")
    with pytest.raises(KeyFileError, match="not a valid data encryption key"):
        wrap_plaintext(b"abc123", "luks-raw")


@pytest.mark.parametrize("target,key", [("vpc", b"abc123"), ("vpc", DEK), ("classic", DEK),
                                        ("luks-raw", DEK)])
def test_wrap_then_unwrap_gives_back_what_the_target_needs(cloud, target, key) -> None:
    kp = KeyProtect(cloud.kp.url, INSTANCE, TokenSource(API_KEY, cloud.iam_url))
    r = wrap_key(kp, ROOT_KEY, key, target)
    assert r["checked"]
    assert kp.unwrap(ROOT_KEY, r["wdek"]) == wrap_plaintext(key, target)
    wrap_req = next(q for q in cloud.kp.requests if q["path"].endswith("/wrap"))
    assert json.loads(wrap_req["body"]) == {"plaintext": wrap_plaintext(key, target)}  # no aad
    assert wrap_req["headers"]["content-type"] == "application/vnd.ibm.kms.key_action+json"
    assert wrap_req["headers"]["bluemix-instance"] == INSTANCE
    assert not cloud.kp.refusals


def test_clear_messages_for_standard_key_wrong_instance_wrong_key(cloud) -> None:
    tokens = TokenSource(API_KEY, cloud.iam_url)
    kp = KeyProtect(cloud.kp.url, INSTANCE, tokens)
    with pytest.raises(CloudError, match="is not a root key"):
        wrap_key(kp, STANDARD_KEY, DEK, "classic")
    other = KeyProtect(cloud.kp.url, "00000000-1111-4000-8000-000000000000", tokens)
    with pytest.raises(CredentialsError, match="not authorized on instance 00000000-1111"):
        wrap_key(other, ROOT_KEY, DEK, "classic")
    with pytest.raises(CloudError, match="no such key in instance"):
        wrap_key(kp, "5555aaaa-0000-4000-8000-000000000000", DEK, "classic")


def test_iam_token_refused_key_and_refresh(cloud) -> None:
    with pytest.raises(CredentialsError, match="API key was refused"):
        fetch_token("wrong-key", cloud.iam_url)
    tokens = TokenSource(API_KEY, cloud.iam_url)
    a = tokens.token()
    assert tokens.token() == a and tokens.fetches == 1  # valid one hour: kept
    cloud.iam.ttl = 200  # less than the refresh margin: every use refreshes
    tokens = TokenSource(API_KEY, cloud.iam_url)
    assert tokens.token() != tokens.token() and tokens.fetches == 2
    assert not any(API_KEY in r for r in cloud.iam.refusals)


def test_wrap_key_cli_writes_wdek_0600_and_unwrap_checks(cloud, tmp_path, capsys) -> None:
    key = keyfile(tmp_path, b"abc123")
    out = tmp_path / "wdek"
    code, _, err = run_cli(["wrap-key", "--key-file", str(key), "--for", "vpc", *cloud.kms_args(),
                            "--output", str(out)], capsys)
    assert code == 0, err
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert "unwrapped once and compared" in err
    assert "warning:" in err and "not a data encryption key" in err  # the VPC key rule's warning
    code, stdout, err = run_cli(["unwrap-key", "--wdek-file", str(out), *cloud.kms_args(),
                                 "--key-file", str(key), "--for", "vpc"], capsys)
    assert code == 0 and "matches" in stdout and "YWJjMTIz" not in stdout + err
    other = keyfile(tmp_path, b"abc124", "other.key")
    code, stdout, err = run_cli(["unwrap-key", "--wdek-file", str(out), *cloud.kms_args(),
                                 "--key-file", str(other), "--for", "vpc"], capsys)
    assert code == 1 and "does NOT match" in stdout and err.count("\n") == 1


def test_wrap_key_cli_errors_are_one_line(cloud, tmp_path, capsys) -> None:
    key = keyfile(tmp_path, DEK)
    code, _, err = run_cli(["wrap-key", "--key-file", str(key), "--for", "classic",
                            *cloud.kms_args(key_id=STANDARD_KEY)], capsys)
    assert code == 1 and "not a root key" in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_key_crn_parts() -> None:
    c = parse_key_crn(f"crn:v1:bluemix:public:kms:eu-de:a/abc123:{INSTANCE}:key:{ROOT_KEY}")
    assert (c.service, c.region, c.instance_id, c.key_id) == ("kms", "eu-de", INSTANCE, ROOT_KEY)
    with pytest.raises(CloudError, match="CRN"):
        parse_key_crn("crn:v1:bluemix:public:kms:eu-de:nothing")


@pytest.mark.parametrize("command", ["wrap-key", "unwrap-key"])
def test_key_protect_credentials_errors_say_what_is_wrong(cloud, tmp_path, capsys,
                                                          command) -> None:
    """An API key is set: a malformed --iam-url or a broken credentials file is named, never
    "no IBM Cloud API key" (which sent a user looking for a key they had set)."""
    key = keyfile(tmp_path, DEK)
    extra = ["--wdek-file", str(keyfile(tmp_path, b"x", "w"))] if command == "unwrap-key" else []
    base = [command, "--key-file", str(key), "--for", "luks-raw", *cloud.kms_args()[:-2],
            *extra]
    code, _, err = run_cli([*base, "--iam-url", "iam.cloud.ibm.com"], capsys)
    assert code == 1 and "no IBM Cloud API key" not in err, err
    assert "--iam-url 'iam.cloud.ibm.com' must be an http(s) URL" in err
    bad = keyfile(tmp_path, b"{not json", "creds.json")
    code, _, err = run_cli([*base, "--iam-url", cloud.iam_url, "--credentials-file", str(bad)],
                           capsys)
    assert code == 1 and f"{bad}: credentials file is not valid JSON" in err, err



@pytest.mark.parametrize("output,code,says", [
    ("k.key", 1, "already exists"), ("nodir/w", 1, "does not exist"),
    ("-", 2, "name a file to write the WDEK to")])
def test_wrap_key_output_refused_before_key_protect(cloud, tmp_path, capsys, monkeypatch,
                                                    output, code, says) -> None:
    """An --output that cannot be written is said before Key Protect wraps anything (its
    requests are counted by the stand-in)."""
    monkeypatch.chdir(tmp_path)
    key = keyfile(tmp_path, DEK)
    got, _, err = run_cli(["wrap-key", "--key-file", str(key), "--for", "luks-raw",
                           *cloud.kms_args(), "--output", output], capsys)
    assert got == code and says in err and err.count("\n") == 1, err
    assert key.read_bytes() == DEK and not (tmp_path / "-").exists()
    assert cloud.kp.requests == [] and cloud.iam.requests == []
