from tests.debian_images import debian_images, encrypted_images  # noqa: F401
