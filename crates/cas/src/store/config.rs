//! Store options and the `config` file that persists them (`key = value` lines).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// How hard a write works to survive a power loss. Crashes of the *process* are always safe:
/// a visible name only ever holds complete bytes, whatever the level. Levels are ordered
/// `None < File < Full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Durability {
    /// No fsync. After a power loss (not a process crash) a published name may hold garbage or
    /// be missing; `cas verify` finds and quarantines such objects.
    None,
    /// fsync the staging file before publishing its name: a visible name never holds unsynced
    /// bytes. The name itself may be lost in a power loss.
    #[default]
    File,
    /// As `File`, and also fsync the directory after publishing, so the name survives too.
    Full,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::None => "none",
            Durability::File => "file",
            Durability::Full => "full",
        })
    }
}

impl FromStr for Durability {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Durability::None),
            "file" => Ok(Durability::File),
            "full" => Ok(Durability::Full),
            _ => Err(Error::InvalidInput {
                what: "durability",
                reason: format!("{s:?} is not one of none, file, full"),
            }),
        }
    }
}

/// Options of a store. Persisted in the store's `config` file by [`crate::Store::init`];
/// [`crate::Store::open_with`] can override them for one handle.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Default durability of writes.
    pub durability: Durability,
    /// Multi-user store: directories setgid and group-writable, objects group-readable,
    /// whatever each user's umask.
    pub shared_group: bool,
    /// Standing size budget in bytes for `gc` (None: no budget).
    pub max_size: Option<u64>,
    /// A lock older than this whose holder cannot be proven alive is broken.
    pub lock_timeout: Duration,
    /// Staging files older than this are removed by gc even when their writer's liveness is
    /// unknown (writer on another host).
    pub stale_age: Duration,
    /// The upstream store of a tiered store (`upstream = DIR` in `config`): objects missing
    /// here are fetched from it, puts are written through to it, and refs and cache entries
    /// live in it (docs/format.md "Tiered stores"). `None`: a standalone store.
    /// [`crate::Store::init`] records it as an absolute path; one given to
    /// [`crate::Store::open_with`] is used as it is (relative to the current directory).
    pub upstream: Option<PathBuf>,
    /// The upstream is read-only (`upstream-readonly = true`): puts stay in this store, and
    /// refs and cache entries can be read but not set.
    pub upstream_readonly: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::File,
            shared_group: false,
            max_size: None,
            lock_timeout: Duration::from_mins(1),
            stale_age: Duration::from_hours(24),
            upstream: None,
            upstream_readonly: false,
        }
    }
}

