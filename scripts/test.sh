#!/usr/bin/env bash
# The whole test suite: installs qemu-utils, cryptsetup-bin and the venv, then lint and pytest.
source "$(dirname "$0")/_env.sh"
need_debs qemu-img qemu-utils cryptsetup cryptsetup-bin
ruff check src tests bench
python -m pytest -q "$@"
