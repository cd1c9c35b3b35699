#!/usr/bin/env bash
# The whole test suite: installs qemu-utils, cryptsetup-bin, gcc (for the XTS loop) and the venv,
# then lint and pytest.
LUKSPACK_NEED_CC=1 source "$(dirname "$0")/_env.sh"
need_debs qemu-img qemu-utils cryptsetup cryptsetup-bin
ruff check .
python -m pytest -q "$@"
