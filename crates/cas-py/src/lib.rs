//! `cas._cas`: the compiled half of the Python package `cas`.
//!
//! A thin layer over the Rust library (`crates/cas`): every method is one call of the
//! library's public API, made with the GIL released (`py.allow_threads`); this file only
//! converts arguments, results and errors. Callbacks (the producers of `ensure_*`) run with
//! the GIL held, taken back by the library's thread that calls them. The Python half
//! (`python/cas`) holds the exception classes and the `io.RawIOBase` file object.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString};

/// A Python exception raised by a producer, carried through the library's compute-once as
/// the producer's error and raised again, unchanged (type, message, traceback), to the
/// caller.
#[derive(Debug)]
struct Raised(PyErr);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the producer raised a Python exception")
    }
}

impl std::error::Error for Raised {}

/// A library error as the Python exception of its kind (`cas._errors`): the message is the
/// error and its causes, one after the other as the CLI prints them; the operating system's
/// error is the `__cause__` (an `OSError` with `errno`, `strerror` and `filename`), and
/// `errno`, `filename`, `path` and `hash` are set where they exist.
fn to_py(py: Python<'_>, e: &cas::Error) -> PyErr {
    if let cas::Error::Producer { source, .. } = e {
        if let Some(r) = source.downcast_ref::<Raised>() {
            return r.0.clone_ref(py);
        }
    }
    match build(py, e) {
        Ok(err) => err,
        // Only if the package's own Python half is broken: still say what happened.
        Err(broken) => {
            let err = PyOSError::new_err(message(e));
            err.set_cause(py, Some(broken));
            err
        }
    }
}

/// The error and the chain of its sources, as one line.
fn message(e: &cas::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn class_name(e: &cas::Error) -> &'static str {
    match e.kind() {
        cas::ErrorKind::NotFound => "NotFound",
        cas::ErrorKind::Corrupt => "Corrupt",
        cas::ErrorKind::Malformed | cas::ErrorKind::InvalidInput => "Malformed",
        cas::ErrorKind::Conflict => "Conflict",
        cas::ErrorKind::Locked => "Locked",
        cas::ErrorKind::NotAStore => "NotAStore",
        _ => "Error",
    }
}

fn build(py: Python<'_>, e: &cas::Error) -> PyResult<PyErr> {
    let errors = py.import("cas._errors")?;
    let exc = errors.getattr(class_name(e))?.call1((message(e),))?;
    // The first operating-system error along the chain (an upstream's error wraps one).
    let mut io = None;
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(i) = s.downcast_ref::<std::io::Error>() {
            io = Some(i);
            break;
        }
        src = s.source();
    }
    let path = e.path().map(Path::to_path_buf);
    if let Some(p) = &path {
        // As str, as OSError's own filename is (non-UTF-8 bytes surrogate-escaped).
        exc.setattr("path", p.as_os_str())?;
        exc.setattr("filename", p.as_os_str())?;
    }
    match e {
        cas::Error::NotFound { hash, .. }
        | cas::Error::Corrupt { expected: hash, .. }
        | cas::Error::CorruptRange { hash, .. } => {
            exc.setattr("hash", hash.to_hex())?;
        }
        _ => {}
    }
    let err = PyErr::from_value(exc.clone());
    if let Some(io) = io {
        let errno = io.raw_os_error();
        let os = match errno {
            // OSError(errno, strerror, filename) picks the subclass (FileNotFoundError, …).
            Some(n) => py.get_type::<PyOSError>().call1((
                n,
                strerror(io),
                path.as_deref().map(Path::as_os_str),
            ))?,
            None => py.get_type::<PyOSError>().call1((io.to_string(),))?,
        };
        if let Some(n) = errno {
            exc.setattr("errno", n)?;
        }
        err.set_cause(py, Some(PyErr::from_value(os)));
    }
    Ok(err)
}

