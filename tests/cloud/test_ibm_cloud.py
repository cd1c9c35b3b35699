"""The same steps against the real IBM Cloud, when its credentials are in the environment:
LUKSPACK_IBM_COS (cos://REGION/BUCKET), LUKSPACK_IBM_ROOT_KEY_CRN, IBMCLOUD_API_KEY, and HMAC
keys or the API key for COS. Skipped otherwise (the machines that run the suite have no route to
IBM Cloud and no account)."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import uuid
from pathlib import Path

import pytest

NEEDED = ("LUKSPACK_IBM_COS", "LUKSPACK_IBM_ROOT_KEY_CRN", "IBMCLOUD_API_KEY")
missing = [n for n in NEEDED if not os.environ.get(n)]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"no IBM Cloud account here: set "
                                f"{', '.join(missing)} to run these against IBM Cloud")


def test_upload_wrap_unwrap_on_ibm_cloud(tmp_path: Path) -> None:
    from lukspack.cloud.credentials import load_credentials
    from lukspack.cloud.errors import CloudError
    from lukspack.cloud.kms import KeyProtect, kms_url, parse_key_crn, wrap_key, wrap_plaintext
    from lukspack.cloud.location import parse_cos
    from lukspack.cloud.upload import CosOptions, abort_kept, connect, upload_file

    bucket = parse_cos(os.environ["LUKSPACK_IBM_COS"], need_key=False)
    loc = str(bucket.with_key(f"lukspack-test/{uuid.uuid4().hex}.bin"))
    f = tmp_path / "f.bin"
    f.write_bytes(secrets.token_bytes(12 << 20))
    s = upload_file(str(f), loc, CosOptions(part_size=5 << 20, verify_remote=True))
    assert s["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest() and s["verified_remote"]
    _, _, client = connect(loc, CosOptions())
    client.delete_object(Bucket=bucket.bucket, Key=parse_cos(loc).key)
    with pytest.raises(CloudError, match="no kept upload"):
        abort_kept(str(f), loc)  # nothing kept: the state file went with the completed upload
    crn = parse_key_crn(os.environ["LUKSPACK_IBM_ROOT_KEY_CRN"])
    kp = KeyProtect(kms_url(crn.region), crn.instance_id, load_credentials().tokens())
    for target, key in (("vpc", b"abc123"), ("classic", base64.b64encode(bytes(32)))):
        r = wrap_key(kp, crn.key_id, key, target)
        assert kp.unwrap(crn.key_id, r["wdek"]) == wrap_plaintext(key, target)
