#!/usr/bin/env bash
# Scale benchmark (issue 26): time and peak RSS of the whole-store commands at N objects,
# beside find/du and git on the same N. Results in docs/performance.md "Issue 26: scale".
#
#   benches/scale.sh N WORKDIR CAS [CAS_BEFORE]
#
# CAS (and CAS_BEFORE, the binary to compare with) are release builds of `cas`; the store
# is made by the `scale-fill` binary of cas-bench (built next to CAS, or $SCALE_FILL):
#   cargo build --release -p cas-cli -p cas-bench --bin cas --bin scale-fill
# It writes the N leaf objects straight into the store layout (one 9-16 byte file per object,
# named by its BLAKE3, as `--durability none` publishes them) and names 90 % of them through
# the library (a ref `all` over 80 %, cache entries over 10 %; 10 % garbage) - see
# benches/scale-fill.rs for why that is the same store a `put -r` makes.
# The git repository holds the same N blobs (`git fast-import`: one pack, not loose objects).
# Every command runs twice in a row (warm cache); both runs are printed.
set -euo pipefail
N=${1:?N}
W=${2:?WORKDIR}
CAS=${3:?CAS}
BEFORE=${4:-}
FILL=${SCALE_FILL:-$(dirname "$CAS")/scale-fill}
S=$W/store
T=/usr/bin/time
mkdir -p "$W"
rm -rf "$S" "$W/git"

t() { # label, command...
    local label=$1
    shift
    for run in 1 2; do
        $T -f "$label: %e s %M KB" "$@" >/dev/null 2>"$W/err" || true
        tail -1 "$W/err"
    done
}

if [ "$N" -gt 0 ]; then # N=0: only the FLAT part below
$T -f "build store (scale-fill $N): %e s %M KB" "$FILL" "$S" "$N"
echo "disk: $(du -sh "$S" | cut -f1), $(find "$S/objects" -type f | wc -l) objects"

t "find objects -type f | wc -l" sh -c "find '$S/objects' -type f | wc -l"
t "du -s objects" du -s "$S/objects"
for bin in ${BEFORE:+before:$BEFORE} after:$CAS; do
    name=${bin%%:*}
    c=${bin#*:}
    t "$name stats" "$c" --store "$S" stats
    t "$name ls" "$c" --store "$S" ls
    t "$name ls --json" "$c" --store "$S" ls --json
    t "$name verify" "$c" --store "$S" verify
    t "$name gc --dry-run (1 h grace)" "$c" --store "$S" gc --dry-run
    t "$name gc --dry-run --grace 0s" "$c" --store "$S" gc --dry-run --grace 0s
    t "$name gc --max-size 1M --dry-run --grace 0s" "$c" --store "$S" gc --max-size 1M --dry-run --grace 0s
done
# A real gc last: it condemns the garbage (then the second run finds none).
t "after gc --grace 0s (real)" "$CAS" --store "$S" gc --grace 0s

# ref log at N updates: the reflog written directly in its format by the binary itself
# would take N processes; `ref set` in a loop is too slow at 1M, so the log is built by
# repeating the lines one update writes.
if [ "${REFLOG:-1}" = 1 ]; then
    h1=$("$CAS" --store "$S" put - <<<"one")
    h2=$("$CAS" --store "$S" put - <<<"two")
    "$CAS" --store "$S" ref set log "$h1" >/dev/null
    "$CAS" --store "$S" ref set log "$h2" >/dev/null
    f=$S/logs/refs/log
    if [ -f "$f" ]; then
        python3 - "$f" "$N" <<'EOF'
import sys
p, n = sys.argv[1], int(sys.argv[2])
lines = open(p, 'rb').read().splitlines(keepends=True)
two = b''.join(lines[-2:])
with open(p, 'wb') as out:
    for _ in range(n // 2):
        out.write(two)
EOF
        echo "reflog: $f, $(wc -l <"$f") lines, $(du -h "$f" | cut -f1)"
        for bin in ${BEFORE:+before:$BEFORE} after:$CAS; do
            t "${bin%%:*} ref log log" "${bin#*:}" --store "$S" ref log log
            t "${bin%%:*} ref log -n 10 log" "${bin#*:}" --store "$S" ref log -n 10 log
        done
    else
        echo "reflog file not found"
    fi
fi

fi # N > 0

# The stat cache (FLAT=300000): put -r of a flat directory of FLAT files, then a re-put with
# the stat cache and one with --no-cache. It waits 3 s after making the files so the first put
# records them all (the racy-git margin is 2 s).
if [ "${FLAT:-0}" -gt 0 ]; then
    rm -rf "$W/flat"
    mkdir -p "$W/flat"
    python3 - "$W/flat" "$FLAT" <<'EOF'
import sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(f"{d}/f{i}", "w") as f:
        f.write(f"file {i}\n")
EOF
    sleep 3
    for bin in ${BEFORE:+before:$BEFORE} after:$CAS; do
        name=${bin%%:*}
        c=${bin#*:}
        rm -rf "$W/s-$name"
        "$c" --store "$W/s-$name" init >/dev/null
        $T -f "$name put -r (first: $FLAT files): %e s %M KB" "$c" --store "$W/s-$name" \
            --durability none put -r "$W/flat" >/dev/null
        t "$name re-put -r with the stat cache" "$c" --store "$W/s-$name" --durability none put -r "$W/flat"
        t "$name re-put -r --no-cache" "$c" --store "$W/s-$name" --durability none put -r --no-cache "$W/flat"
    done
    ls -la "$W"/s-*/cache/
fi

# git: the same N blobs in one pack.
if [ "${GIT:-1}" = 1 ] && [ "$N" -gt 0 ]; then
    git init -q "$W/git"
    python3 - "$N" <<'EOF' | $T -f "git fast-import ($N blobs): %e s %M KB" git -C "$W/git" fast-import --quiet
import sys
n = int(sys.argv[1])
w = sys.stdout.buffer
for i in range(n):
    b = b"object %d\n" % i
    w.write(b"blob\ndata %d\n%s\n" % (len(b), b))
EOF
    t "git count-objects -v" git -C "$W/git" count-objects -v
    t "git fsck --no-dangling" git -C "$W/git" fsck --no-dangling
fi