/// `strerror` of an OS error: its message without Rust's " (os error N)" suffix.
fn strerror(io: &std::io::Error) -> String {
    let s = io.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

fn hash(py: Python<'_>, s: &str) -> PyResult<cas::Hash> {
    cas::Hash::parse(s).map_err(|e| to_py(py, &e))
}

/// A key: `str` (its UTF-8 bytes) or `bytes`.
fn key_bytes(key: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(s) = key.downcast::<PyString>() {
        return Ok(s.to_cow()?.as_bytes().to_vec());
    }
    if let Ok(b) = key.downcast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    Err(PyTypeError::new_err(format!(
        "a key is str or bytes, not {}",
        key.get_type().name()?
    )))
}

/// The bytes of a `bytes`, `bytearray` or `memoryview`. A `bytes` is borrowed; the mutable
/// ones are copied first, so no other thread can change them while the GIL is released
/// and the store hashes and writes them.
fn data_bytes<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    if let Ok(b) = data.downcast::<PyBytes>() {
        return Ok(b.clone());
    }
    if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
        return Ok(data
            .py()
            .get_type::<PyBytes>()
            .call1((data,))?
            .downcast_into::<PyBytes>()?);
    }
    Err(PyTypeError::new_err(format!(
        "data is bytes, bytearray or memoryview, not {}",
        data.get_type().name()?
    )))
}

/// Seconds (`int`/`float`), a `datetime.timedelta`, or a duration in words (`"90s"`, `"1h"`).
fn duration(what: &str, v: &Bound<'_, PyAny>) -> PyResult<Duration> {
    if let Ok(s) = v.downcast::<PyString>() {
        return cas::parse_duration(&s.to_cow()?)
            .map_err(|reason| PyValueError::new_err(format!("invalid {what}: {reason}")));
    }
    let secs: f64 = if v.hasattr("total_seconds")? {
        v.call_method0("total_seconds")?.extract()?
    } else {
        v.extract()?
    };
    Duration::try_from_secs_f64(secs).map_err(|_| {
        PyValueError::new_err(format!(
            "invalid {what}: {secs} is not a number of seconds >= 0"
        ))
    })
}

/// A size in bytes (`int`) or in words (`"10G"`).
fn size(v: &Bound<'_, PyAny>) -> PyResult<u64> {
    if let Ok(s) = v.downcast::<PyString>() {
        return cas::parse_size(&s.to_cow()?)
            .map_err(|reason| PyValueError::new_err(format!("invalid max_size: {reason}")));
    }
    v.extract::<u64>()
        .map_err(|_| PyValueError::new_err("invalid max_size: a size in bytes >= 0, or \"10G\""))
}

fn pathlib<'py>(py: Python<'py>, p: &Path) -> PyResult<Bound<'py, PyAny>> {
    py.import("pathlib")?.getattr("Path")?.call1((p,))
}

/// A report (serde) as a plain `dict`, through JSON: the library's own field names.
fn to_dict<'py, T: serde::Serialize>(py: Python<'py>, v: &T) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(v)
        .map_err(|e| PyValueError::new_err(format!("cannot encode the report: {e}")))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// The `expect=` argument of a compare-and-swap: `cas.ANY` (the default: whatever is there),
/// `None` (must be absent) or a hash.
enum ExpectArg {
    Any,
    Absent,
    Value(String),
}

impl<'py> FromPyObject<'py> for ExpectArg {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        if ob.is_none() {
            return Ok(ExpectArg::Absent);
        }
        if ob.is_instance_of::<AnyValue>() {
            return Ok(ExpectArg::Any);
        }
        match ob.downcast::<PyString>() {
            Ok(s) => Ok(ExpectArg::Value(s.to_cow()?.into_owned())),
            Err(_) => Err(PyTypeError::new_err(
                "expect is a hash (str), None (must be absent) or cas.ANY",
            )),
        }
    }
}

impl ExpectArg {
    fn get(&self, py: Python<'_>) -> PyResult<cas::Expect> {
        Ok(match self {
            ExpectArg::Any => cas::Expect::Any,
            ExpectArg::Absent => cas::Expect::Absent,
            ExpectArg::Value(h) => cas::Expect::Value(hash(py, h)?),
        })
    }
}

/// The type of `cas.ANY`: "whatever the value is" for `expect=`.
#[pyclass(module = "cas", name = "_AnyValue", frozen)]
struct AnyValue;

#[pymethods]
impl AnyValue {
    #[allow(clippy::unused_self)] // a Python method
    fn __repr__(&self) -> &'static str {
        "cas.ANY"
    }
}

