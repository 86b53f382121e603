//! Object names: 32-byte BLAKE3 digests and their strict hex form.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};

/// Length of a hash in bytes.
pub const HASH_LEN: usize = 32;
/// Length of a hash in hex characters.
pub const HEX_LEN: usize = 64;

/// The BLAKE3-256 digest of an object's bytes, which is also its name in the store.
///
/// Its text form is exactly 64 lowercase hex characters; parsing accepts nothing else, so a
/// `Hash` can never smuggle `/`, `..` or any other path syntax into a path.
///
/// ```
/// let h = cas::Hash::of(b"hello");
/// let text = h.to_string();
/// assert_eq!(text.len(), 64);
/// assert_eq!(text.parse::<cas::Hash>().unwrap(), h);
/// assert!("../etc/passwd".parse::<cas::Hash>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash([u8; HASH_LEN]);

impl Hash {
    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; HASH_LEN]) -> Self {
        Hash(bytes)
    }

    /// The raw digest bytes.
    pub const fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }

    /// Hashes a byte slice (single-threaded; see [`Hash::of_parallel`] for large inputs).
    pub fn of(bytes: &[u8]) -> Self {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// Hashes a byte slice, using all cores for large inputs.
    pub fn of_parallel(bytes: &[u8]) -> Self {
        if bytes.len() < PARALLEL_MIN {
            return Self::of(bytes);
        }
        let mut h = blake3::Hasher::new();
        update_parallel(&mut h, bytes);
        Hash(*h.finalize().as_bytes())
    }

    /// Parses exactly 64 lowercase hex characters.
    ///
    /// # Errors
    /// [`Error::InvalidHash`] naming the input and the rule it broke (length, character, case).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidHash {
            input: truncate_for_display(s),
            reason,
        };
        if s.len() != HEX_LEN {
            return Err(bad("a hash is exactly 64 hex characters"));
        }
        let mut out = [0u8; HASH_LEN];
        for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or_else(|| bad(bad_char_reason(pair[0])))?;
            let lo = hex_val(pair[1]).ok_or_else(|| bad(bad_char_reason(pair[1])))?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Hash(out))
    }

    /// Writes the 64-character lowercase hex form into `buf` and returns it as a `&str`.
    pub fn to_hex_buf<'a>(&self, buf: &'a mut [u8; HEX_LEN]) -> &'a str {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in self.0.iter().enumerate() {
            buf[2 * i] = DIGITS[usize::from(b >> 4)];
            buf[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        // Only ASCII hex digits were written.
        std::str::from_utf8(buf).unwrap_or_default()
    }

    /// The lowercase hex form.
    pub fn to_hex(&self) -> String {
        let mut buf = [0u8; HEX_LEN];
        self.to_hex_buf(&mut buf).to_owned()
    }
}

/// Inputs at least this large are hashed on all cores by [`Hash::of_parallel`].
pub(crate) const PARALLEL_MIN: usize = 1 << 20;

/// The process that first hashed on rayon's thread pool (0: none yet).
static RAYON_PID: AtomicU32 = AtomicU32::new(0);

/// Feeds `bytes` to `h` on all cores (rayon) — unless this process is a `fork` of the one
/// that started rayon's pool: a forked child inherits the pool's bookkeeping but not its
/// threads, and a job handed to it would wait forever. Such a child hashes on one core.
/// (A program that forks after using a store — Python's `multiprocessing` with `fork`, a
/// pre-forking server — is the case; an `exec`ed child is a new program and is not.)
pub(crate) fn update_parallel(h: &mut blake3::Hasher, bytes: &[u8]) {
    if rayon_usable() {
        h.update_rayon(bytes);
    } else {
        h.update(bytes);
    }
}

/// Whether rayon's pool belongs to this process (claiming it if nobody has yet).
pub(crate) fn rayon_usable() -> bool {
    let me = std::process::id();
    match RAYON_PID.compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => true,
        Err(owner) => owner == me,
    }
}

