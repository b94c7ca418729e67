//! Which character encoding an HTML body is in, so inserted text arrives correctly encoded.
//!
//! The order follows the HTML standard's encoding sniffing: a byte order mark, then the
//! `charset` parameter of `Content-Type`, then a prescan of the first 1024 bytes for
//! `<meta charset>` or `<meta http-equiv="Content-Type" content="...; charset=...">`, then
//! UTF-8 (the standard's default for a document nobody labelled, when there is no locale to go
//! by, is up to the user agent; the web today is UTF-8). lol-html rewrites any ASCII-compatible
//! encoding and encodes inserted content into it (characters it cannot represent become
//! numeric character references); UTF-16 and unknown labels cannot be rewritten safely.

use encoding_rs::Encoding;

/// How many bytes the prescan looks at (the HTML standard's number).
pub const PRESCAN_BYTES: usize = 1024;

/// The outcome of sniffing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// Rewrite in this (ASCII-compatible) encoding.
    Rewrite(&'static Encoding),
    /// Pass the body through untouched: the label names an encoding that cannot be rewritten
    /// safely (UTF-16, ISO-2022-JP, `replacement`) or no encoding at all.
    Unsupported,
}

impl Charset {
    /// A name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Charset::Rewrite(e) => e.name(),
            Charset::Unsupported => "unsupported",
        }
    }
}

fn from_label(label: &[u8]) -> Charset {
    match Encoding::for_label_no_replacement(label) {
        Some(e) if e.is_ascii_compatible() => Charset::Rewrite(e),
        _ => Charset::Unsupported,
    }
}

/// The charset a `Content-Type` header declares, if it declares one.
pub fn from_content_type(content_type: &str) -> Option<Charset> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| from_label(value.trim().trim_matches(['"', '\'']).as_bytes()))
    })
}

/// What a byte order mark at the start of the body says, if there is one.
pub fn from_bom(start: &[u8]) -> Option<Charset> {
    if start.starts_with(&[0xEF, 0xBB, 0xBF]) {
        Some(Charset::Rewrite(encoding_rs::UTF_8))
    } else if start.starts_with(&[0xFE, 0xFF]) || start.starts_with(&[0xFF, 0xFE]) {
        Some(Charset::Unsupported)
    } else {
        None
    }
}

/// Decides from the header and the first bytes of the body (up to [`PRESCAN_BYTES`]).
pub fn sniff(content_type: Option<&str>, start: &[u8]) -> Charset {
    from_bom(start)
        .or_else(|| content_type.and_then(from_content_type))
        .or_else(|| prescan(&start[..start.len().min(PRESCAN_BYTES)]))
        .unwrap_or(Charset::Rewrite(encoding_rs::UTF_8))
}

/// The HTML standard's prescan for a `<meta>` charset declaration.
pub fn prescan(bytes: &[u8]) -> Option<Charset> {
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"<!--") {
            i += find(&rest[4..], b"-->").map_or(bytes.len(), |p| p + 4 + 3);
            continue;
        }
        if rest.len() > 5
            && rest[..5].eq_ignore_ascii_case(b"<meta")
            && matches!(rest[5], b' ' | b'\t' | b'\n' | b'\x0c' | b'\r' | b'/')
        {
            let (attrs, used) = attributes(&rest[5..]);
            i += 5 + used;
            if let Some(found) = meta_charset(&attrs) {
                return Some(found);
            }
            continue;
        }
        if rest.len() > 1
            && rest[0] == b'<'
            && (rest[1].is_ascii_alphabetic() || (rest[1] == b'/' && rest.len() > 2))
        {
            // Some other tag: skip its name and attributes (a `>` inside a quoted value does
            // not end it).
            let skip = rest[1..]
                .iter()
                .position(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\x0c' | b'\r' | b'>'))
                .map_or(rest.len(), |p| p + 1);
            let (_, used) = attributes(&rest[skip..]);
            i += skip + used;
            continue;
        }
        if rest.starts_with(b"<!") || rest.starts_with(b"</") || rest.starts_with(b"<?") {
            i += find(rest, b">").map_or(bytes.len(), |p| p + 1);
            continue;
        }
        i += 1;
    }
    None
}

fn meta_charset(attrs: &[Attribute]) -> Option<Charset> {
    let get = |name: &[u8]| attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let declared = if let Some(label) = get(b"charset") {
        label.clone()
    } else if get(b"http-equiv").is_some_and(|v| v == b"content-type") {
        charset_in_content(get(b"content")?)?
    } else {
        return None;
    };
    let charset = from_label(&declared);
    // The standard: a document cannot declare itself UTF-16 in a meta tag it could only be
    // read by being ASCII-compatible; such declarations mean UTF-8.
    Some(match Encoding::for_label_no_replacement(&declared) {
        Some(e) if e == encoding_rs::UTF_16BE || e == encoding_rs::UTF_16LE => {
            Charset::Rewrite(encoding_rs::UTF_8)
        }
        Some(e) if e == encoding_rs::X_USER_DEFINED => Charset::Rewrite(encoding_rs::WINDOWS_1252),
        _ => charset,
    })
}

