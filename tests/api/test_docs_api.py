"""docs/api.md's three examples, run as written: only the settings in capitals at the top of
each example are replaced by this test's files and local servers (SeaweedFS, the IAM, Key
Protect and VPC stand-ins). The outputs are checked with QEMU's own qcow2 LUKS driver and the
stand-ins' records, not only with lukspack's readers."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lukspack.cloud.upload import CosOptions
from tests.cloud.test_publish import BUCKET
from tests.helpers import ROOT
from tests.images.flavours import qemu_compare_encrypted


def examples() -> dict[str, str]:
    """The ```python blocks of docs/api.md by the heading above each."""
    text = (ROOT / "docs" / "api.md").read_text()
    found = {}
    for m in re.finditer(r"^## (.+?)\n(.*?)```python\n(.*?)```", text, re.S | re.M):
        found[m.group(1)] = m.group(3)
    return found


def run_example(code: str, settings: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Run one example with its capitalised settings replaced (each must be one the example
    assigns: a renamed setting fails here); returns its namespace and what it printed."""
    tree = ast.parse(code)
    assigned = [n.targets[0].id for n in tree.body
                if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)
                and n.targets[0].id.isupper()]
    assert set(settings) <= set(assigned), (sorted(settings), assigned)
    body = [n for n in tree.body if not (isinstance(n, ast.Assign)
                                         and isinstance(n.targets[0], ast.Name)
                                         and n.targets[0].id in settings)]
    namespace: dict[str, Any] = dict(settings)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(ast.Module(body, []), "docs/api.md", "exec"), namespace)  # noqa: S102
    return namespace, out.getvalue()


def test_the_guide_has_its_three_examples() -> None:
    assert list(examples()) == ["Encrypt a file", "Publish to VPC", "Verify an object"]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_encrypt_a_file(workdir: Path) -> None:
    ref = workdir / "ref.raw"
    ref.write_bytes(os.urandom(1 << 20) * 8 + bytes(8 << 20))  # data, then a hole
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(ref), "disk.vmdk"],
                   check=True)
    ns, printed = run_example(examples()["Encrypt a file"], {})
    assert printed.split(maxsplit=3) == ["qcow2", "aes-xts-plain64", "512", "read back\n"]
    assert oct((workdir / "disk.key").stat().st_mode & 0o777) == "0o600"
    qemu_compare_encrypted(workdir / "disk.qcow2", workdir / "disk.key", ref)  # QEMU's driver


def test_publish_to_vpc_then_verify_the_object(cloud, s3, bootable_disk, workdir: Path) -> None:
    options = {"api_url": cloud.vpc.url, "kms_url": cloud.kp.url, "pbkdf_force_iterations": 1000,
               "cos_options": CosOptions(iam_url=cloud.iam_url, part_size=5 << 20)}
    ns, printed = run_example(examples()["Publish to VPC"], {
        "SOURCE": str(bootable_disk), "BUCKET": BUCKET, "ROOT_KEY_CRN": cloud.root_key_crn,
        "KMS_INSTANCE": cloud.kp.instance_id, "OPTIONS": options})
    r = ns["result"]
    assert printed.splitlines()[-1] == f"{r.object} {r.image['id']} True"
    assert [i["name"] for i in cloud.vpc.images.values()] == ["web-01"]
    assert oct((workdir / "web-01.key").stat().st_mode & 0o777) == "0o600"
    ns, printed = run_example(examples()["Verify an object"], {
        "OBJECT": r.object, "KEY": "web-01.key", "SOURCE": str(bootable_disk)})
    v = ns["result"]
    assert v.matches_source is True and v.image_reads["gets"] >= 1
    assert printed.split()[0] == v.disk_sha256 == v.source_sha256
    (workdir / "other.key").write_bytes(b"another passphrase of forty characters !!")
    (workdir / "other.key").chmod(0o600)
    from lukspack.errors import WrongKeyError

    with pytest.raises(WrongKeyError):
        run_example(examples()["Verify an object"], {
            "OBJECT": r.object, "KEY": "other.key", "SOURCE": str(bootable_disk)})
