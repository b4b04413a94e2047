#!/usr/bin/env bash
# The quick start: set up, then back up examples/ to a throwaway local repository with a
# throwaway gpg key, change something, back up again, restore both layers and compare.
# Everything it creates lives in one folder under /tmp (printed at the end).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
export PATH="$here/.venv/bin:$PATH"

work=$(mktemp -d /tmp/blanket-demo.XXXXXX)
export GNUPGHOME="$work/gnupg" BLANKET_STATE_DIR="$work/state"
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --passphrase '' --quick-gen-key "blanket demo <demo@localhost>" \
  future-default default never 2>/dev/null
fpr=$(gpg --list-secret-keys --with-colons 2>/dev/null | awk -F: '/^fpr/ {print $10; exit}')
repo="$work/repo"
cp -a examples "$work/source"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
step blanket init --repo "$repo" --key "$fpr"
step blanket backup --repo "$repo" "$work/source"
echo "a change for the second layer" >"$work/source/added-later.txt"
step blanket backup --repo "$repo" "$work/source"
step blanket layers --repo "$repo"
step blanket restore --repo "$repo" --to "$work/restored"
step blanket restore --repo "$repo" --to "$work/restored-layer0" --at 0

diff -r --no-dereference "$work/source" "$work/restored"
diff -r --no-dereference examples "$work/restored-layer0"
printf '\nOK: the latest restore matches the source and layer 0 matches examples/.\n'
printf 'Everything is under %s (key, repository, restores); remove it when done.\n' "$work"
