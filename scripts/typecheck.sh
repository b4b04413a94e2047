#!/usr/bin/env bash
# mypy cannot follow setuptools' package-dir mapping (backends/ -> blanket.backends,
# restore/ -> blanket.restore), so it checks a tree of symlinks laid out as installed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
view=$(mktemp -d)
trap 'rm -rf "$view"' EXIT
mkdir "$view/blanket"
for f in "$here"/blanket/*.py; do ln -s "$f" "$view/blanket/"; done
ln -s "$here/blanket/commands" "$view/blanket/commands"
ln -s "$here/backends" "$view/blanket/backends"
ln -s "$here/restore" "$view/blanket/restore"
cd "$here"
"$here/.venv/bin/mypy" --config-file "$here/pyproject.toml" "$view/blanket"
