#!/usr/bin/env bash
# mypy --strict over the package as it stands: blanket/backends and blanket/restore are
# committed symlinks to backends/ and restore/, so no view is built here.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
.venv/bin/mypy blanket
