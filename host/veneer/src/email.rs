//! Open-time e-mail content: the signed token `veneer render` puts in an e-mail's image and
//! link URLs, how an image hit is classified (a person, Gmail's proxy, a scanner...), SVG
//! slot templates filled with the recipient's values and rasterized to PNG.
//!
//! The request side (`/_veneer/i/TOKEN/SLOT.png`, `/_veneer/c/TOKEN/SLOT`) is
//! `proxy::opens`; it never answers an image request with anything but a 200 and image bytes
//! (an e-mail client shows a broken image for anything else, and Gmail's proxy caches it).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::visitor::CookieSigner;

/// Image hits: `/_veneer/i/TOKEN/SLOT.png` (or `.gif`, `.jpg`).
pub const IMAGE_PREFIX: &str = "/_veneer/i/";
/// Clicks: `/_veneer/c/TOKEN/SLOT`.
pub const CLICK_PREFIX: &str = "/_veneer/c/";
/// What `veneer render` replaces with each recipient's token in a template.
pub const TOKEN_PLACEHOLDER: &str = "{{veneer:token}}";
/// How long a token works after the send (e-mails are opened for months; the default of
/// common e-mail platforms' tracking links).
pub const TOKEN_DAYS: i64 = 180;
/// Separates these tokens from every other value the host signs with the same key.
const DOMAIN: &[u8] = b"veneer-email-token-v1\n";
/// At most this many bytes of attributes travel in a token (URLs stay short enough for every
/// mail client).
pub const MAX_TOKEN_ATTRIBUTES: usize = 1024;
/// A 1×1 transparent PNG: the answer when a slot has no usable fallback of its own.
pub const BLANK_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

/// What an e-mail's token carries: never an e-mail address, only the recipient's id and the
/// attributes the rules need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    /// The tenant.
    #[serde(rename = "t")]
    pub tenant: String,
    /// The recipient's id.
    #[serde(rename = "r")]
    pub recipient: String,
    /// The send it came with.
    #[serde(rename = "s")]
    pub send_id: String,
    /// The recipient's attributes at send time.
    #[serde(rename = "a", default, skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
    /// When it stops working (seconds since the epoch).
    #[serde(rename = "x")]
    pub expires: i64,
}

impl Token {
    /// The token for `recipient`'s message of `send_id`, sent at `at`; attributes beyond
    /// [`MAX_TOKEN_ATTRIBUTES`] bytes are left out (largest first).
    pub fn new(
        tenant: &str,
        recipient: &str,
        send_id: &str,
        attributes: &Map<String, Value>,
        at: Timestamp,
    ) -> Token {
        let mut attributes = attributes.clone();
        while serde_json::to_vec(&attributes).map_or(0, |v| v.len()) > MAX_TOKEN_ATTRIBUTES {
            let largest = attributes
                .iter()
                .max_by_key(|(_, v)| v.to_string().len())
                .map(|(k, _)| k.clone());
            match largest {
                Some(k) => {
                    attributes.remove(&k);
                }
                None => break,
            }
        }
        Token {
            tenant: tenant.to_owned(),
            recipient: recipient.to_owned(),
            send_id: send_id.to_owned(),
            attributes,
            expires: at.as_second().saturating_add(TOKEN_DAYS * 86_400),
        }
    }

    /// The signed token (URL-safe).
    pub fn sign(&self, signer: &CookieSigner) -> String {
        let mut payload = DOMAIN.to_vec();
        payload.extend(serde_json::to_vec(self).unwrap_or_default());
        signer.seal(&payload)
    }

    /// The token `value` carries, if this host signed it for `tenant` and it works at `now`.
    pub fn verify(signer: &CookieSigner, value: &str, tenant: &str, now: i64) -> Option<Token> {
        let payload = signer.open(value)?;
        let token: Token = serde_json::from_slice(payload.strip_prefix(DOMAIN)?).ok()?;
        (token.tenant == tenant && now < token.expires).then_some(token)
    }
}

