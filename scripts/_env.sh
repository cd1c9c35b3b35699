# Sourced by the scripts: creates .venv and installs lukspack when needed: only what it needs to
# run, or with LUKSPACK_EXTRAS=test (scripts/test.sh) its test tools too (pyproject's [test]).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
need_debs() {  # need_debs COMMAND PACKAGE ...: install the Debian packages of missing commands
  local missing=()
  while [ $# -gt 0 ]; do
    command -v "$1" >/dev/null 2>&1 || missing+=("$2")
    shift 2
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${missing[*]} ..." >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

PY="${PYTHON:-python3}"
# The test suite holds the fast XTS loop to being built, so it brings a C compiler along.
if [ "${LUKSPACK_NEED_CC:-0}" = 1 ]; then
  need_debs gcc gcc
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extras="${LUKSPACK_EXTRAS:-}"
stamp=".venv/.lukspack-installed${extras:+-$extras}"  # one per set of extras
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
   || [ src/lukspack/crypto/_xtsloop.c -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH:/usr/sbin:/sbin"

need_btrfs_progs() {  # mkfs.btrfs with --rootdir, --subvol and --compress: btrfs-progs 6.11 or later
  local help
  help="$(mkfs.btrfs --help 2>&1 || true)"  # exits 1 after its usage text; absent: empty
  [[ "$help" == *--subvol* ]] && return 0
  local sudo="" target=() list=/etc/apt/sources.list.d/lukspack-bookworm-backports.sources
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # Debian 12 ships 6.2; bookworm-backports has 6.14 (Debian 13 ships 6.14 itself)
  if [ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" = bookworm ]; then
    [ -f "$list" ] || printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" \
      "Suites: bookworm-backports" "Components: main" \
      "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" | $sudo tee "$list" >/dev/null
    target=(-t bookworm-backports)
  fi
  echo "installing btrfs-progs ${target[*]} ..." >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${target[@]}" btrfs-progs >/dev/null
}
