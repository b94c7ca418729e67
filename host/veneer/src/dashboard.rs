//! The marketer's dashboard, served on the admin listener at `/dashboard/`: static files
//! embedded in the binary (`host/veneer/dashboard/`, and the rules engine for the browser that
//! `build.rs` generates). The page holds no data of its own: it signs in with a token and reads
//! the admin API's JSON routes, the same ones `veneer report` reads.

/// One embedded file.
pub struct Asset {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

/// The file served at `/dashboard/NAME` (`""` is the page itself).
pub fn asset(name: &str) -> Option<Asset> {
    let (content_type, bytes): (&str, &[u8]) = match name {
        "" | "index.html" => (
            "text/html; charset=utf-8",
            include_bytes!("../dashboard/index.html"),
        ),
        "app.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../dashboard/app.js"),
        ),
        "style.css" => (
            "text/css; charset=utf-8",
            include_bytes!("../dashboard/style.css"),
        ),
        "rules_web.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!(concat!(env!("OUT_DIR"), "/dashboard/rules_web.js")),
        ),
        "rules_web_bg.wasm" => (
            "application/wasm",
            include_bytes!(concat!(env!("OUT_DIR"), "/dashboard/rules_web_bg.wasm")),
        ),
        _ => return None,
    };
    Some(Asset {
        content_type,
        bytes,
    })
}

/// A strong validator for an embedded file: the first 16 bytes of its SHA-256, quoted.
pub fn etag(bytes: &'static [u8]) -> String {
    use sha2::Digest as _;
    static TAGS: std::sync::LazyLock<dashmap::DashMap<usize, String>> =
        std::sync::LazyLock::new(dashmap::DashMap::new);
    // Keyed by address: each embedded file is one static slice.
    TAGS.entry(bytes.as_ptr() as usize)
        .or_insert_with(|| {
            let digest = sha2::Sha256::digest(bytes);
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
        .clone()
}

/// The page may run its own scripts and the rules engine's WebAssembly, and talk to this
/// listener only: no inline script, nothing from elsewhere, never inside another site's frame.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";
