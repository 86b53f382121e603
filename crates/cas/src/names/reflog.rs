//! Reading a ref's log (`logs/refs/NAME`) without holding it in memory: forward one line at
//! a time, or its last N lines read backwards from the end in blocks. Both directions split
//! the file the same way, so the last N lines read backwards are exactly the last N read
//! forwards:
//!
//! - lines end at `\n`; one `\r` before the `\n` is dropped (a log edited on another system);
//! - the bytes after the last `\n`, if any, are a last line (an append cut short): it is
//!   reported as damaged like any line that does not parse;
//! - a line longer than [`MAX_LINE`] is never held: it is reported as damaged, and the reader
//!   skips to its end.
//!
//! Only the bytes present when reading starts are read: lines appended meanwhile are left for
//! the next reader.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Longest reflog line read (a line is two hashes, a time, a host, a user and the message
/// given to `ref set -m`).
pub(crate) const MAX_LINE: usize = 1 << 20;
/// How much is read at once, in either direction.
const BLOCK: usize = 64 << 10;

/// One line of the log as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawLine {
    /// Byte offset of its first byte.
    pub(crate) offset: u64,
    /// Its number, from 1 (forward reads only).
    pub(crate) number: Option<u64>,
    /// Its bytes, without the `\n` (and `\r`); `None` if longer than [`MAX_LINE`].
    pub(crate) bytes: Option<Vec<u8>>,
}

/// Accumulates the bytes of one line, up to [`MAX_LINE`].
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    too_long: bool,
}

impl Pending {
    fn push_back(&mut self, b: &[u8]) {
        if self.too_long {
            return;
        }
        if self.bytes.len() + b.len() > MAX_LINE {
            self.too_long = true;
            self.bytes = Vec::new();
        } else {
            self.bytes.extend_from_slice(b);
        }
    }

    fn push_front(&mut self, b: &[u8]) {
        if self.too_long {
            return;
        }
        if self.bytes.len() + b.len() > MAX_LINE {
            self.too_long = true;
            self.bytes = Vec::new();
        } else {
            self.bytes.splice(0..0, b.iter().copied());
        }
    }

    /// The finished line; `terminated`: it ended with `\n` (then a `\r` before it is
    /// dropped).
    fn take(&mut self, offset: u64, number: Option<u64>, terminated: bool) -> RawLine {
        let p = std::mem::take(self);
        let bytes = (!p.too_long).then(|| {
            let mut b = p.bytes;
            if terminated && b.last() == Some(&b'\r') {
                b.pop();
            }
            b
        });
        RawLine {
            offset,
            number,
            bytes,
        }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty() && !self.too_long
    }
}

/// Calls `f` with every line of `file` (its first `len` bytes), in order.
pub(crate) fn for_each_line<E: From<io::Error>>(
    file: &File,
    len: u64,
    mut f: impl FnMut(RawLine) -> Result<(), E>,
) -> Result<(), E> {
    let mut buf = vec![0u8; BLOCK];
    let mut pos = 0u64;
    let mut line = Pending::default();
    let mut start = 0u64;
    let mut number = 0u64;
    while pos < len {
        let want = usize::try_from(len - pos).map_or(BLOCK, |l| l.min(BLOCK));
        let n = read_at(file, &mut buf[..want], pos)?;
        if n == 0 {
            break; // truncated meanwhile: what was there is read
        }
        let block = &buf[..n];
        let mut from = 0;
        for i in memchr_all(block) {
            line.push_back(&block[from..i]);
            number += 1;
            f(line.take(start, Some(number), true))?;
            from = i + 1;
            start = pos + from as u64;
        }
        line.push_back(&block[from..]);
        pos += n as u64;
    }
    if !line.is_empty() {
        f(line.take(start, Some(number + 1), false))?;
    }
    Ok(())
}

