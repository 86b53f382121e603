# Issue 21: fchmod then fdatasync, in sequence against overlapped on two threads.
# Usage: python3 glpar.py DIR_ON_THE_CLUSTER_MOUNT
import os,sys,time,threading
base=sys.argv[1]; N=100; os.makedirs(base,exist_ok=True)
d=os.open(base,os.O_RDONLY|os.O_DIRECTORY); data=os.urandom(4096)
ts={'seq':0,'par':0}
for i in range(N):
  for m in ('seq','par'):
    fd=os.open(f'{m}{i}',os.O_RDWR|os.O_CREAT|os.O_EXCL,0o600,dir_fd=d); os.write(fd,data)
    t=time.perf_counter()
    if m=='seq': os.fchmod(fd,0o444); os.fdatasync(fd)
    else:
        th=threading.Thread(target=os.fchmod,args=(fd,0o444)); th.start(); os.fdatasync(fd); th.join()
    ts[m]+=time.perf_counter()-t; os.close(fd)
print({k:round(v/N*1e3,3) for k,v in ts.items()},'ms')