/// A store (see `cas.Store` in the package's documentation and stubs).
#[pyclass(module = "cas", name = "Store", frozen)]
struct Store {
    /// The library's handle; replaced by a fresh one in a forked child
    /// (`cas::Store::for_this_process`).
    handle: Mutex<cas::Store>,
    /// What the handle was opened with, to open it again after pickling.
    durability: Option<String>,
    upstream: Option<PathBuf>,
}

fn open(
    path: Option<PathBuf>,
    create: bool,
    durability: Option<&str>,
    upstream: Option<PathBuf>,
) -> cas::Result<cas::Store> {
    let (root, rule) = if let Some(p) = path {
        (p, cas::Create::IfMissingOrEmpty)
    } else {
        let d = cas::DefaultStore::locate()?;
        (d.path, d.create)
    };
    let rule = if create { rule } else { cas::Create::Never };
    let store = cas::Store::open_or_create(root, cas::Options::default(), rule)?;
    if durability.is_none() && upstream.is_none() {
        return Ok(store);
    }
    let mut o = store.options().clone();
    if let Some(d) = durability {
        o = o.durability(d.parse()?);
    }
    if upstream.is_some() {
        o = o.upstream(upstream);
    }
    store.with_options(o)
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, cas::Store> {
        // A poisoned lock only means a panic elsewhere; the handle itself is intact.
        self.handle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The handle, owned by this process (a fresh one after a `fork`).
    fn store(&self) -> cas::Result<cas::Store> {
        let mut h = self.lock();
        let s = h.for_this_process()?;
        *h = s.clone();
        Ok(s)
    }

    /// Runs `f` on the store with the GIL released; a library error becomes its exception.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&cas::Store) -> cas::Result<T> + Send,
    ) -> PyResult<T> {
        py.allow_threads(|| f(&self.store()?))
            .map_err(|e| to_py(py, &e))
    }
}

/// The compute-once handle of the `ensure_*` methods: the key, its metadata, and the caller's
/// timeout if it gave one.
fn compute_once<'a>(
    s: &'a cas::Store,
    key: &'a [u8],
    metadata: &'a [u8],
    timeout: Option<std::time::Duration>,
) -> cas::ComputeOnce<'a> {
    let once = s.compute_once(key).metadata(metadata);
    match timeout {
        Some(t) => once.timeout(t),
        None => once,
    }
}

/// Calls a producer with the GIL held; its exception becomes the library's producer error.
fn call_producer(produce: &Py<PyAny>, arg: Option<&Path>) -> Result<Py<PyAny>, cas::ProducerError> {
    Python::with_gil(|py| {
        let r = match arg {
            Some(p) => pathlib(py, p).and_then(|p| produce.call1(py, (p,))),
            None => produce.call0(py),
        };
        r.map_err(|e| Box::new(Raised(e)) as cas::ProducerError)
    })
}

#[pymethods]
impl Store {
    #[new]
    #[pyo3(signature = (path=None, *, create=true, durability=None, upstream=None))]
    fn new(
        py: Python<'_>,
        path: Option<PathBuf>,
        create: bool,
        durability: Option<String>,
        upstream: Option<PathBuf>,
    ) -> PyResult<Self> {
        let (d, u) = (durability.clone(), upstream.clone());
        let store = py
            .allow_threads(|| open(path, create, d.as_deref(), u))
            .map_err(|e| to_py(py, &e))?;
        Ok(Store {
            handle: Mutex::new(store),
            durability,
            upstream,
        })
    }