/// Who fetched an e-mail image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenKind {
    /// A mail client fetching it directly: a person opened the e-mail.
    Human,
    /// Gmail's image proxy on behalf of a reader (it hides their address and agent).
    GmailProxy,
    /// Gmail fetching ahead of any reader.
    GmailPrefetch,
    /// Apple Mail Privacy Protection, which fetches every image of every e-mail on delivery.
    AppleMpp,
    /// A security scanner, link checker or `HEAD` request.
    Scanner,
}

impl OpenKind {
    /// The name in events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            OpenKind::Human => "human",
            OpenKind::GmailProxy => "gmail_proxy",
            OpenKind::GmailPrefetch => "gmail_prefetch",
            OpenKind::AppleMpp => "apple_mpp",
            OpenKind::Scanner => "scanner",
        }
    }

    /// Whether it counts as an open in reports (the others are logged, not counted).
    pub fn counted(self) -> bool {
        matches!(self, OpenKind::Human | OpenKind::GmailProxy)
    }
}

/// Agents of scanners and link checkers that fetch every image of an e-mail.
const SCANNER_AGENTS: &[&str] = &[
    "bot",
    "crawler",
    "spider",
    "scanner",
    "barracuda",
    "mimecast",
    "proofpoint",
    "symantec",
    "forcepoint",
    "trendmicro",
    "microsoft office existence discovery",
    "python-requests",
    "curl/",
    "wget/",
    "go-http-client",
    "headlesschrome",
];

/// Classifies an image hit by its method, agent, purpose headers and source address.
pub fn classify(
    method: &http::Method,
    headers: &http::HeaderMap,
    client: Option<std::net::IpAddr>,
    apple_mpp: &[ipnet::IpNet],
) -> OpenKind {
    if method == http::Method::HEAD {
        return OpenKind::Scanner;
    }
    if client.is_some_and(|ip| apple_mpp.iter().any(|n| n.contains(&ip))) {
        return OpenKind::AppleMpp;
    }
    let agent = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let prefetch = ["purpose", "sec-purpose", "x-purpose", "x-moz"]
        .iter()
        .any(|h| {
            headers
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    let v = v.to_ascii_lowercase();
                    v.contains("prefetch") || v.contains("preview")
                })
        });
    if agent.contains("googleimageproxy") {
        return if prefetch {
            OpenKind::GmailPrefetch
        } else {
            OpenKind::GmailProxy
        };
    }
    if agent.is_empty() || prefetch || SCANNER_AGENTS.iter().any(|a| agent.contains(a)) {
        return OpenKind::Scanner;
    }
    OpenKind::Human
}

/// The content type of image bytes, from their signature.
pub fn image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else {
        None
    }
}

/// Escapes text for an XML text node or attribute value.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The value at a dotted `path` of `attributes`, as text.
fn attribute_text(attributes: &Value, path: &str) -> String {
    let mut at = attributes;
    for key in path.split('.') {
        match at.get(key) {
            Some(v) => at = v,
            None => return String::new(),
        }
    }
    match at {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// "3 days 4 hours", "5 hours 10 minutes", "12 minutes" until `end`; "" once it has passed.
pub fn countdown(now: Timestamp, end: Timestamp) -> String {
    let secs = end.as_second() - now.as_second();
    if secs <= 0 {
        return String::new();
    }
    let (days, hours, minutes) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    let unit = |n: i64, one: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {one}s")
        }
    };
    if days > 0 {
        format!("{} {}", unit(days, "day"), unit(hours, "hour"))
    } else if hours > 0 {
        format!("{} {}", unit(hours, "hour"), unit(minutes, "minute"))
    } else {
        unit(minutes.max(1), "minute")
    }
}