/// `text/html; charset=windows-1250` → `windows-1250` (the standard's "extracting a character
/// encoding from a meta element").
fn charset_in_content(content: &[u8]) -> Option<Vec<u8>> {
    let at = find(content, b"charset")?;
    let rest = content[at + 7..].trim_ascii_start();
    let rest = rest.strip_prefix(b"=")?.trim_ascii_start();
    match rest.first()? {
        q @ (b'"' | b'\'') => {
            let end = rest[1..].iter().position(|b| b == q)?;
            Some(rest[1..1 + end].to_vec())
        }
        _ => {
            let end = rest
                .iter()
                .position(|b| b.is_ascii_whitespace() || *b == b';')
                .unwrap_or(rest.len());
            Some(rest[..end].to_vec())
        }
    }
}

/// Parses attributes up to the end of a tag; names and values lower-cased (values of the
/// attributes that matter here are case-insensitive). Returns them and the bytes consumed.
fn attributes(bytes: &[u8]) -> (Vec<Attribute>, usize) {
    let mut attrs = Vec::new();
    let mut i = 0;
    loop {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        if i >= bytes.len() {
            return (attrs, i);
        }
        if bytes[i] == b'>' {
            return (attrs, i + 1);
        }
        let start = i;
        while i < bytes.len()
            && !matches!(bytes[i], b'=' | b'>' | b'/')
            && !bytes[i].is_ascii_whitespace()
        {
            i += 1;
        }
        let name = bytes[start..i].to_ascii_lowercase();
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = Vec::new();
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < bytes.len() && matches!(bytes[i], b'"' | b'\'') {
                let quote = bytes[i];
                i += 1;
                let start = i;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
                value = bytes[start..i].to_ascii_lowercase();
                i += 1;
            } else {
                let start = i;
                while i < bytes.len() && bytes[i] != b'>' && !bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = bytes[start..i].to_ascii_lowercase();
            }
        }
        if !name.is_empty() && !attrs.iter().any(|(n, _)| *n == name) {
            attrs.push((name, value));
        }
    }
}

/// A tag attribute: lower-cased name and value.
type Attribute = (Vec<u8>, Vec<u8>);

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(c: Charset) -> &'static str {
        c.name()
    }

    #[test]
    fn header_then_meta_then_utf8() {
        assert_eq!(
            enc(sniff(Some("text/html; charset=windows-1250"), b"")),
            "windows-1250"
        );
        assert_eq!(
            enc(sniff(Some("text/html; Charset=\"ISO-8859-2\""), b"")),
            "ISO-8859-2"
        );
        assert_eq!(
            enc(sniff(
                Some("text/html"),
                b"<html><head><meta charset=koi8-r>"
            )),
            "KOI8-R"
        );
        assert_eq!(
            enc(sniff(
                None,
                b"<!doctype html><!-- <meta charset=big5> --><meta http-equiv=\"Content-Type\" content=\"text/html; charset=windows-1252\">"
            )),
            "windows-1252"
        );
        assert_eq!(
            enc(sniff(Some("text/html"), b"<p>nothing declared")),
            "UTF-8"
        );
    }

    #[test]
    fn bom_wins_and_utf16_is_not_rewritten() {
        assert_eq!(
            sniff(Some("text/html; charset=windows-1250"), b"\xFF\xFE<\0h\0"),
            Charset::Unsupported
        );
        assert_eq!(
            sniff(Some("text/html; charset=utf-16"), b""),
            Charset::Unsupported
        );
        assert_eq!(
            sniff(Some("text/html; charset=no-such-charset"), b""),
            Charset::Unsupported
        );
        assert_eq!(
            enc(sniff(None, b"\xEF\xBB\xBF<meta charset=latin2>")),
            "UTF-8"
        );
        // A meta tag cannot declare UTF-16: that means UTF-8.
        assert_eq!(enc(sniff(None, b"<meta charset=utf-16le>")), "UTF-8");
    }

    #[test]
    fn quoted_greater_than_does_not_end_a_tag_and_only_the_first_kilobyte_counts() {
        assert_eq!(
            enc(sniff(
                None,
                b"<div title='a>b <meta charset=big5>'></div><meta charset=gbk>"
            )),
            "GBK"
        );
        let mut late = vec![b' '; PRESCAN_BYTES];
        late.extend_from_slice(b"<meta charset=windows-1250>");
        assert_eq!(enc(sniff(None, &late)), "UTF-8");
    }
}
