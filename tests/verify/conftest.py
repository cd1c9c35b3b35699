"""The object-output cases use the real S3 server (SeaweedFS) of tests/cloud."""

from tests.cloud.conftest import cos_env, obj, s3  # noqa: F401  (fixtures)