    /// The store's directory.
    #[getter]
    fn path<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let root = self.lock().root().to_path_buf();
        pathlib(py, &root)
    }

    fn __repr__(&self) -> String {
        format!("cas.Store({:?})", self.lock().root().display().to_string())
    }

    /// Pickling (multiprocessing with `spawn`) opens the same store again, never creating it.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let f = py.import("cas._cas")?.getattr("_reopen")?;
        let root = self.lock().root().to_path_buf();
        let args = (root, self.durability.clone(), self.upstream.clone())
            .into_pyobject(py)?
            .into_any();
        Ok((f, args))
    }

    // Objects.

    fn put(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<String> {
        let b = data_bytes(data)?;
        let bytes = b.as_bytes();
        self.run(py, |s| s.put_bytes(bytes)).map(|h| h.to_hex())
    }

    fn put_file(&self, py: Python<'_>, path: PathBuf) -> PyResult<String> {
        self.run(py, |s| s.put_path(&path)).map(|h| h.to_hex())
    }

    fn put_dir(&self, py: Python<'_>, path: PathBuf) -> PyResult<String> {
        self.run(py, |s| s.put_dir(&path)).map(|h| h.to_hex())
    }

    fn get<'py>(&self, py: Python<'py>, hash: &str) -> PyResult<Bound<'py, PyBytes>> {
        let h = self::hash(py, hash)?;
        let obj = self.run(py, |s| s.get(&h))?;
        Ok(PyBytes::new(py, &obj))
    }

    fn get_file<'py>(
        &self,
        py: Python<'py>,
        hash: &str,
        dest: PathBuf,
    ) -> PyResult<Bound<'py, PyAny>> {
        let h = self::hash(py, hash)?;
        self.run(py, |s| s.get_to_path(&h, &dest))?;
        pathlib(py, &dest)
    }

    fn checkout<'py>(
        &self,
        py: Python<'py>,
        tree: &str,
        dest: PathBuf,
    ) -> PyResult<Bound<'py, PyAny>> {
        let h = self::hash(py, tree)?;
        self.run(py, |s| s.checkout(&h, &dest))?;
        pathlib(py, &dest)
    }

    /// `length` bytes from `start`, verified a 16 KiB chunk group at a time against the
    /// object's name (only the groups the range touches are read).
    fn read_range<'py>(
        &self,
        py: Python<'py>,
        hash: &str,
        start: u64,
        length: u64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let h = self::hash(py, hash)?;
        let end = start
            .checked_add(length)
            .ok_or_else(|| PyValueError::new_err("start + length is past any object's end"))?;
        let v = self.run(py, |s| s.read_range(&h, start..end))?;
        Ok(PyBytes::new(py, &v))
    }

    fn open<'py>(&self, py: Python<'py>, hash: &str) -> PyResult<Bound<'py, PyAny>> {
        let h = self::hash(py, hash)?;
        let r = self.run(py, |s| s.reader(&h))?;
        let reader = Reader {
            inner: Mutex::new(Some(r)),
            hash: h,
        };
        py.import("cas._file")?
            .getattr("ObjectFile")?
            .call1((reader, hash))
    }

    fn contains(&self, py: Python<'_>, hash: &str) -> PyResult<bool> {
        let h = self::hash(py, hash)?;
        self.run(py, |s| Ok(s.contains(&h)))
    }

    fn __contains__(&self, py: Python<'_>, hash: &str) -> PyResult<bool> {
        self.contains(py, hash)
    }

    // Compute once.

    #[pyo3(signature = (key, produce, *, timeout=None, metadata=None))]
    fn ensure_bytes<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        produce: Py<PyAny>,
        timeout: Option<&Bound<'py, PyAny>>,
        metadata: Option<Vec<u8>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let key = key_bytes(key)?;
        let timeout = timeout.map(|t| duration("timeout", t)).transpose()?;
        let metadata = metadata.unwrap_or_default();
        let obj = self.run(py, |s| {
            let once = compute_once(s, &key, &metadata, timeout);
            once.bytes(|| {
                let r = call_producer(&produce, None)?;
                Python::with_gil(|py| {
                    data_bytes(r.bind(py))
                        .map(|b| b.as_bytes().to_vec())
                        .map_err(|e| Box::new(Raised(e)) as cas::ProducerError)
                })
            })
        })?;
        Ok(PyBytes::new(py, &obj))
    }

    #[pyo3(signature = (key, produce, *, dest, timeout=None, metadata=None))]
    fn ensure_file<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        produce: Py<PyAny>,
        dest: PathBuf,
        timeout: Option<&Bound<'py, PyAny>>,
        metadata: Option<Vec<u8>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = key_bytes(key)?;
        let timeout = timeout.map(|t| duration("timeout", t)).transpose()?;
        let metadata = metadata.unwrap_or_default();
        self.run(py, |s| {
            let once = compute_once(s, &key, &metadata, timeout);
            let r = once.resolve_output(|_w, out| call_producer(&produce, Some(out)).map(drop))?;
            s.get_to_path(&r.hash, &dest)
        })?;
        pathlib(py, &dest)
    }

    #[pyo3(signature = (key, produce, *, dest, timeout=None, metadata=None))]
    fn ensure_dir<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        produce: Py<PyAny>,
        dest: PathBuf,
        timeout: Option<&Bound<'py, PyAny>>,
        metadata: Option<Vec<u8>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = key_bytes(key)?;
        let timeout = timeout.map(|t| duration("timeout", t)).transpose()?;
        let metadata = metadata.unwrap_or_default();
        self.run(py, |s| {
            let once = compute_once(s, &key, &metadata, timeout);
            let tree = once.dir(|out| call_producer(&produce, Some(out)).map(drop))?;
            s.checkout(&tree, &dest)
        })?;
        pathlib(py, &dest)
    }

    // Keys and refs.

    fn get_key<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let key = key_bytes(key)?;
        let obj = self.run(py, |s| match s.get_keyed(&key) {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        })?;
        Ok(obj.map(|o| PyBytes::new(py, &o)))
    }

    #[pyo3(signature = (key, hash, *, expect=ExpectArg::Any, metadata=None))]
    fn set_key(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        hash: &str,
        expect: ExpectArg,
        metadata: Option<Vec<u8>>,
    ) -> PyResult<Option<String>> {
        let key = key_bytes(key)?;
        let h = self::hash(py, hash)?;
        let expect = expect.get(py)?;
        let metadata = metadata.unwrap_or_default();
        self.run(py, |s| s.set_keyed(&key, h, &metadata, expect))
            .map(|old| old.map(|h| h.to_hex()))
    }

    #[pyo3(signature = (key, data, metadata=None))]
    fn put_key(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        metadata: Option<Vec<u8>>,
    ) -> PyResult<String> {
        let key = key_bytes(key)?;
        let b = data_bytes(data)?;
        let bytes = b.as_bytes();
        let metadata = metadata.unwrap_or_default();
        self.run(py, |s| s.put_keyed_bytes(&key, bytes, &metadata))
            .map(|h| h.to_hex())
    }

    fn remove_key(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let key = key_bytes(key)?;
        self.run(py, |s| s.remove_keyed(&key))
    }

    fn get_ref(&self, py: Python<'_>, name: &str) -> PyResult<Option<String>> {
        self.run(py, |s| s.get_ref(name))
            .map(|h| h.map(|h| h.to_hex()))
    }

    #[pyo3(signature = (name, hash, *, expect=ExpectArg::Any))]
    fn set_ref(
        &self,
        py: Python<'_>,
        name: &str,
        hash: &str,
        expect: ExpectArg,
    ) -> PyResult<Option<String>> {
        let h = self::hash(py, hash)?;
        let expect = expect.get(py)?;
        self.run(py, |s| s.set_ref(name, h, expect))
            .map(|old| old.map(|h| h.to_hex()))
    }

    #[pyo3(signature = (name, *, expect=ExpectArg::Any))]
    fn remove_ref(&self, py: Python<'_>, name: &str, expect: ExpectArg) -> PyResult<String> {
        let expect = expect.get(py)?;
        self.run(py, |s| s.remove_ref(name, expect))
            .map(|h| h.to_hex())
    }

    #[pyo3(signature = (prefix=""))]
    fn refs(&self, py: Python<'_>, prefix: &str) -> PyResult<Vec<(String, String)>> {
        let refs = self.run(py, |s| s.list_refs(prefix))?;
        Ok(refs.into_iter().map(|(n, h)| (n, h.to_hex())).collect())
    }

    // Maintenance.

    #[pyo3(signature = (*, max_size=None, grace=None))]
    fn gc<'py>(
        &self,
        py: Python<'py>,
        max_size: Option<&Bound<'py, PyAny>>,
        grace: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut opts = cas::GcOptions::default();
        if let Some(m) = max_size {
            opts = opts.max_size(Some(size(m)?));
        }
        if let Some(g) = grace {
            opts = opts.grace(duration("grace", g)?);
        }
        let report = self.run(py, |s| s.gc(&opts, &cas::no_progress))?;
        let d = to_dict(py, &report)?;
        d.set_item("clean", report.is_clean())?;
        Ok(d)
    }

    fn verify<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let report = self.run(py, |s| s.verify(&cas::no_progress))?;
        let d = to_dict(py, &report)?;
        d.set_item("clean", report.is_clean())?;
        Ok(d)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (stats, fs) = self.run(py, |s| Ok((s.stats()?, s.fs_info())))?;
        let d = to_dict(py, &stats)?;
        d.set_item("path", self.path(py)?)?;
        d.set_item("filesystem", fs.fs_type)?;
        d.set_item("network", fs.network)?;
        Ok(d)
    }
}