/// The last `n` lines of `file` (its first `len` bytes), oldest first, read backwards from
/// the end a block at a time: the work and memory are those of the `n` lines, whatever the
/// file's size.
pub(crate) fn last_lines(file: &File, len: u64, n: usize) -> io::Result<Vec<RawLine>> {
    let mut out: Vec<RawLine> = Vec::new(); // newest first
    if n == 0 {
        return Ok(out);
    }
    let mut buf = vec![0u8; BLOCK];
    let mut pos = len;
    let mut line = Pending::default();
    // Whether the line being gathered ended with `\n` (the last piece of the file may not).
    let mut terminated = false;
    while pos > 0 {
        let start = pos.saturating_sub(BLOCK as u64);
        let want = usize::try_from(pos - start).unwrap_or(BLOCK);
        let got = read_at(file, &mut buf[..want], start)?;
        if got < want {
            // Truncated since we started: read it again from its new end.
            return last_lines(file, file.metadata()?.len().min(start + got as u64), n);
        }
        let block = &buf[..want];
        let mut end = want;
        for i in memchr_all(block).into_iter().rev() {
            line.push_front(&block[i + 1..end]);
            if terminated || !line.is_empty() {
                out.push(line.take(start + i as u64 + 1, None, terminated));
                if out.len() == n {
                    out.reverse();
                    return Ok(out);
                }
            } else {
                line = Pending::default();
            }
            terminated = true;
            end = i;
        }
        line.push_front(&block[..end]);
        pos = start;
    }
    if terminated || !line.is_empty() {
        out.push(line.take(0, None, terminated));
    }
    out.reverse();
    Ok(out)
}

/// Positions of every `\n` in `b`.
fn memchr_all(b: &[u8]) -> Vec<usize> {
    b.iter()
        .enumerate()
        .filter_map(|(i, &c)| (c == b'\n').then_some(i))
        .collect()
}

/// Reads at `offset` until `buf` is full or the end of the file; returns how much was read.
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(k) => done += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn all(bytes: &[u8]) -> Vec<RawLine> {
        let f = file_with(bytes);
        let mut v = Vec::new();
        for_each_line::<io::Error>(&f, bytes.len() as u64, |l| {
            v.push(l);
            Ok(())
        })
        .unwrap();
        v
    }

    fn without_numbers(v: Vec<RawLine>) -> Vec<RawLine> {
        v.into_iter()
            .map(|l| RawLine { number: None, ..l })
            .collect()
    }

    #[test]
    fn splits_like_str_lines() {
        let text = b"a\r\nb\n\nc\rd\ne\r";
        let got: Vec<Option<Vec<u8>>> = all(text).into_iter().map(|l| l.bytes).collect();
        let want: Vec<Option<Vec<u8>>> = std::str::from_utf8(text)
            .unwrap()
            .lines()
            .map(|l| Some(l.as_bytes().to_vec()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(all(b"x\ny").last().unwrap().offset, 2);
        assert!(all(b"").is_empty());
        assert_eq!(all(b"\n").len(), 1);
    }

    #[test]
    fn a_line_too_long_is_never_held() {
        let mut text = b"first\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        text.extend_from_slice(b"\nlast\n");
        let lines = all(&text);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].bytes, None);
        assert_eq!(lines[2].bytes.as_deref(), Some(&b"last"[..]));
        let f = file_with(&text);
        assert_eq!(
            last_lines(&f, text.len() as u64, 3).unwrap(),
            without_numbers(lines)
        );
    }

    fn arb_log() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"0000 1111 5 h u\tmsg".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(vec![0xff, 0xfe]),
            proptest::collection::vec(any::<u8>(), 0..40),
            // Long enough to cross a block boundary now and then.
            (0usize..3 * BLOCK).prop_map(|n| vec![b'y'; n]),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Reading the last n lines backwards from the end gives the last n lines of a
        /// forward read: same bytes, same offsets, a partial last line, CRLF and garbage
        /// included.
        #[test]
        fn tail_is_the_end_of_the_full_read(log in arb_log(), n in 0usize..20) {
            let full = without_numbers(all(&log));
            let f = file_with(&log);
            let tail = last_lines(&f, log.len() as u64, n).unwrap();
            let skip = full.len().saturating_sub(n);
            prop_assert_eq!(tail, full[skip..].to_vec());
        }
    }
}