impl Options {
    /// Sets the durability (builder style).
    #[must_use]
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }
    /// Sets multi-user group mode (builder style).
    #[must_use]
    pub fn shared_group(mut self, on: bool) -> Self {
        self.shared_group = on;
        self
    }
    /// Sets the standing size budget (builder style).
    #[must_use]
    pub fn max_size(mut self, bytes: Option<u64>) -> Self {
        self.max_size = bytes;
        self
    }
    /// Sets the lock lease timeout (builder style).
    #[must_use]
    pub fn lock_timeout(mut self, t: Duration) -> Self {
        self.lock_timeout = t;
        self
    }
    /// Sets the stale age of staging files (builder style).
    #[must_use]
    pub fn stale_age(mut self, t: Duration) -> Self {
        self.stale_age = t;
        self
    }

    /// Sets the upstream store (builder style); see [`Options::upstream`].
    #[must_use]
    pub fn upstream(mut self, dir: Option<PathBuf>) -> Self {
        self.upstream = dir;
        self
    }
    /// Makes the upstream read-only (builder style).
    #[must_use]
    pub fn upstream_readonly(mut self, on: bool) -> Self {
        self.upstream_readonly = on;
        self
    }

    /// Renders the `config` file.
    pub(crate) fn to_file(&self) -> String {
        let max = self
            .max_size
            .map_or_else(String::new, |m| format!("max-size = {m}\n"));
        let mut upstream = self
            .upstream
            .as_ref()
            .map_or_else(String::new, |u| format!("upstream = {}\n", u.display()));
        if self.upstream.is_some() && self.upstream_readonly {
            upstream.push_str("upstream-readonly = true\n");
        }
        format!(
            "# cas store configuration; see docs/format.md\n\
             durability = {}\nshared = {}\n{max}lock-timeout = {}\nstale-age = {}\n{upstream}",
            self.durability,
            if self.shared_group { "group" } else { "none" },
            format_duration(self.lock_timeout),
            format_duration(self.stale_age),
        )
    }

    /// Parses a `config` file. Unknown keys are ignored (a newer minor version may add some);
    /// a known key with a bad value is an error naming the line.
    pub(crate) fn parse_file(text: &str) -> std::result::Result<Options, String> {
        let mut o = Options::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!("line {}: expected `key = value`", n + 1));
            };
            let (k, v) = (k.trim(), v.trim());
            let bad = |e: String| format!("line {} ({k}): {e}", n + 1);
            match k {
                "durability" => o.durability = v.parse().map_err(|e: Error| bad(e.to_string()))?,
                "shared" => {
                    o.shared_group = match v {
                        "group" => true,
                        "none" => false,
                        _ => return Err(bad(format!("{v:?} is not `group` or `none`"))),
                    }
                }
                "max-size" => o.max_size = Some(parse_size(v).map_err(bad)?),
                "lock-timeout" => o.lock_timeout = parse_duration(v).map_err(bad)?,
                "stale-age" => o.stale_age = parse_duration(v).map_err(bad)?,
                "upstream" if v.is_empty() => return Err(bad("an empty path".into())),
                "upstream" => o.upstream = Some(PathBuf::from(v)),
                "upstream-readonly" => {
                    o.upstream_readonly = match v {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad(format!("{v:?} is not `true` or `false`"))),
                    }
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

/// A decimal number at the start of `s`: its integer part, its fraction digits (at most 9
/// kept, as a numerator over `10^len`), and the rest of the text.
struct Decimal<'a> {
    int: u64,
    frac: u64,
    frac_scale: u64,
    rest: &'a str,
}

fn split_decimal<'a>(s: &'a str, what: &str) -> std::result::Result<Decimal<'a>, String> {
    let int_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (int_text, mut rest) = s.split_at(int_end);
    let (mut frac, mut frac_scale) = (0u64, 1u64);
    if let Some(after_dot) = rest.strip_prefix('.') {
        let frac_end = after_dot
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after_dot.len());
        if frac_end == 0 {
            return Err(format!("{s:?} is not {what}"));
        }
        for d in after_dot[..frac_end].bytes().take(9) {
            frac = frac * 10 + u64::from(d - b'0');
            frac_scale *= 10;
        }
        rest = &after_dot[frac_end..];
    }
    if int_text.is_empty() && frac_scale == 1 {
        return Err(format!("{s:?} is not {what}"));
    }
    let int = if int_text.is_empty() {
        0
    } else {
        int_text
            .parse()
            .map_err(|_| format!("{s:?}: number too large"))?
    };
    Ok(Decimal {
        int,
        frac,
        frac_scale,
        rest,
    })
}

impl Decimal<'_> {
    /// `int.frac × per`, rounded down; `None` on overflow.
    fn times(&self, per: u64) -> Option<u64> {
        let whole = self.int.checked_mul(per)?;
        let part = u128::from(self.frac) * u128::from(per) / u128::from(self.frac_scale);
        whole.checked_add(u64::try_from(part).ok()?)
    }
}