/// Pickle support: the store at `path`, opened again (never created).
#[pyfunction]
#[pyo3(signature = (path, durability=None, upstream=None))]
fn _reopen(
    py: Python<'_>,
    path: PathBuf,
    durability: Option<String>,
    upstream: Option<PathBuf>,
) -> PyResult<Store> {
    Store::new(py, Some(path), false, durability, upstream)
}

/// The verifying reader behind `cas.ObjectFile` (python/cas/_file.py).
#[pyclass(module = "cas._cas", name = "_Reader", frozen)]
struct Reader {
    /// `None` once closed.
    inner: Mutex<Option<cas::ObjectReader>>,
    hash: cas::Hash,
}

impl Reader {
    /// Runs `f` on the open reader with the GIL released; an I/O error becomes the
    /// library's error (a corrupt object is `cas.Corrupt`).
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut cas::ObjectReader) -> std::io::Result<T> + Send,
    ) -> PyResult<T> {
        let r = py.allow_threads(|| {
            let mut g = self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match g.as_mut() {
                Some(r) => Ok(f(r)),
                None => Err(()),
            }
        });
        match r {
            Err(()) => Err(PyValueError::new_err("I/O operation on closed file")),
            Ok(Ok(v)) => Ok(v),
            // A seek before the start is the caller's mistake, as for a file.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidInput => {
                Err(PyValueError::new_err(e.to_string()))
            }
            Ok(Err(e)) => {
                let e = match e.into_inner() {
                    Some(inner) => match inner.downcast::<cas::Error>() {
                        Ok(ce) => *ce,
                        Err(other) => io_err(&self.hash, std::io::Error::other(other)),
                    },
                    None => io_err(&self.hash, std::io::Error::other("read failed")),
                };
                Err(to_py(py, &e))
            }
        }
    }
}

