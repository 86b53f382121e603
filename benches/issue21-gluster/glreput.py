# Issue 21: a re-put of 4 KiB with the existence probe against one without it.
# Usage: python3 glreput.py DIR_ON_THE_CLUSTER_MOUNT
import os,sys,time
base=sys.argv[1]; N=100
os.makedirs(base+'/tmp',exist_ok=True); os.makedirs(base+'/obj',exist_ok=True)
t=os.open(base+'/tmp',os.O_RDONLY|os.O_DIRECTORY); o=os.open(base+'/obj',os.O_RDONLY|os.O_DIRECTORY)
data=os.urandom(4096)
for i in range(N):
    fd=os.open(f'o{i}',os.O_WRONLY|os.O_CREAT,0o444,dir_fd=o); os.write(fd,data); os.close(fd)
A=B=0
for i in range(N):
    s=time.perf_counter()  # with the probe: stat, then touch
    os.stat(f'o{i}',dir_fd=o,follow_symlinks=False); os.utime(f'o{i}',dir_fd=o,follow_symlinks=False)
    A+=time.perf_counter()-s
    s=time.perf_counter()  # without: stage, sync, link fails, stat, touch, unlink
    fd=os.open(f's{i}',os.O_RDWR|os.O_CREAT|os.O_EXCL,0o600,dir_fd=t); os.write(fd,data); os.fchmod(fd,0o444); os.fdatasync(fd)
    try: os.link(f's{i}',f'o{i}',src_dir_fd=t,dst_dir_fd=o)
    except FileExistsError: pass
    os.stat(f'o{i}',dir_fd=o,follow_symlinks=False); os.utime(f'o{i}',dir_fd=o,follow_symlinks=False)
    os.unlink(f's{i}',dir_fd=t); os.close(fd)
    B+=time.perf_counter()-s
print(f're-put with probe {A/N*1e3:.3f} ms, without probe {B/N*1e3:.3f} ms')
