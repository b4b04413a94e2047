#!/usr/bin/env bash
# Set up, then run the linters, the type checker and the whole test suite.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
.venv/bin/ruff check blanket backends restore tests benchmarks
.venv/bin/ruff format --check blanket backends restore tests benchmarks
bash scripts/typecheck.sh
# The house's one direction (errors/model -> backends -> core -> restore -> commands/ui/cli)
.venv/bin/lint-imports --no-cache
# The tests kill processes, never machines, so they need no durable disk. Where /dev/shm is a
# tmpfs with room, their temporary files go there: fsync on a disk shared by two test
# workers made the suite two to three times slower (docs/decisions.md, "Tests").
free_kib=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
if [ -w /dev/shm ] && [ "${free_kib:-0}" -gt $((4 * 1024 * 1024)) ]; then
  TMPDIR=$(mktemp -d /dev/shm/blanket-tests.XXXXXX)
  chmod 1777 "$TMPDIR" # a test runs blanket as 'nobody', which needs its temporary files too
  export TMPDIR
  trap 'rm -rf "$TMPDIR"' EXIT
fi
.venv/bin/pytest -q -n 2 "$@"
