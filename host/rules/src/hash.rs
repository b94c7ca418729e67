//! Deterministic bucketing: GrowthBook's hash, bucket ranges, variation choice, namespaces and
//! query-string overrides. Every function here is a pure function of its inputs, so an
//! assignment made at one edge node is the same at every other and in every GrowthBook SDK.

use serde_json::Value;

/// A half-open bucket range `[start, end)` on the unit interval.
pub type BucketRange = (f64, f64);

/// FNV-1a 32 over UTF-16 code units, as the JavaScript reference hashes JavaScript strings.
/// Hashing UTF-8 bytes instead would agree on ASCII only.
fn fnv1a32<'a>(parts: impl IntoIterator<Item = &'a str>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for part in parts {
        for unit in part.encode_utf16() {
            h ^= u32::from(unit);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// GrowthBook's `hash(seed, value, version)`: a number in `[0, 1)`, or `None` for an
/// unknown version. Version 2 is the unbiased algorithm new experiments use; version 1 is kept
/// because running experiments must not be reshuffled.
pub fn hash(seed: &str, value: &str, version: u32) -> Option<f64> {
    match version {
        2 => {
            let first = fnv1a32([seed, value]);
            let mut digits = [0u8; 10];
            let text = u32_decimal(first, &mut digits);
            Some(f64::from(fnv1a32([text]) % 10_000) / 10_000.0)
        }
        1 => Some(f64::from(fnv1a32([value, seed]) % 1_000) / 1_000.0),
        _ => None,
    }
}

/// Writes `n` in decimal into `buf` and returns it as a string, without allocating.
fn u32_decimal(mut n: u32, buf: &mut [u8; 10]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        // `n % 10` is a single digit, so the cast cannot truncate.
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Equal weights for `n` variations (empty for `n <= 0`).
pub fn equal_weights(n: i64) -> Vec<f64> {
    if n <= 0 {
        return Vec::new();
    }
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_sign_loss,
        reason = "n is a small variation count"
    )]
    let (count, w) = (n as usize, 1.0 / n as f64);
    vec![w; count]
}

/// Bucket ranges for `num_variations` variations with `coverage` (clamped to `[0, 1]`) and
/// optional `weights`. Weights of the wrong length, or not summing to 1 ± 0.01, fall back to
/// equal weights, as the reference does, rather than failing an experiment at request time.
pub fn bucket_ranges(
    num_variations: usize,
    coverage: Option<f64>,
    weights: Option<&[f64]>,
) -> Vec<BucketRange> {
    let coverage = coverage.unwrap_or(1.0).clamp(0.0, 1.0);
    let equal = equal_weights(i64::try_from(num_variations).unwrap_or(0));
    let mut weights = weights.unwrap_or(&equal);
    if weights.len() != num_variations {
        weights = &equal;
    }
    let total: f64 = weights.iter().sum();
    if !(0.99..=1.01).contains(&total) {
        weights = &equal;
    }
    let mut cumulative = 0.0;
    weights
        .iter()
        .map(|w| {
            let start = cumulative;
            cumulative += w;
            (start, start + coverage * w)
        })
        .collect()
}

/// The index of the range containing `n`, or `None`.
pub fn choose_variation(n: f64, ranges: &[BucketRange]) -> Option<usize> {
    ranges.iter().position(|r| in_range(n, *r))
}

/// Whether `n` lies in the half-open range.
pub fn in_range(n: f64, range: BucketRange) -> bool {
    n >= range.0 && n < range.1
}

/// Whether a visitor's hash value falls in a namespace's slice `[start, end)`. Experiments in
/// one namespace with disjoint slices are mutually exclusive.
pub fn in_namespace(hash_value: &str, namespace: &Namespace) -> bool {
    hash(&format!("__{}", namespace.id), hash_value, 1)
        .is_some_and(|n| n >= namespace.start && n < namespace.end)
}

/// A namespace slice: experiments sharing `id` with disjoint ranges never share a visitor.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Namespace {
    /// The namespace's name.
    pub id: String,
    /// Inclusive start of the slice.
    pub start: f64,
    /// Exclusive end of the slice.
    pub end: f64,
}

impl<'de> serde::Deserialize<'de> for Namespace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // GrowthBook writes namespaces as a positional triple.
        let (id, start, end) = <(String, f64, f64)>::deserialize(d)?;
        Ok(Namespace { id, start, end })
    }
}

/// A QA override in the URL's query string (`?my-experiment=1`): the variation index, if the
/// key is present with an integer value in range.
pub fn query_string_override(key: &str, url: &str, num_variations: usize) -> Option<usize> {
    let query = url.split('?').nth(1)?;
    let query = query.split('#').next().unwrap_or("");
    let value = query.split('&').find_map(|kv| {
        let mut it = kv.splitn(2, '=');
        (it.next() == Some(key)).then(|| it.next().unwrap_or(""))
    })?;
    let n = parse_int_prefix(value)?;
    usize::try_from(n).ok().filter(|&i| i < num_variations)
}

/// JavaScript `parseInt(s)`: leading white space, an optional sign, then as many digits as
/// there are; `None` where JavaScript gives NaN.
fn parse_int_prefix(s: &str) -> Option<i64> {
    let t = s.trim_start();
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let end = digits.bytes().take_while(u8::is_ascii_digit).count();
    if end == 0 {
        return None;
    }
    let n: i64 = digits[..end].parse().unwrap_or(i64::MAX);
    Some(if neg { -n } else { n })
}

/// The string form of a hash attribute's value (`value + ""` in the reference), or `None`
/// when the value is missing or falsy, which means the visitor cannot be bucketed.
pub fn hash_value_string(v: Option<&Value>) -> Option<String> {
    if !crate::js::truthy(v) {
        return None;
    }
    Some(crate::js::to_js_string(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_versions() {
        assert_eq!(hash("", "a", 1), Some(0.22));
        assert_eq!(hash("seed", "a", 3), None);
        let v2 = hash("seed", "visitor-1", 2).unwrap_or(-1.0);
        assert!((0.0..1.0).contains(&v2));
    }

    #[test]
    fn non_ascii_hashes_utf16_code_units() {
        // "é" is one UTF-16 unit (0xE9) but two UTF-8 bytes; an astral character is two units.
        assert_eq!(
            fnv1a32(["é"]),
            (0x811c_9dc5u32 ^ 0xE9).wrapping_mul(0x0100_0193)
        );
        let pair = fnv1a32(["\u{1F600}"]);
        let manual = [0xD83Du32, 0xDE00]
            .iter()
            .fold(0x811c_9dc5u32, |h, u| (h ^ u).wrapping_mul(0x0100_0193));
        assert_eq!(pair, manual);
    }

    #[test]
    fn query_override_parses_like_parse_int() {
        assert_eq!(query_string_override("t", "http://x/?t=1abc", 2), Some(1));
        assert_eq!(query_string_override("t", "http://x/?t=2", 2), None);
        assert_eq!(query_string_override("t", "http://x/?u=1", 2), None);
        assert_eq!(query_string_override("t", "http://x/?t=-0", 2), Some(0));
    }
}