fn bad_char_reason(c: u8) -> &'static str {
    if c.is_ascii_hexdigit() {
        "hex digits must be lowercase"
    } else {
        "only the characters 0-9 and a-f are allowed"
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

pub(crate) fn truncate_for_display(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; HEX_LEN];
        f.write_str(self.to_hex_buf(&mut buf))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

impl FromStr for Hash {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Hash::parse(s)
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Self {
        Hash(*h.as_bytes())
    }
}

/// Human-readable formats (JSON) get the hex string; binary formats (bincode) the 32 raw bytes.
impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let mut buf = [0u8; HEX_LEN];
            s.serialize_str(self.to_hex_buf(&mut buf))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Hash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a BLAKE3 hash (64 hex characters or 32 bytes)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Hash, E> {
                Hash::parse(v).map_err(E::custom)
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Hash, E> {
                <[u8; HASH_LEN]>::try_from(v)
                    .map(Hash)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}

/// Incremental hasher that hashes exactly the bytes given to it.
#[derive(Default, Clone)]
pub(crate) struct Hasher(blake3::Hasher);

impl Hasher {
    pub(crate) fn new() -> Self {
        Self::default()
    }
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub(crate) fn finalize(&self) -> Hash {
        self.0.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vector() {
        // BLAKE3 of the empty input, from the BLAKE3 test vectors.
        assert_eq!(
            Hash::of(b"").to_string(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn rejects_bad_forms() {
        let good = Hash::of(b"x").to_string();
        for bad in [
            "",
            &good[..63],
            &format!("{good}0"),
            &good.to_uppercase(),
            &format!("../{}", &good[3..]),
            &format!("{}/{}", &good[..2], &good[3..]),
            &format!("{}g", &good[..63]),
        ] {
            let e = Hash::parse(bad).unwrap_err();
            assert!(e.is_invalid_input(), "{bad}: {e}");
        }
        let upper = Hash::parse(&good.to_uppercase()).unwrap_err().to_string();
        assert!(upper.contains("lowercase"), "{upper}");
    }

    #[test]
    fn parallel_equals_serial() {
        let data: Vec<u8> = (0..3 * PARALLEL_MIN).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(Hash::of_parallel(&data), Hash::of(&data));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = Hash::parse(&s);
        }

        #[test]
        fn display_parse_round_trip(bytes in any::<[u8; 32]>()) {
            let h = Hash::from_bytes(bytes);
            prop_assert_eq!(Hash::parse(&h.to_string()).unwrap(), h);
        }

        #[test]
        fn valid_strings_are_accepted_and_canonical(s in "[0-9a-f]{64}") {
            let h = Hash::parse(&s).unwrap();
            prop_assert_eq!(h.to_string(), s);
        }

        /// Near misses of a valid hash: every one is rejected as invalid input, never
        /// accepted under another spelling.
        #[test]
        fn near_valid_strings_are_rejected(
            s in "[0-9a-f]{64}",
            at in 0usize..64,
            bad in prop::sample::select(vec!['g', 'G', 'z', '/', '.', ' ', '-', '\0', 'é']),
            len in prop_oneof![0usize..64, 65usize..80],
        ) {
            let mut one_off: Vec<char> = s.chars().collect();
            one_off[at] = bad;
            let one_off: String = one_off.into_iter().collect();
            let mut upper = s.clone();
            // Force at least one letter to be uppercase (a hash of digits only has none).
            upper.replace_range(at..=at, "A");
            let wrong_len: String = s.chars().cycle().take(len).collect();
            let fan_out = format!("{}/{}", &s[..2], &s[2..]);
            let fan_out_short = format!("{}/{}", &s[..2], &s[3..]);
            for cand in [one_off, upper.clone(), wrong_len, fan_out, fan_out_short] {
                let e = Hash::parse(&cand);
                prop_assert!(e.is_err(), "accepted {:?}", cand);
                prop_assert!(e.unwrap_err().is_invalid_input(), "{:?}", cand);
            }
            let msg = Hash::parse(&upper).unwrap_err().to_string();
            prop_assert!(msg.contains("lowercase"), "{}", msg);
        }
    }
}
