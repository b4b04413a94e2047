#!/usr/bin/env bash
# Set up, then run the linters, the type checker and the whole test suite.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
.venv/bin/ruff check blanket backends restore tests benchmarks
.venv/bin/ruff format --check blanket backends restore tests benchmarks
bash scripts/typecheck.sh
exec .venv/bin/pytest -q -n 2 "$@"
