"""Only the C part of the build; everything else is in pyproject.toml.

_xtsloop is the per-sector loop around OpenSSL's own AES-XTS (src/lukspack/crypto/_xtsloop.c). It
needs a C compiler and Python's headers, not OpenSSL's. It is optional: where it cannot be built,
the install still succeeds and lukspack runs its numpy XTS engine (`lukspack benchmark` says which).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("lukspack.crypto._xtsloop", ["src/lukspack/crypto/_xtsloop.c"],
                             optional=True)])
