#!/bin/sh
# Eviction cost when many cache entries share one tree (issue 18, docs/performance.md):
# 301 entries naming one tree of 8 041 objects, everything older than the grace period, then
# `gc --dry-run --max-size 1` (plans eviction of everything) beside a plain `gc --dry-run`.
#
#   cargo build --release -p cas-cli && benches/evict-shared-tree.sh [WORKDIR]
#
# CAS=path/to/cas compares another build (e.g. an older commit's).
set -eu
CAS=$(realpath "${CAS:-target/release/cas}")
W=${1:-target/evict-shared-tree}
rm -rf "$W"
mkdir -p "$W/src"
export CAS_STORE="$W/s"
"$CAS" init >/dev/null
for i in $(seq 0 39); do
    mkdir "$W/src/d$i"
    for j in $(seq 0 199); do echo "$i.$j" >"$W/src/d$i/f$j"; done
done
t=$("$CAS" put -r "$W/src")
for i in $(seq 0 300); do "$CAS" key set "k$i" "$t"; done
find "$W/s/objects" "$W/s/index" -type f -exec touch -d '2 hours ago' {} +
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $CAS, $("$CAS" ls | wc -l) objects, load $(cut -d' ' -f1-3 /proc/loadavg)"
for mode in "--dry-run --max-size 1" "--dry-run"; do
    /usr/bin/time -f "gc $mode: %e s, %M KiB" "$CAS" gc $mode >/dev/null
done
