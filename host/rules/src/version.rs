//! Semantic-version comparison for the `$v*` operators.
//!
//! The reference pads every numeric part to five characters and compares the joined strings,
//! so `1.10.0` sorts after `1.9.0` and a release sorts after its pre-releases (a `~` stands in
//! for the missing pre-release tag; it is the largest printable ASCII character).

use serde_json::Value;

/// The comparable form of a version string, as the reference's `paddedVersionString`.
pub(crate) fn padded(input: Option<&Value>) -> String {
    let raw: String = match input {
        Some(Value::Number(n)) => crate::js::to_js_string(Some(&Value::Number(n.clone()))),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => "0".to_owned(),
    };
    padded_str(&raw)
}

/// [`padded`] for a string already in hand.
pub(crate) fn padded_str(raw: &str) -> String {
    let without_v = raw.strip_prefix('v').unwrap_or(raw);
    let core = match without_v.find('+') {
        Some(i) => &without_v[..i],
        None => without_v,
    };
    let mut parts: Vec<&str> = core.split(['-', '.']).collect();
    if parts.len() == 3 {
        parts.push("~");
    }
    let mut out = String::with_capacity(core.len() + 16);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            for _ in part.len()..5 {
                out.push(' ');
            }
        }
        out.push_str(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_like_semver() {
        assert!(padded_str("1.10.0") > padded_str("1.9.0"));
        assert!(padded_str("1.0.0") > padded_str("1.0.0-beta"));
        assert!(padded_str("1.0.0-beta.10") > padded_str("1.0.0-beta.2"));
        assert_eq!(padded_str("v1.2.3+build7"), padded_str("1.2.3"));
    }
}
