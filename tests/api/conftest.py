"""The cloud jobs' tests use the cloud tests' stand-ins (SeaweedFS, IAM, Key Protect, VPC)."""

from tests.cloud.conftest import bootable_disk, cloud, cos_env, obj, s3  # noqa: F401
