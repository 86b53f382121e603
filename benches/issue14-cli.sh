#!/bin/sh
# CLI-level figures of issue 14 (docs/performance.md): the `cas` binary against cp, cat,
# cp -a and git add, interleaved, best of N runs, with peak memory (GNU time's %M).
#
#   cargo build --release -p cas-cli && benches/issue14-cli.sh [WORKDIR] [RUNS]
#
# WORKDIR (default target/issue14) must be on the disk under test; it is emptied first.
# Trees: /usr/share/doc (get -r; it has links pointing outside it, hence
# --allow-external-symlinks) and /usr/share/man (re-put, read in place).
set -eu
CAS=$(realpath "${CAS:-target/release/cas}")
W=${1:-target/issue14}
RUNS=${2:-5}
BIG_MIB=${BIG_MIB:-400}
rm -rf "$W"
mkdir -p "$W"
cd "$W"
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null

# best LABEL CMD...: runs CMD (a shell string) once, prints "LABEL seconds maxKiB".
one() {
    label=$1
    shift
    /usr/bin/time -o .t -f "%e %M" sh -c "$*" >/dev/null 2>&1
    echo "$label $(cat .t)"
}
# Keeps the lowest time per label from lines "LABEL SECONDS KIB".
best() { sort -k1,1 -k2,2n | awk '!seen[$1]++'; }

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"
$CAS --store s init >/dev/null
head -c $((BIG_MIB << 20)) /dev/urandom >big
H=$($CAS --store s put big)
cat big "s/objects/$(echo "$H" | cut -c1-2)/$(echo "$H" | cut -c3-)" >/dev/null
sync
echo "## get ${BIG_MIB} MiB (seconds, peak KiB)"
for i in $(seq "$RUNS"); do
    one cas-get-o "$CAS --store s get $H -o out.cas"
    one cp "cp big out.cp"
    one cas-get-pipe "$CAS --store s get $H | cat >/dev/null"
    one cat-pipe "cat big | cat >/dev/null"
    rm -f out.cas out.cp
done | best

echo "## get -r of /usr/share/doc ($(find /usr/share/doc -type f | wc -l) files) vs cp -a"
cp -a /usr/share/doc doc
T=$($CAS --store s put -r doc 2>/dev/null)
sync
for i in $(seq "$RUNS"); do
    one cas-get-r "$CAS --store s get -r $T -o r.cas.$i --allow-external-symlinks"
    one cp-a "cp -a doc r.cp.$i"
done | best

M=/usr/share/man
echo "## put -r of $M ($(find $M -type f | wc -l) files), read in place"
for i in $(seq "$RUNS"); do
    one first-put-cache "$CAS --store f$i.c init && $CAS --store f$i.c put -r $M"
    one first-put-nocache "$CAS --store f$i.n init && $CAS --store f$i.n put -r --no-cache $M"
done | best
$CAS --store s put -r $M >/dev/null 2>&1
git init -q --bare g.git
GIT_DIR=$PWD/g.git GIT_WORK_TREE=$M git -C $M add -A .
for i in $(seq "$RUNS"); do
    one reput-cache "$CAS --store s put -r $M"
    one reput-nocache "$CAS --store s put -r --no-cache $M"
    one git-add "GIT_DIR=$PWD/g.git GIT_WORK_TREE=$M git -C $M add -A ."
done | best
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
