//! The framing shared by the store's binary encodings (cache entries, tree objects):
//! 8 magic bytes, a format version as `u32` little-endian, then serde + bincode 2
//! (`config::standard()`), with a limit on what a decoder will accept.

fn config<const LIMIT: usize>() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// Encodes `value` behind `magic` and `version`.
pub(crate) fn encode<T: serde::Serialize + ?Sized, const LIMIT: usize>(
    magic: [u8; 8],
    version: u32,
    value: &T,
) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    // Encoding plain in-memory data into a Vec cannot fail; sizes are checked by callers.
    out.extend(bincode::serde::encode_to_vec(value, config::<LIMIT>()).unwrap_or_default());
    out
}

/// Decodes what [`encode`] wrote. The error names `what` and says what is wrong: foreign magic,
/// another version, a damaged body, trailing bytes. Never panics, whatever the bytes.
pub(crate) fn decode<T: serde::de::DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
    magic: [u8; 8],
    version: u32,
    what: &str,
) -> Result<T, String> {
    let Some(rest) = bytes.strip_prefix(magic.as_slice()) else {
        return Err(format!("not a {what} (bad magic)"));
    };
    let Some((ver, body)) = rest.split_first_chunk::<4>() else {
        return Err(format!("truncated {what} header"));
    };
    let ver = u32::from_le_bytes(*ver);
    if ver != version {
        return Err(format!(
            "{what} format version {ver} is not supported (this cas reads version {version})"
        ));
    }
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(body, config::<LIMIT>())
        .map_err(|e| format!("damaged {what}: {e}"))?;
    if used != body.len() {
        return Err(format!("trailing bytes after the {what}"));
    }
    Ok(value)
}
