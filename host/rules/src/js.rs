//! JavaScript value semantics over JSON values.
//!
//! GrowthBook's reference SDK is JavaScript, and its condition language inherits JavaScript's
//! coercions: `value + "" === "1"`, `null < 5`, `"10" > 9`. Matching the reference means
//! reproducing those rules exactly, so they live here in one place rather than being
//! approximated operator by operator. Everything here works on borrowed values and avoids
//! allocating for strings, numbers, booleans and null, which is what segment attributes are.

use std::cmp::Ordering;

use serde_json::Value;

/// `typeof`-style type name used by `$type` (arrays and null are distinguished, as the
/// reference does).
pub(crate) fn type_name(v: Option<&Value>) -> &'static str {
    match v {
        None | Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

/// JavaScript truthiness (`!!v`).
pub(crate) fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(_)) | Some(Value::Object(_)) => true,
    }
}

/// A JSON number as the f64 JavaScript sees.
pub(crate) fn num(n: &serde_json::Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

/// JavaScript `ToString` for a number, written into `buf` without allocating.
pub(crate) fn number_to_str(f: f64, buf: &mut ryu_js::Buffer) -> &str {
    buf.format(f)
}

/// JavaScript `ToString(v)` (what `v + ""` produces). Allocates only for arrays and objects.
pub(crate) fn to_js_string(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "null".to_owned(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => ryu_js::Buffer::new().format(num(n)).to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => join_array(items),
        Some(Value::Object(_)) => "[object Object]".to_owned(),
    }
}

/// `Array.prototype.join(",")`, which is how arrays become strings: null elements vanish.
fn join_array(items: &[Value]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if !item.is_null() {
            out.push_str(&to_js_string(Some(item)));
        }
    }
    out
}

/// Whether `v + "" === expected`, without allocating for primitives.
pub(crate) fn string_equals(v: Option<&Value>, expected: &str) -> bool {
    match v {
        None | Some(Value::Null) => expected == "null",
        Some(Value::Bool(b)) => expected == if *b { "true" } else { "false" },
        Some(Value::Number(n)) => number_to_str(num(n), &mut ryu_js::Buffer::new()) == expected,
        Some(Value::String(s)) => s == expected,
        other => to_js_string(other) == expected,
    }
}

/// JavaScript `ToNumber(v)`.
pub(crate) fn to_number(v: Option<&Value>) -> f64 {
    match v {
        None | Some(Value::Null) => 0.0,
        Some(Value::Bool(b)) => f64::from(u8::from(*b)),
        Some(Value::Number(n)) => num(n),
        Some(Value::String(s)) => string_to_number(s),
        Some(Value::Array(items)) => match items.as_slice() {
            [] => 0.0,
            [only] if !only.is_array() && !only.is_object() => {
                if only.is_null() {
                    0.0
                } else {
                    to_number(Some(only))
                }
            }
            _ => string_to_number(&join_array(items)),
        },
        Some(Value::Object(_)) => f64::NAN,
    }
}

/// JavaScript's `StringToNumber`: surrounding white space ignored, empty is 0, hex/octal/binary
/// literals accepted, and none of Rust's extra spellings (`inf`, `nan`, `1_0`) are.
pub(crate) fn string_to_number(s: &str) -> f64 {
    let t = s.trim_matches(is_js_whitespace);
    if t.is_empty() {
        return 0.0;
    }
    for (prefix, radix) in [
        ("0x", 16),
        ("0X", 16),
        ("0o", 8),
        ("0O", 8),
        ("0b", 2),
        ("0B", 2),
    ] {
        if let Some(digits) = t.strip_prefix(prefix) {
            if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
                return f64::NAN;
            }
            // Accumulate in f64: JavaScript accepts literals beyond u64 and rounds them.
            return digits.chars().fold(0.0, |acc, c| {
                acc * f64::from(radix) + f64::from(c.to_digit(radix).unwrap_or(0))
            });
        }
    }
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    if unsigned == "Infinity" {
        return if t.starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
    }
    if !is_decimal_literal(unsigned) {
        return f64::NAN;
    }
    t.parse::<f64>().unwrap_or(f64::NAN)
}

/// `digits [. digits] [e[+-]digits]` or `. digits ...`, the StrUnsignedDecimalLiteral grammar.
fn is_decimal_literal(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - frac_start;
    }
    if digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

/// JavaScript's WhiteSpace and LineTerminator productions, as `String.prototype.trim` uses.
fn is_js_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{9}' | '\u{A}' | '\u{B}' | '\u{C}' | '\u{D}' | ' ' | '\u{A0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200A}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202F}'
                | '\u{205F}'
                | '\u{3000}'
                | '\u{FEFF}'
    )
}

