# Issue 21: cas's 4 KiB put sequence against the floor's, alternating object by object, with
# per-step times (docs/performance.md "Issue 21: streams on GlusterFS").
# Usage: python3 glab.py DIR_ON_THE_CLUSTER_MOUNT N
import os,sys,time,collections
base=sys.argv[1]; N=int(sys.argv[2])
os.makedirs(base+'/tmp',exist_ok=True); os.makedirs(base+'/obj',exist_ok=True)
tmpfd=os.open(base+'/tmp',os.O_RDONLY|os.O_DIRECTORY); objfd=os.open(base+'/obj',os.O_RDONLY|os.O_DIRECTORY)
data=os.urandom(4096)
T=collections.defaultdict(float)
def step(k,f,*a,**kw):
    t=time.perf_counter(); r=f(*a,**kw); T[k]+=time.perf_counter()-t; return r
for i in range(N):
    for mode in ('floor','cas'):
        name=f'{mode}{i}'; s=f's.{mode}.{i}'
        t0=time.perf_counter()
        if mode=='cas':
            t=time.perf_counter()
            try: os.stat(name,dir_fd=objfd,follow_symlinks=False)
            except FileNotFoundError: pass
            T['cas:probe stat']+=time.perf_counter()-t
        fd=step(mode+':create',os.open,s,os.O_RDWR|os.O_CREAT|os.O_EXCL,0o600,dir_fd=tmpfd)
        step(mode+':write',os.write,fd,data)
        if mode=='cas': step('cas:fchmod',os.fchmod,fd,0o444)
        step(mode+':fdatasync',os.fdatasync,fd)
        if mode=='floor':
            step('floor:close',os.close,fd)
            step('floor:rename',os.rename,s,name,src_dir_fd=tmpfd,dst_dir_fd=objfd)
        else:
            step('cas:link',os.link,s,name,src_dir_fd=tmpfd,dst_dir_fd=objfd)
            step('cas:unlink',os.unlink,s,dir_fd=tmpfd)
            step('cas:close',os.close,fd)
        T[mode+':TOTAL']+=time.perf_counter()-t0
for k in sorted(T): print(f"{k:18s} {T[k]/N*1e3:7.3f} ms/put")
print("ratio cas/floor rate:", round(T['floor:TOTAL']/T['cas:TOTAL'],3))
