//! The framing shared by the store's binary encodings (cache entries, tree objects):
//! 8 magic bytes, a format version as `u32` little-endian, then serde + bincode 2
//! (`config::standard()`), with a limit on what a decoder will accept.

fn config<const LIMIT: usize>() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// Encodes `value` behind `magic` and `version`. Callers check sizes first (see
/// [`try_encode`]); a body over `LIMIT` is never silently dropped: it is encoded whole, and
/// the decoder will refuse it.
pub(crate) fn encode<T: serde::Serialize + ?Sized, const LIMIT: usize>(
    magic: [u8; 8],
    version: u32,
    value: &T,
) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    // Encoding plain in-memory data into a Vec cannot fail without a limit.
    out.extend(
        bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap_or_default(),
    );
    out
}

/// Encodes `value` behind `magic` and `version`, refusing a body the decoder's `LIMIT`
/// would reject: what is written can always be read back.
pub(crate) fn try_encode<T: serde::Serialize + ?Sized, const LIMIT: usize>(
    magic: [u8; 8],
    version: u32,
    value: &T,
    what: &str,
) -> Result<Vec<u8>, String> {
    let out = encode::<T, LIMIT>(magic, version, value);
    let body = out.len() - 12;
    if body > LIMIT {
        return Err(format!(
            "the {what} would be {body} bytes, over the {LIMIT}-byte limit every reader enforces"
        ));
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    #[test]
    fn over_the_limit_is_refused_not_truncated() {
        let v = vec![7u8; 100];
        let e = super::try_encode::<_, 16>(*b"CASTEST\0", 1, &v, "test").unwrap_err();
        assert!(e.contains("limit"), "{e}");
        let ok = super::try_encode::<_, 1000>(*b"CASTEST\0", 1, &v, "test").unwrap();
        let back: Vec<u8> = super::decode::<_, 1000>(&ok, *b"CASTEST\0", 1, "test").unwrap();
        assert_eq!(back, v);
        // The decoder with the small limit refuses what the big one wrote.
        assert!(super::decode::<Vec<u8>, 16>(&ok, *b"CASTEST\0", 1, "test").is_err());
    }
}