/// Parses a size: a number, possibly with a fraction, with an optional unit `B`,
/// `K`/`KB`/`KiB`, `M…`, `G…`, `T…`, `P…` (binary multiples: `1K` = 1024 bytes).
///
/// ```
/// assert_eq!(cas::parse_size("1536").unwrap(), 1536);
/// assert_eq!(cas::parse_size("10M").unwrap(), 10 << 20);
/// assert_eq!(cas::parse_size("2GiB").unwrap(), 2 << 30);
/// assert_eq!(cas::parse_size("1.5G").unwrap(), 3 << 29);
/// assert_eq!(cas::parse_size("0.5k").unwrap(), 512);
/// assert!(cas::parse_size("ten").is_err());
/// assert!(cas::parse_size("1.5").is_err()); // a fraction of a byte
/// ```
///
/// # Errors
/// A message saying what is wrong with the text.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let d = split_decimal(s, "a size (expected e.g. 512M, 1.5G, 1048576)")?;
    let shift = match d.rest.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        u => return Err(format!("{s:?}: unknown unit {u:?} (use K, M, G, T or P)")),
    };
    if shift == 0 && d.frac != 0 {
        return Err(format!("{s:?}: a size in bytes is a whole number"));
    }
    d.times(1u64 << shift)
        .ok_or_else(|| format!("{s:?}: size too large"))
}

/// Parses a duration: one or more numbers (possibly with a fraction), each with a unit `ms`,
/// `s`, `m`/`min`, `h`, `d`, `w`, added up (`1h30m`, `1w`, `1.5h`); a bare number is seconds.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(cas::parse_duration("0s").unwrap(), Duration::ZERO);
/// assert_eq!(cas::parse_duration("90m").unwrap(), Duration::from_secs(5400));
/// assert_eq!(cas::parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
/// assert_eq!(cas::parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
/// assert_eq!(cas::parse_duration("1w").unwrap(), Duration::from_secs(7 * 86400));
/// assert_eq!(cas::parse_duration("250ms").unwrap(), Duration::from_millis(250));
/// assert_eq!(cas::parse_duration("30").unwrap(), Duration::from_secs(30));
/// assert!(cas::parse_duration("-1s").is_err());
/// assert!(cas::parse_duration("1h30").is_err()); // a unit on every part but a lone number
/// ```
///
/// # Errors
/// A message saying what is wrong with the text.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let what = "a duration (expected e.g. 0s, 30s, 10m, 1h30m, 7d, 1w)";
    let mut rest = s;
    let mut total: u64 = 0;
    let mut parts = 0;
    while !rest.is_empty() || parts == 0 {
        let d = split_decimal(rest, what).map_err(|_| format!("{s:?} is not {what}"))?;
        let unit_end = d
            .rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(d.rest.len());
        let (unit, after) = d.rest.split_at(unit_end);
        let ms_per = match unit {
            "ms" => 1,
            "" if parts == 0 && after.is_empty() => 1000,
            "s" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "" => {
                return Err(format!(
                    "{s:?}: every part needs a unit (ms, s, m, h, d or w)"
                ))
            }
            u => {
                return Err(format!(
                    "{s:?}: unknown unit {u:?} (use ms, s, m, h, d or w)"
                ))
            }
        };
        total = d
            .times(ms_per)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("{s:?}: duration too large"))?;
        rest = after.trim_start();
        parts += 1;
    }
    Ok(Duration::from_millis(total))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Validates an upstream path for the `config` file (one line, not empty).
pub(crate) fn check_upstream_path(p: &Path) -> Result<()> {
    let s = p.to_string_lossy();
    if s.trim().is_empty() || s.contains('\n') || s.contains('\r') || s.trim() != s {
        return Err(Error::InvalidInput {
            what: "upstream",
            reason: format!(
                "{s:?}: the path must be non-empty, one line, without surrounding spaces"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn config_round_trip() {
        let o = Options::default()
            .durability(Durability::Full)
            .shared_group(true)
            .max_size(Some(12345))
            .lock_timeout(Duration::from_millis(1500));
        assert_eq!(Options::parse_file(&o.to_file()).unwrap(), o);
        let o = o
            .upstream(Some(PathBuf::from("/shared/cas store")))
            .upstream_readonly(true);
        assert_eq!(Options::parse_file(&o.to_file()).unwrap(), o);
    }

    #[test]
    fn config_errors_name_the_line() {
        let e = Options::parse_file("durability = fast\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("durability"), "{e}");
        assert!(Options::parse_file("future-key = 1\n").is_ok());
        assert!(Options::parse_file("garbage\n").is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".*") {
            let _ = parse_size(&s);
            let _ = parse_duration(&s);
            let _ = Options::parse_file(&s);
        }

        #[test]
        fn duration_round_trip(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}