/// Compare two strings as JavaScript does: by UTF-16 code unit, not by UTF-8 byte or scalar.
pub(crate) fn cmp_utf16(a: &str, b: &str) -> Ordering {
    // Byte order agrees with code-unit order except between astral characters and U+E000..U+FFFF,
    // so only strings containing those pay for the UTF-16 walk.
    if a.is_ascii() || b.is_ascii() {
        return a.cmp(b);
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

/// The primitive a value becomes in a relational comparison (`ToPrimitive` with hint number).
enum Prim<'a> {
    Str(std::borrow::Cow<'a, str>),
    Num(f64),
}

fn to_primitive(v: Option<&Value>) -> Prim<'_> {
    match v {
        Some(Value::String(s)) => Prim::Str(std::borrow::Cow::Borrowed(s)),
        Some(Value::Array(_)) | Some(Value::Object(_)) => {
            Prim::Str(std::borrow::Cow::Owned(to_js_string(v)))
        }
        other => Prim::Num(to_number(other)),
    }
}

/// JavaScript's abstract relational comparison (`a < b` and friends): `None` when the
/// comparison is undefined (a NaN was involved), so every relational operator yields false.
pub(crate) fn js_compare(a: Option<&Value>, b: Option<&Value>) -> Option<Ordering> {
    match (to_primitive(a), to_primitive(b)) {
        (Prim::Str(x), Prim::Str(y)) => Some(cmp_utf16(&x, &y)),
        (Prim::Str(x), Prim::Num(y)) => string_to_number(&x).partial_cmp(&y),
        (Prim::Num(x), Prim::Str(y)) => x.partial_cmp(&string_to_number(&y)),
        (Prim::Num(x), Prim::Num(y)) => x.partial_cmp(&y),
    }
}

/// JavaScript `===` between an attribute and a literal from a condition. Arrays and objects
/// are compared by identity in JavaScript, and a parsed literal is never the same object as an
/// attribute, so they are never equal.
pub(crate) fn strict_equals(a: Option<&Value>, b: &Value) -> bool {
    match (a.unwrap_or(&Value::Null), b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => num(x) == num(y),
        (Value::String(x), Value::String(y)) => x == y,
        _ => false,
    }
}

/// `JSON.stringify(a) === JSON.stringify(b)`: structural equality in which object key order
/// matters (JavaScript keeps insertion order) and numbers compare by value.
pub(crate) fn json_equals(a: Option<&Value>, b: &Value) -> bool {
    match (a.unwrap_or(&Value::Null), b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equals(Some(p), q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && json_equals(Some(vx), vy))
        }
        (Value::Number(x), Value::Number(y)) => {
            // JSON.stringify prints every non-finite number as null.
            let (x, y) = (num(x), num(y));
            x == y || (!x.is_finite() && !y.is_finite())
        }
        (x, y) => x == y,
    }
}

/// Case folding used by the `i` operators: strings are lower-cased, everything else as is.
pub(crate) fn fold_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => {
            x.len() == y.len() && x.eq_ignore_ascii_case(y) || x.to_lowercase() == y.to_lowercase()
        }
        (x, y) => strict_equals(Some(x), y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn string_to_number_follows_javascript() {
        assert_eq!(string_to_number(" 42 "), 42.0);
        assert_eq!(string_to_number(""), 0.0);
        assert_eq!(string_to_number("0x1F"), 31.0);
        assert_eq!(string_to_number("-Infinity"), f64::NEG_INFINITY);
        assert_eq!(string_to_number(".5e1"), 5.0);
        assert!(string_to_number("inf").is_nan());
        assert!(string_to_number("1_000").is_nan());
        assert!(string_to_number("-0x10").is_nan());
        assert!(string_to_number("1e").is_nan());
    }

    #[test]
    fn comparisons_coerce_like_javascript() {
        assert_eq!(
            js_compare(Some(&json!("10")), Some(&json!(9))),
            Some(Ordering::Greater)
        );
        assert_eq!(
            js_compare(Some(&json!("10")), Some(&json!("9"))),
            Some(Ordering::Less)
        );
        assert_eq!(js_compare(None, Some(&json!(5))), Some(Ordering::Less));
        assert_eq!(js_compare(Some(&json!("abc")), Some(&json!(5))), None);
        assert_eq!(
            js_compare(Some(&json!([7])), Some(&json!(5))),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn to_string_matches_javascript() {
        assert!(string_equals(Some(&json!(1.0)), "1"));
        assert!(string_equals(Some(&json!(1e21)), "1e+21"));
        assert!(string_equals(Some(&json!([1, null, "a"])), "1,,a"));
        assert!(string_equals(None, "null"));
        assert!(string_equals(Some(&json!({"a": 1})), "[object Object]"));
    }

    #[test]
    fn utf16_order_differs_from_utf8_for_astral_characters() {
        // U+1F600 is a surrogate pair (0xD83D...) and sorts before U+FF21 in UTF-16.
        assert_eq!(cmp_utf16("\u{1F600}", "\u{FF21}"), Ordering::Less);
        assert_eq!("\u{1F600}".cmp("\u{FF21}"), Ordering::Greater);
    }

    #[test]
    fn json_equality_is_order_sensitive() {
        let a = json!({"a": 1, "b": 2});
        assert!(json_equals(Some(&a), &json!({"a": 1.0, "b": 2})));
        assert!(!json_equals(Some(&a), &json!({"b": 2, "a": 1})));
    }
}