/// Fills a slot template's placeholders: `{{attr:PATH}}` (the recipient's attribute at a
/// dotted path, e.g. `{{attr:customer.firstName}}`), `{{campaign:id}}`, `{{campaign:name}}`,
/// `{{campaign:param:KEY}}` and `{{campaign:countdown}}` (of the highest-priority live
/// campaign; empty without one). Values are XML-escaped.
pub fn fill(
    template: &str,
    attributes: &Value,
    campaign: Option<&veneer_rules::Campaign>,
    now: Timestamp,
) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        let value = if let Some(path) = name.strip_prefix("attr:") {
            Some(attribute_text(attributes, path))
        } else {
            name.strip_prefix("campaign:")
                .map(|field| match (field, campaign) {
                    (_, None) => String::new(),
                    ("id", Some(c)) => c.id.clone(),
                    ("name", Some(c)) => c.name.clone(),
                    ("countdown", Some(c)) => countdown(now, c.end),
                    (f, Some(c)) => f
                        .strip_prefix("param:")
                        .and_then(|k| c.params.get(k).cloned())
                        .unwrap_or_default(),
                })
        };
        match value {
            Some(v) => out.push_str(&xml_escape(&v)),
            // Not ours (`{{veneer:token}}` or the template's own): left as it is.
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The link a drawn slot names on its root element (`<svg data-href="...">`), if any.
pub fn slot_link(svg: &str) -> Option<String> {
    let start = svg.find("<svg")?;
    let tag = &svg[start..start + svg[start..].find('>')?];
    let at = tag.find("data-href=")? + "data-href=".len();
    let quote = tag[at..].chars().next()?;
    if quote != '"' && quote != '\'' {
        return None;
    }
    let value = &tag[at + 1..];
    let value = &value[..value.find(quote)?];
    Some(
        value
            .replace("&amp;", "&")
            .replace("&quot;", "\"")
            .replace("&apos;", "'"),
    )
}

/// Whether a slot's link may be redirected to: a path on the tenant's site (never one a
/// browser reads as another host: `//x`, `/\\x`, control characters or spaces) or an http(s)
/// URL.
pub fn safe_link(link: &str) -> bool {
    if link.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    match link.strip_prefix('/') {
        Some(rest) => !rest.starts_with('/') && !rest.starts_with('\\'),
        None => link.starts_with("https://") || link.starts_with("http://"),
    }
}

/// Weighs a drawn PNG by its bytes, so the image cache is bounded in memory.
#[derive(Clone)]
struct PngBytes;

impl quick_cache::Weighter<[u8; 32], Bytes> for PngBytes {
    fn weight(&self, _key: &[u8; 32], png: &Bytes) -> u64 {
        u64::try_from(png.len()).unwrap_or(u64::MAX).max(1)
    }
}

/// Memory for drawn images.
const IMAGE_CACHE_BYTES: u64 = 64 << 20;

/// The process-wide parts: Apple's proxy addresses, fonts, drawn images and slot files.
pub struct EmailState {
    /// `[server] apple_mpp_cidrs`.
    pub apple_mpp: Vec<ipnet::IpNet>,
    fonts: OnceLock<Arc<resvg::usvg::fontdb::Database>>,
    /// PNGs by the SHA-256 of the SVG they were drawn from.
    images: quick_cache::sync::Cache<[u8; 32], Bytes, PngBytes>,
    /// Slot files (templates and fallbacks) as read, by path, with the modification time
    /// they were read at (a changed file is read again).
    files: dashmap::DashMap<PathBuf, (std::time::SystemTime, Bytes)>,
}

impl EmailState {
    /// With Apple's proxy addresses.
    pub fn new(apple_mpp: Vec<ipnet::IpNet>) -> EmailState {
        EmailState {
            apple_mpp,
            fonts: OnceLock::new(),
            images: quick_cache::sync::Cache::with_weighter(4096, IMAGE_CACHE_BYTES, PngBytes),
            files: dashmap::DashMap::new(),
        }
    }

    /// A slot file's bytes, read again when the file changes; `None` (logged) when it
    /// cannot be read.
    pub fn file(&self, path: &Path) -> Option<Bytes> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified());
        if let (Ok(at), Some(known)) = (&modified, self.files.get(path))
            && known.0 == *at
        {
            return Some(known.1.clone());
        }
        match std::fs::read(path) {
            Ok(b) => {
                let b = Bytes::from(b);
                if let Ok(at) = modified {
                    self.files.insert(path.to_owned(), (at, b.clone()));
                }
                Some(b)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "e-mail slot file cannot be read: its fallback is served");
                None
            }
        }
    }

    /// The PNG for `svg`, drawn once per distinct SVG (CPU-heavy: call off the async
    /// threads).
    pub fn png(&self, svg: &str) -> Result<Bytes, String> {
        use sha2::Digest as _;
        let key: [u8; 32] = sha2::Sha256::digest(svg.as_bytes()).into();
        if let Some(png) = self.images.get(&key) {
            return Ok(png);
        }
        let fonts = self
            .fonts
            .get_or_init(|| {
                let mut db = resvg::usvg::fontdb::Database::new();
                db.load_system_fonts();
                Arc::new(db)
            })
            .clone();
        let png = Bytes::from(rasterize(svg, fonts)?);
        self.images.insert(key, png.clone());
        Ok(png)
    }
}

