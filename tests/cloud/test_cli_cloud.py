"""The cloud commands as a user meets them: no secret is ever an argument, none is printed,
bad input is one line and exit 1, usage errors exit 2; credentials files; endpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from lukspack.cli import cli
from lukspack.cloud.credentials import load_credentials
from lukspack.cloud.errors import CloudError, CredentialsError
from lukspack.cloud.location import endpoint_url, parse_cos
from tests.cloud import s3server
from tests.cloud.test_kms import run_cli
from tests.cloud.test_upload import make_file, stored
from tests.helpers import cli_env

SECRETISH = ("secret", "apikey", "api-key", "password", "token", "hmac", "passphrase")


def commands() -> list[click.Command]:
    group = cli.commands["import"]
    assert isinstance(group, click.Group)
    return [cli.commands[n] for n in ("upload", "wrap-key", "unwrap-key", "publish")] + \
        list(group.commands.values())


def test_no_option_takes_a_secret() -> None:
    for cmd in commands():
        for p in cmd.params:
            names = " ".join(p.opts).lower()
            assert not any(s in names for s in SECRETISH), f"{cmd.name} {names}"


def test_locations_and_endpoints() -> None:
    loc = parse_cos("cos://eu-de/my.bucket/a/b/c.qcow2")
    assert (loc.region, loc.bucket, loc.key) == ("eu-de", "my.bucket", "a/b/c.qcow2")
    env: dict[str, str] = {}
    assert endpoint_url("eu-de", env=env) == "https://s3.eu-de.cloud-object-storage.appdomain.cloud"
    assert endpoint_url("eu-de", "private", env=env) == \
        "https://s3.private.eu-de.cloud-object-storage.appdomain.cloud"
    assert endpoint_url("eu-de", "direct", env=env).startswith("https://s3.direct.eu-de.")
    assert endpoint_url("eu-de", env={"COS_ENDPOINT": "http://127.0.0.1:9/"}) == "http://127.0.0.1:9"
    assert endpoint_url("eu-de", override="https://x.example", env={"COS_ENDPOINT": "http://y"}) \
        == "https://x.example"
    for bad, part in (("s3://r/b/k", "not an object storage"), ("cos://US/b1x/k", "region"),
                      ("cos://us-south/B_x/k", "bucket"), ("cos://us-south/bucket", "no object")):
        with pytest.raises(CloudError, match=part):
            parse_cos(bad)


def test_credentials_sources(tmp_path, monkeypatch) -> None:
    f = tmp_path / "cos_credentials"
    f.touch(0o600)
    f.write_text(json.dumps({"apikey": "AK", "cos_hmac_keys": {"access_key_id": "ID",
                                                               "secret_access_key": "SK"}}))
    c = load_credentials(str(f), env={})
    assert c.hmac and c.hmac.access_key_id == "ID" and c.api_key == "AK"
    assert "SK" not in repr(c) and "AK" not in repr(c)
    c = load_credentials(None, env={"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B",
                                    "HOME": str(tmp_path)})
    assert c.hmac and c.hmac.access_key_id == "A"
    ini = tmp_path / "ini"
    ini.touch(0o600)
    ini.write_text("[default]\naws_access_key_id = I\naws_secret_access_key = S\n")
    assert load_credentials(str(ini), env={}).hmac.secret_access_key == "S"  # type: ignore[union-attr]
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))
    with pytest.raises(CredentialsError, match="no credentials"):
        load_credentials(None, env={})
    with pytest.raises(CredentialsError, match="set together"):
        load_credentials(None, env={"COS_HMAC_ACCESS_KEY_ID": "x"})


def test_upload_with_a_credentials_file(s3, cos_env, obj, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("COS_HMAC_ACCESS_KEY_ID")
    monkeypatch.delenv("COS_HMAC_SECRET_ACCESS_KEY")
    cred = tmp_path / "creds.json"
    cred.write_text(json.dumps({"cos_hmac_keys": {"access_key_id": s3server.ACCESS_KEY,
                                                  "secret_access_key": s3server.SECRET_KEY}}))
    cred.chmod(0o600)
    f = make_file(tmp_path / "f.img", 100_000)
    code, out, err = run_cli(["upload", str(f), obj, "--credentials-file", str(cred),
                              "--no-progress", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["sha256"] == stored(s3, obj)[1]["sha256"]
    assert s3server.SECRET_KEY not in out + err


def test_refused_secret_is_one_line_exit_1_never_printed(s3, cos_env, obj, tmp_path) -> None:
    f = make_file(tmp_path / "f.img", 1000)
    env = {**cli_env(), **cos_env, "COS_HMAC_SECRET_ACCESS_KEY": "wrong-secret-value-xyz"}
    p = subprocess.run([sys.executable, "-m", "lukspack", "upload", str(f), obj, "--no-progress"],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert "SignatureDoesNotMatch" in p.stderr and "wrong-secret-value-xyz" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "lukspack", "upload", str(f)], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 2  # usage error
    p = subprocess.run([sys.executable, "-m", "lukspack", "upload", str(tmp_path / "missing"), obj],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 1 and "cannot read" in p.stderr and "Traceback" not in p.stderr


def test_iam_only_credentials_send_a_bearer_token(cloud, monkeypatch) -> None:
    """With only an API key, S3 requests are unsigned and carry `Authorization: Bearer TOKEN`
    (https://cloud.ibm.com/docs/cloud-object-storage?topic=cloud-object-storage-curl)."""
    from lukspack.cloud.s3 import make_client
    from tests.cloud.standins import StandIn

    class BucketStandIn(StandIn):
        def handle(self, method, path, query, headers, body):
            if not cloud.iam.bearer_ok(headers):
                return 403, {"error": "no bearer token"}
            return 200, {}

    cos = BucketStandIn()
    try:
        for k in ("COS_HMAC_ACCESS_KEY_ID", "COS_HMAC_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(k)
        creds = load_credentials(None, iam_url=cloud.iam_url)
        assert creds.hmac is None
        client = make_client(cos.url, creds, "us-south")
        client.head_bucket(Bucket="some-bucket")
        client.head_bucket(Bucket="some-bucket")
    finally:
        cos.stop()
    auth = [r["headers"]["authorization"] for r in cos.requests]
    assert len(auth) == 2 and all(a.startswith("Bearer tok-") for a in auth)
    assert creds.tokens().fetches == 1  # one token for both, refreshed only near expiry
