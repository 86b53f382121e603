#!/bin/bash
# Issue 21: 64 MiB stream puts through a pipe and from a file, two cas binaries (/tmp/cas-before,
# /tmp/cas-after: copy them there) and a Python floor, interleaved. Usage: glab64.sh ROUNDS
# (the mount is /mnt/glA; edit B below). Prints one 'contender MiB/s' line per put.
# interleaved: floor, before|pipe, after|pipe, before<file, after<file ; R rounds; fresh content each
B=/mnt/glA/gl-probe/ab64; mkdir -p $B; R=${1:-5}
/tmp/cas-before init $B/sb >/dev/null; /tmp/cas-after init $B/sa >/dev/null
for r in $(seq 1 $R); do
 for m in floor before-pipe after-pipe before-file after-file; do
  { head -c 16 /dev/urandom; head -c $(( (64<<20) - 16 )) /tmp/gl64m; } > /tmp/glsrc
  s=$(date +%s.%N)
  case $m in
   floor) python3 -c "
import os
d=open('/tmp/glsrc','rb').read()
fd=os.open('$B/tmp',os.O_WRONLY|os.O_CREAT|os.O_EXCL,0o644); os.write(fd,d); os.fdatasync(fd); os.close(fd); os.rename('$B/tmp','$B/obj')" ;;
   before-pipe) cat /tmp/glsrc | /tmp/cas-before --store $B/sb --durability file put - >/dev/null ;;
   after-pipe) cat /tmp/glsrc | /tmp/cas-after --store $B/sa --durability file put - >/dev/null ;;
   before-file) /tmp/cas-before --store $B/sb --durability file put - < /tmp/glsrc >/dev/null ;;
   after-file) /tmp/cas-after --store $B/sa --durability file put - < /tmp/glsrc >/dev/null ;;
  esac
  e=$(date +%s.%N); echo "$m $(python3 -c "print(round(64/($e-$s),1))")"
  rm -f $B/obj
 done
done
