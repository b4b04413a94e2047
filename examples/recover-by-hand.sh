#!/bin/bash
# recover-by-hand.sh REPO PATH [OUTFILE]: get the latest version of ONE file out of a
# blanket repository with nothing but bash, gpg, zstd, GNU tar and coreutils.
#
#   REPO     a local copy of the store: the folder holding config, index/ and data/
#            (a USB disk as it is; for S3 first: aws s3 sync s3://bucket/prefix ./repo)
#   PATH     the file's path inside the backed-up folder, e.g. docs/2024/report.txt
#   OUTFILE  where to write it (default: the file's name, in the current folder)
#
# gpg uses $GNUPGHOME (default ~/.gnupg); for a passphrase repository set
# PASSPHRASE_FILE. Exit status: 0 recovered; 1 trouble (damaged or forged object);
# 2 the path is not a file in the latest state (deleted, a folder, a symlink).
#
# It is a walk-through: read it top to bottom next to docs/format.md. For a whole tree
# (or an older state) use the script in docs/format.md, "Recovering by hand".
set -euo pipefail
export LC_ALL=C
repo=${1:?usage: recover-by-hand.sh REPO PATH [OUTFILE]}
want=${2:?usage: recover-by-hand.sh REPO PATH [OUTFILE]}
want=${want#./}
outfile=${3:-${want##*/}}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say() { echo "recover-by-hand: $*" >&2; }
die() { say "$*"; exit 1; }

# Step 1. Decrypting an object: gpg --decrypt. Keep gpg's status report to check, as
# blanket does, that the repository's own key signed it (not merely some key).
gpg_opts=(--batch --quiet --yes --status-file "$work/status")
if [ -n "${PASSPHRASE_FILE:-}" ]; then
    gpg_opts+=(--pinentry-mode loopback --passphrase-file "$PASSPHRASE_FILE")
fi
authentic() {                                 # authentic OBJECT: signed by the key?
    if [ "$mode" = pubkey ]; then                 # (any key of the repository's history)
        local k
        for k in $key; do grep -q "^\[GNUPG:\] VALIDSIG .* $k\$" "$work/status" && return; done
        false
    else
        grep -q '^\[GNUPG:\] GOODMDC' "$work/status"
    fi || die "$1 is not signed by the repository key (damaged or forged)"
}
decrypt() {                                   # decrypt OBJECT > PLAINTEXT, checked
    gpg "${gpg_opts[@]}" --decrypt "$repo/$1" 2> "$work/gpg.log" ||
        die "cannot decrypt $1: $(tail -n 1 "$work/gpg.log") (wrong key?)"
    authentic "$1"
}

# Step 2. The config names the key that signs everything ("-" with a passphrase). With
# separate keys ("blanket-repository 2") it is signed, not encrypted, and ends with the
# signing key's public key, imported here if gpg lacks it.
header() { sed -n -e '/^$/q' -e "s/^$1: //p" "$2"; }
pubkey_block() { sed -n '/^-----BEGIN PGP PUBLIC KEY BLOCK-----$/,$p' "$1"; }
gpg "${gpg_opts[@]}" --decrypt "$repo/config" > "$work/config" 2> "$work/gpg.log" || true
if grep -q '^\[GNUPG:\] NO_PUBKEY ' "$work/status"; then
    pubkey_block "$work/config" | gpg --batch --quiet --import 2> /dev/null || true
    gpg "${gpg_opts[@]}" --decrypt "$repo/config" > "$work/config" 2> "$work/gpg.log" || true
fi
[ -s "$work/config" ] ||
    die "cannot decrypt config: $(tail -n 1 "$work/gpg.log") (wrong key? set GNUPGHOME)"
mode=$(header mode "$work/config")
key=$(header key "$work/config")$(header sign-key "$work/config")
authentic config
# Key rotations keys/1, keys/2...: each signed by the key before it brings a new one.
for ((n = 1; ; n++)); do
    rot=keys/$(printf '%012d' "$n")
    [ -f "$repo/$rot" ] || break
    decrypt "$rot" > "$work/rotation"
    key="$key $(header sign-key "$work/rotation")"
    pubkey_block "$work/rotation" | gpg --batch --quiet --import 2> /dev/null || true
done
say "repository $(header id "$work/config") ($mode)"

# Step 3. Paths in an index are escaped: every byte that is not printable ASCII, and
# the characters \ = , are written \xHH. Escape the path we look for the same way.
escape() {
    local s=$1 out='' c i
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        case $c in
        [!\\=,]) if [[ $c == [[:graph:]] ]]; then out+=$c; continue; fi ;;
        esac
        printf -v c '\\x%02x' "'$c"
        out+=$c
    done
    printf '%s' "$out"
}

# Step 4. The newest index that mentions the path, or a deletion marker ("x") of it or
# of a folder above it, tells its latest state: replaying commits in order, each
# replacing what came before, gives the latest tree (docs/format.md, "Replay").
find_entry() {                                # find_entry ESCAPED [START] -> "SEQ LINE"
    local path=$1 start=${2:-} name kind p rest
    for name in $(ls "$repo/index" | grep -E '^[0-9]{12}$' | sort -r); do
        [ -z "$start" ] || [ "$((10#$name))" -le "$start" ] || continue
        decrypt "index/$name" > "$work/index"
        while read -r kind p rest; do
            if [ "$p" = "$path" ] && [ "$kind" != P ]; then
                echo "$((10#$name)) $kind $p $rest"; return 0
            fi
            if [ "$kind" = x ] && [[ $path == "$p"/* ]]; then
                echo "$((10#$name)) x $p"; return 0
            fi
        done < <(sed '1,/^$/d' "$work/index")
    done
    return 1
}
field() { [[ " $2 " =~ \ $1=([^ ]*)\  ]] && printf '%s' "${BASH_REMATCH[1]}"; }

esc=$(escape "$want")
found=$(find_entry "$esc") || { say "$want is in no index: never backed up"; exit 2; }
read -r seq kind path rest <<< "$found"
while [ "$kind" = h ]; do                     # a hard link: the content is its target's
    esc=$(field target "$rest")
    found=$(find_entry "$esc" "$seq") || die "hard link target $esc is missing"
    read -r seq kind path rest <<< "$found"
done
case $kind in
x) say "$want was deleted (commit $seq): older versions need docs/format.md's script"; exit 2 ;;
d) say "$want is a folder: use docs/format.md's script for a tree"; exit 2 ;;
l) say "$want is a symlink to $(printf '%b' "$(field target "$rest")")"; exit 2 ;;
f) ;;
*) say "$want is not a regular file (kind $kind)"; exit 2 ;;
esac
sha=$(field sha256 "$rest")
say "latest version: commit $seq, $(field size "$rest") bytes, sha256 $sha"

# Step 5. The index names its pack and the pack's SHA-256: check it before use, then
# gpg --decrypt PACK | zstd -d | tar -x gives the member tree/PATH (a file larger than
# a pack is split into members parts/PATH/OFFSET in consecutive commits: concatenate).
member() {                                    # member SEQ NAME >> OUTFILE
    local name idx data
    name=$(printf '%012d' "$1")
    decrypt "index/$name" > "$work/idx"
    data=$(sed -n -e '/^$/q' -e 's/^data-key: //p' "$work/idx")
    idx=$(sed -n -e '/^$/q' -e 's/^data-sha256: //p' "$work/idx")
    [ "$(sha256sum < "$repo/$data" | cut -d ' ' -f 1)" = "$idx" ] || die "$data is damaged"
    decrypt "$data" | zstd -d -q | tar -xO --warning=no-unknown-keyword "$2"
}
raw=$(printf '%b' "$path")
: > "$work/out"
parts=$(field parts "$rest" || true)
if [ -z "$parts" ]; then
    member "$seq" "tree/$raw" >> "$work/out"
else                                          # its parts: same path and since, this
    since=$(field since "$rest")              # commit and earlier ones of its layer
    : > "$work/parts"
    for ((s = seq; s >= 0 && $(wc -l < "$work/parts") < parts; s--)); do
        decrypt "index/$(printf '%012d' "$s")" > "$work/index"
        while read -r kind p r; do
            if [ "$kind" = P ] && [ "$p" = "$path" ] && [ "$(field since "$r")" = "$since" ]; then
                echo "$(printf '%016d' "$(field offset "$r")") $s" >> "$work/parts"
            fi
        done < <(sed '1,/^$/d' "$work/index")
    done
    while read -r offset s; do
        member "$s" "parts/$raw/$offset" >> "$work/out"
    done < <(sort -s -u -k1,1 "$work/parts")   # newest copy of an offset
fi

# Step 6. The SHA-256 in the index proves the bytes are the ones backed up.
[ "$(sha256sum < "$work/out" | cut -d ' ' -f 1)" = "$sha" ] || die "content does not match its sha256"
mv -- "$work/out" "$outfile"
say "recovered $want into $outfile"
