from tests.debian_images import debian_images  # noqa: F401