fn io_err(hash: &cas::Hash, source: std::io::Error) -> cas::Error {
    cas::Error::Io {
        op: "read object",
        path: PathBuf::from(hash.to_hex()),
        source,
    }
}

#[pymethods]
impl Reader {
    /// Up to `size` bytes (all that is left if `size` < 0); empty at the end.
    #[pyo3(signature = (size=-1))]
    fn read<'py>(&self, py: Python<'py>, size: i64) -> PyResult<Bound<'py, PyBytes>> {
        let buf = self.run(py, |r| {
            let mut buf = Vec::new();
            match u64::try_from(size) {
                Ok(n) => r.take(n).read_to_end(&mut buf)?,
                Err(_) => r.read_to_end(&mut buf)?,
            };
            Ok(buf)
        })?;
        Ok(PyBytes::new(py, &buf))
    }

    #[pyo3(signature = (offset, whence=0))]
    fn seek(&self, py: Python<'_>, offset: i64, whence: i32) -> PyResult<u64> {
        let pos = match whence {
            0 => match u64::try_from(offset) {
                Ok(o) => SeekFrom::Start(o),
                Err(_) => {
                    return Err(PyValueError::new_err(format!(
                        "negative seek position {offset}"
                    )))
                }
            },
            1 => SeekFrom::Current(offset),
            2 => SeekFrom::End(offset),
            w => {
                return Err(PyValueError::new_err(format!(
                    "invalid whence ({w}, should be 0, 1 or 2)"
                )))
            }
        };
        self.run(py, |r| r.seek(pos))
    }

    fn tell(&self, py: Python<'_>) -> PyResult<u64> {
        self.run(py, Seek::stream_position)
    }

    /// The object's size in bytes.
    fn size(&self, py: Python<'_>) -> PyResult<u64> {
        self.run(py, |r| r.len().map_err(std::io::Error::from))
    }

    fn close(&self) {
        *self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

#[pymodule]
fn _cas(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Store>()?;
    m.add_class::<Reader>()?;
    m.add_class::<AnyValue>()?;
    m.add("ANY", AnyValue)?;
    m.add_function(wrap_pyfunction!(_reopen, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