/// Largest image drawn, in pixels per side (e-mail images are a few hundred wide).
const MAX_SIDE: u32 = 2000;

/// Draws `svg` as PNG. External images and files are never loaded: a template (or a plugin's
/// output) cannot make the host read a file.
pub fn rasterize(svg: &str, fonts: Arc<resvg::usvg::fontdb::Database>) -> Result<Vec<u8>, String> {
    use resvg::{tiny_skia, usvg};
    let options = usvg::Options {
        fontdb: fonts,
        font_family: "DejaVu Sans".into(),
        image_href_resolver: usvg::ImageHrefResolver {
            resolve_data: Box::new(|_, _, _| None),
            resolve_string: Box::new(|_, _| None),
        },
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_str(svg, &options).map_err(|e| format!("SVG: {e}"))?;
    let size = tree.size().to_int_size();
    let (w, h) = (size.width(), size.height());
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!("{w}×{h} px is larger than {MAX_SIDE}×{MAX_SIDE}"));
    }
    let mut pixmap =
        tiny_skia::Pixmap::new(w, h).ok_or_else(|| format!("cannot draw {w}×{h} px"))?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| format!("PNG: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_for_their_tenant_and_until_they_expire() {
        let signer = CookieSigner::new(b"0123456789abcdef0123456789abcdef");
        let at: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap_or_default();
        let mut attributes = Map::new();
        attributes.insert("country".into(), Value::String("NO".into()));
        let t = Token::new("shop", "c1", "s1", &attributes, at);
        let value = t.sign(&signer);
        assert!(!value.contains('/') && !value.contains('+'));
        assert_eq!(
            Token::verify(&signer, &value, "shop", at.as_second()),
            Some(t.clone())
        );
        assert_eq!(
            Token::verify(&signer, &value, "other", at.as_second()),
            None
        );
        assert_eq!(Token::verify(&signer, &value, "shop", t.expires), None);
        let mut tampered = value.clone().into_bytes();
        tampered[3] ^= 1;
        let tampered = String::from_utf8_lossy(&tampered).into_owned();
        assert_eq!(
            Token::verify(&signer, &tampered, "shop", at.as_second()),
            None
        );
        // A preview link or a cookie signed with the same key is not a token.
        let cookie = signer.seal(b"{\"t\":\"shop\",\"r\":\"c1\",\"s\":\"s\",\"x\":99999999999}");
        assert_eq!(Token::verify(&signer, &cookie, "shop", 0), None);
    }

    #[test]
    fn opens_are_classified() {
        let get = http::Method::GET;
        let h = |agent: &str| {
            let mut m = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(agent) {
                m.insert(http::header::USER_AGENT, v);
            }
            m
        };
        let chrome =
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120 Safari/537.36";
        let gmail = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
        assert_eq!(classify(&get, &h(chrome), None, &[]), OpenKind::Human);
        assert_eq!(classify(&get, &h(gmail), None, &[]), OpenKind::GmailProxy);
        let mut pre = h(gmail);
        pre.insert("x-purpose", http::HeaderValue::from_static("preview"));
        assert_eq!(classify(&get, &pre, None, &[]), OpenKind::GmailPrefetch);
        assert_eq!(
            classify(&http::Method::HEAD, &h(chrome), None, &[]),
            OpenKind::Scanner
        );
        assert_eq!(
            classify(&get, &h("Barracuda Sentinel (EE)"), None, &[]),
            OpenKind::Scanner
        );
        let apple: Vec<ipnet::IpNet> =
            ["17.58.0.0/16".parse().unwrap_or_else(|_| unreachable!())].to_vec();
        let ip = "17.58.1.2".parse().ok();
        assert_eq!(classify(&get, &h(chrome), ip, &apple), OpenKind::AppleMpp);
        assert!(OpenKind::GmailProxy.counted() && !OpenKind::AppleMpp.counted());
    }

    #[test]
    fn templates_are_filled_and_escaped() {
        let attributes = serde_json::json!({"customer": {"firstName": "Ada & <Bob>"}});
        let campaign = veneer_rules::Campaign {
            id: "xmas".into(),
            name: "Christmas".into(),
            start: "2026-12-01T00:00:00Z".parse().unwrap_or_default(),
            end: "2026-12-03T04:00:00Z".parse().unwrap_or_default(),
            priority: 0,
            segments: vec![],
            channels: vec![],
            params: [("discount".to_owned(), "25".to_owned())].into(),
            cost: None,
            frequency_cap: None,
            attribution_days: None,
            holdout: None,
            tags: vec![],
            frequency_capping: true,
            counts_toward_caps: true,
        };
        let now = "2026-12-01T00:00:00Z".parse().unwrap_or_default();
        let out = fill(
            "<text>Hi {{attr:customer.firstName}}, {{campaign:param:discount}}% off, {{campaign:countdown}} left {{veneer:token}}{{attr:missing}}</text>",
            &attributes,
            Some(&campaign),
            now,
        );
        assert_eq!(
            out,
            "<text>Hi Ada &amp; &lt;Bob&gt;, 25% off, 2 days 4 hours left {{veneer:token}}</text>"
        );
        assert_eq!(countdown(now, now), "");
        assert_eq!(
            slot_link(r#"<svg xmlns="x" data-href="/xmas?a=1&amp;b=2" width="1">"#).as_deref(),
            Some("/xmas?a=1&b=2")
        );
    }

    #[test]
    fn links_that_leave_the_site_by_a_trick_are_refused() {
        for ok in [
            "/products",
            "/p?a=1",
            "https://shop.example/x",
            "http://shop.example/",
        ] {
            assert!(safe_link(ok), "{ok}");
        }
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "javascript:alert(1)",
            "evil.example",
            "/ x",
        ] {
            assert!(!safe_link(bad), "{bad}");
        }
    }

    #[test]
    fn svg_becomes_png_and_files_are_never_read() -> Result<(), String> {
        let fonts = Arc::new(resvg::usvg::fontdb::Database::new());
        let png = rasterize(
            r#"<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="40" height="20"><rect width="40" height="20" fill="green"/><image href="/etc/hostname" width="10" height="10"/></svg>"#,
            fonts.clone(),
        )?;
        assert_eq!(image_type(&png), Some("image/png"));
        assert!(rasterize("<svg", fonts.clone()).is_err());
        assert!(
            rasterize(
                r#"<svg xmlns="http://www.w3.org/2000/svg" width="9000" height="10"/>"#,
                fonts
            )
            .is_err()
        );
        Ok(())
    }
}
