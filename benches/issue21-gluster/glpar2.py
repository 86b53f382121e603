# Issue 21: unlink of the staging name then close, in sequence against overlapped.
# Usage: python3 glpar2.py DIR_ON_THE_CLUSTER_MOUNT
import os,sys,time,threading
base=sys.argv[1]; N=100; os.makedirs(base+'/t',exist_ok=True); os.makedirs(base+'/o',exist_ok=True)
d=os.open(base+'/t',os.O_RDONLY|os.O_DIRECTORY); o=os.open(base+'/o',os.O_RDONLY|os.O_DIRECTORY); data=os.urandom(4096)
ts={'seq':0,'par':0}
for i in range(N):
  for m in ('seq','par'):
    fd=os.open(f'{m}{i}',os.O_RDWR|os.O_CREAT|os.O_EXCL,0o600,dir_fd=d); os.write(fd,data); os.fdatasync(fd)
    os.link(f'{m}{i}',f'{m}{i}',src_dir_fd=d,dst_dir_fd=o)
    t=time.perf_counter()
    if m=='seq': os.unlink(f'{m}{i}',dir_fd=d); os.close(fd)
    else:
        th=threading.Thread(target=os.unlink,args=(f'{m}{i}',),kwargs={'dir_fd':d}); th.start(); os.close(fd); th.join()
    ts[m]+=time.perf_counter()-t
print('unlink+close',{k:round(v/N*1e3,3) for k,v in ts.items()},'ms')
