//! The terminal: stdout without panics, broken pipes, human sizes and times, progress bars.
//! What a report says, in either form, is `render.rs`'s.

use std::io;

/// `println!` for the command's results, without its panic: a closed pipe
/// (`cas ls | head -1`) ends the process quietly with status 0 — what the reader wanted was
/// read — and any other failure to write stdout (a full disk behind `> file`) is an error
/// naming stdout, status 1. Never used while an operation is half done: results are printed
/// after the store has done its work.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_stdout_line(format_args!($($arg)*))
    };
}

/// The body of [`outln!`].
pub fn write_stdout_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = io::stdout().lock();
    stdout_written(out.write_fmt(args).and_then(|()| out.write_all(b"\n")));
}

/// Bytes on stdout with [`outln!`]'s rules (a rendered report, in one write).
pub fn write_stdout(bytes: &[u8]) {
    use std::io::Write as _;
    let mut out = io::stdout().lock();
    stdout_written(out.write_all(bytes).and_then(|()| out.flush()));
}

/// A write to stdout done: a closed pipe ends the process with 0, another failure with 1.
fn stdout_written(r: io::Result<()>) {
    if let Err(e) = r {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("cas: error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// True if the error is a write to a closed pipe (`cas get … | head`): not a failure.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<cas::Error>()
                .and_then(cas::Error::io_error)
                .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Unix seconds as `2026-12-02 11:42:09 UTC` (no time-zone database needed).
pub fn human_time(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// 1536 → "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// The bars drawn now, so that a signal can clear them before the process exits (a bar left
/// on the terminal after Ctrl-C looks like work still going on).
static ACTIVE: std::sync::Mutex<Vec<(u64, indicatif::ProgressBar)>> =
    std::sync::Mutex::new(Vec::new());
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn active() -> std::sync::MutexGuard<'static, Vec<(u64, indicatif::ProgressBar)>> {
    ACTIVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Clears every bar from the terminal and stops drawing them: called by the signal thread
/// just before it exits, while the interrupted command may still report progress.
pub fn clear_bars() {
    use std::io::Write as _;
    let bars: Vec<_> = active().drain(..).collect();
    if bars.is_empty() {
        return;
    }
    // Hidden first: the draw target is swapped under the bar's lock, so no thread still
    // reporting progress can draw it again after the line is erased (`finish_and_clear`
    // would leave that window: a report after it resets and redraws the bar). Our bars are
    // one line, drawn last on stderr: erasing that line erases them.
    for (_, b) in &bars {
        b.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut err = io::stderr().lock();
    let _ = err.write_all(b"\r\x1b[2K");
    let _ = err.flush();
}

/// Runs `f` (which writes a line on stderr) with the bar being drawn taken off the terminal
/// and drawn again afterwards, so the line is not drawn across the bar.
pub fn above_bars<R>(f: impl FnOnce() -> R) -> R {
    let bar = active().last().map(|(_, b)| b.clone());
    match bar {
        Some(b) => b.suspend(f),
        None => f(),
    }
}

/// A rate as a whole number per second (`3501/s`, not indicatif's `3,501.1209/s`).
/// The phase's average since it began: its bar is made at the phase's first report, which may
/// already count thousands, so indicatif's estimate would start from an instant jump.
fn rate(state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
    let secs = state.elapsed().as_secs_f64();
    if secs > 0.0 {
        let _ = write!(w, "{:.0}/s", state.pos() as f64 / secs);
    }
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
pub struct Bar {
    /// A byte-counting bar, drawn from its creation.
    bytes: Option<indicatif::ProgressBar>,
    /// Whether stderr is a terminal (a counting bar is made at the first report).
    tty: bool,
    id: u64,
    /// The command's name, drawn first.
    what: String,
    /// A counting bar: the phase being drawn, whether its total is known, and its bar.
    phase: std::sync::Mutex<Option<(&'static str, bool, indicatif::ProgressBar)>>,
    /// When the phase being drawn (or, before the first report, the command) began.
    started: std::sync::Mutex<std::time::Instant>,
}

impl Bar {
    fn make(bytes: Option<indicatif::ProgressBar>, tty: bool, what: &str) -> Bar {
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(b) = &bytes {
            b.set_prefix(what.to_owned());
            active().push((id, b.clone()));
        }
        Bar {
            bytes,
            tty,
            id,
            what: what.to_owned(),
            phase: std::sync::Mutex::new(None),
            started: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    /// A bar counting items through the phases the library reports: the command's name,
    /// then the phase's (unless it is the same word), a bar and `done/total` where the phase's
    /// total is known, else a spinner and the count. Nothing is drawn before the first report.
    pub fn new(what: &str) -> Bar {
        use std::io::IsTerminal;
        Bar::make(None, io::stderr().is_terminal(), what)
    }

    /// A bar counting bytes (with the rate), towards `total` if it is known.
    pub fn bytes(what: &str, total: Option<u64>) -> Bar {
        use std::io::IsTerminal;
        if !io::stderr().is_terminal() {
            return Bar::make(None, false, what);
        }
        let b = match total {
            Some(t) => indicatif::ProgressBar::new(t),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let template = if total.is_some() {
            "{prefix}{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
        } else {
            "{prefix}{msg} {spinner} {bytes} {bytes_per_sec}"
        };
        b.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Bar::make(Some(b), true, what)
    }

    /// The underlying byte-counting bar, to move from another thread or a callback (`None`:
    /// not a terminal).
    pub fn handle(&self) -> Option<indicatif::ProgressBar> {
        self.bytes.clone()
    }

    /// Updates a counting bar from a library progress report; never interrupts. A new phase
    /// gets a new bar, made whole (label, total or none, count) before it is first drawn:
    /// gc's sweep does not know how many objects there are, so it counts them as it goes
    /// instead of inheriting the mark's total.
    pub fn update(&self, p: cas::Progress) -> bool {
        if !self.tty {
            return true;
        }
        let mut phase = self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = p.total.is_some();
        let b = match &*phase {
            Some((name, k, b)) if *name == p.phase && *k == known => b.clone(),
            old => {
                if let Some((_, _, b)) = old {
                    b.finish_and_clear();
                }
                let b = self.phase_bar(p);
                let mut bars = active();
                bars.retain(|(id, _)| *id != self.id);
                bars.push((self.id, b.clone()));
                *phase = Some((p.phase, known, b.clone()));
                b
            }
        };
        if let Some(t) = p.total {
            b.set_length(t);
        }
        b.set_position(p.done);
        true
    }

    /// A bar for the phase of `p`, configured while hidden, then shown.
    fn phase_bar(&self, p: cas::Progress) -> indicatif::ProgressBar {
        let label = if p.phase == self.what {
            String::new()
        } else {
            format!(" {}", p.phase)
        };
        let what = &self.what;
        let template = if p.total.is_some() {
            format!("{what}{label} [{{bar:30}}] {{human_pos}}/{{human_len}} {{rate}} eta {{eta}}")
        } else {
            format!("{what}{label} {{spinner}} {{human_pos}} {{rate}}")
        };
        let since = std::mem::replace(
            &mut *self
                .started
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            std::time::Instant::now(),
        );
        let b = indicatif::ProgressBar::with_draw_target(
            p.total,
            indicatif::ProgressDrawTarget::hidden(),
        )
        .with_elapsed(since.elapsed());
        b.set_style(
            indicatif::ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .with_key("rate", rate)
                .progress_chars("=> "),
        );
        b.set_position(p.done);
        b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        b
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bytes {
            b.finish_and_clear();
        }
        if let Some((_, _, b)) = &*self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            b.finish_and_clear();
        }
        active().retain(|(id, _)| *id != self.id);
    }
}

/// A byte-counting bar made at the library's first report, which carries the total (a get's
/// object size, a restore's tree size), so the bar starts with it. A get to a pipe or device
/// verifies the whole object before it writes: that phase says so after the name, and the
/// count restarts when writing begins.
pub struct BytesBar {
    what: &'static str,
    bar: std::sync::OnceLock<Bar>,
    phase: std::sync::Mutex<&'static str>,
}

impl BytesBar {
    pub fn new(what: &'static str) -> BytesBar {
        BytesBar {
            what,
            bar: std::sync::OnceLock::new(),
            phase: std::sync::Mutex::new(""),
        }
    }

    /// Takes a library report; never interrupts (signals do that).
    pub fn update(&self, p: cas::Progress) -> bool {
        let bar = self.bar.get_or_init(|| Bar::bytes(self.what, p.total));
        let Some(b) = &bar.bytes else {
            return true;
        };
        let mut phase = self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *phase != p.phase {
            if !phase.is_empty() {
                b.reset();
            }
            *phase = p.phase;
            b.set_message(if p.phase == "verify" {
                " (verifying)"
            } else {
                ""
            });
        }
        if let Some(t) = p.total {
            b.set_length(t);
        }
        b.set_position(p.done);
        true
    }

    pub fn finish(&self) {
        if let Some(b) = self.bar.get() {
            b.finish();
        }
    }
}

/// An error and its causes on one line, `error: cause: cause`, each said once.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !msg.contains(&c_text) {
            msg.push_str(": ");
            msg.push_str(&c_text);
        }
        cause = c.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_times() {
        assert_eq!(human_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(human_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(human_time(1_796_211_729), "2026-12-02 11:42:09 UTC");
    }
}
