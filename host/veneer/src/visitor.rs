//! Who is visiting: the signed visitor cookie and what the request says about the visitor.
//!
//! The cookie (`veneer_vid`) holds a pseudonymous id, first-seen and last-seen times, the visit
//! count and sticky experiment assignments, as base64url JSON followed by an HMAC-SHA256 tag.
//! A cookie whose tag does not verify is ignored and a new one issued: a visitor cannot pick
//! their own experiment variation or impersonate another id.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::Sha256;

use crate::plugin::{Consent, DeviceClass};

/// The visitor cookie's name.
pub const COOKIE: &str = "veneer_vid";
/// A visit ends after this much inactivity.
pub const VISIT_GAP_SECS: u64 = 30 * 60;
/// Sticky assignments kept per visitor; the oldest experiments are dropped past this, so the
/// cookie stays well under browsers' 4 KiB limit.
pub const MAX_ASSIGNMENTS: usize = 40;

/// What the cookie carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitorState {
    /// Pseudonymous visitor id.
    pub id: String,
    /// First seen, Unix seconds.
    pub first: u64,
    /// Last seen, Unix seconds.
    pub last: u64,
    /// Visits so far, including the current one.
    pub visits: u32,
    /// Sticky assignments: `"<experiment>__<bucketVersion>"` → variation key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sticky: BTreeMap<String, String>,
    /// Today's impressions of frequency-capped campaigns: campaign id → (UTC day number,
    /// impressions that day).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub caps: BTreeMap<String, (u32, u32)>,
    /// The customer this visitor is (`veneer-identify`), until they log out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// The tenant that linked `customer`: every tenant's cookies are signed with one key, and
    /// a link made on one site must not name a customer on another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_of: Option<String>,
}

/// Signs and verifies visitor cookies.
#[derive(Clone)]
pub struct CookieSigner {
    key: Vec<u8>,
}

impl CookieSigner {
    /// A signer with `key` (at least 32 bytes of secret).
    pub fn new(key: &[u8]) -> Self {
        CookieSigner { key: key.to_vec() }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
    }

    /// The cookie value for `state`.
    pub fn encode(&self, state: &VisitorState) -> String {
        self.seal(&serde_json::to_vec(state).unwrap_or_default())
    }

    /// A signed cookie value carrying `payload` as it is; [`decode`](Self::decode) still
    /// parses it. The fuzz targets use it to reach the parser behind the signature.
    pub fn seal(&self, payload: &[u8]) -> String {
        let payload = B64.encode(payload);
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let tag = B64.encode(mac.finalize().into_bytes());
        format!("{payload}.{tag}")
    }

    /// The state in a cookie value, if its tag verifies and it parses.
    pub fn decode(&self, value: &str) -> Option<VisitorState> {
        serde_json::from_slice(&self.open(value)?).ok()
    }

    /// The payload of a value made by [`seal`](Self::seal), if its tag verifies.
    pub fn open(&self, value: &str) -> Option<Vec<u8>> {
        let (payload, tag) = value.split_once('.')?;
        let tag = B64.decode(tag).ok()?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&tag).ok()?;
        B64.decode(payload).ok()
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The header with cookie `name` removed (plugins and origins never see Veneer's cookie).
pub fn strip_cookie(header: &str, name: &str) -> String {
    header
        .split(';')
        .map(str::trim)
        .filter(|kv| kv.split_once('=').is_none_or(|(k, _)| k != name))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Device class from a User-Agent. Deliberately simple and fast; bots first, so a crawler
/// that claims to be mobile is still a bot.
pub fn device_class(user_agent: &str) -> DeviceClass {
    let ua = user_agent.to_ascii_lowercase();
    if [
        "bot",
        "crawl",
        "spider",
        "slurp",
        "facebookexternalhit",
        "headless",
    ]
    .iter()
    .any(|b| ua.contains(b))
    {
        DeviceClass::Bot
    } else if ua.contains("ipad")
        || ua.contains("tablet")
        || (ua.contains("android") && !ua.contains("mobile"))
    {
        DeviceClass::Tablet
    } else if ua.contains("mobi") || ua.contains("iphone") || ua.contains("android") {
        DeviceClass::Mobile
    } else {
        DeviceClass::Desktop
    }
}

/// The device class's name in segment attributes.
pub fn device_name(d: DeviceClass) -> &'static str {
    match d {
        DeviceClass::Desktop => "desktop",
        DeviceClass::Mobile => "mobile",
        DeviceClass::Tablet => "tablet",
        DeviceClass::Bot => "bot",
    }
}

/// The first language range of an Accept-Language header (`nb-NO`), if any.
pub fn preferred_locale(accept_language: &str) -> Option<String> {
    let first = accept_language.split(',').next()?.split(';').next()?.trim();
    let valid = !first.is_empty()
        && first != "*"
        && first.len() <= 35
        && first
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    valid.then(|| first.to_owned())
}

/// `utm_*` parameters of a query string, prefix removed, percent-decoded.
pub fn utm_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = k.strip_prefix("utm_")?;
            (!k.is_empty()).then(|| (k.to_owned(), percent_decode(v)))
        })
        .take(10)
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Consent from the consent cookie (`analytics,personalization,marketing`, any subset), or
/// the tenant default when the visitor has not chosen. `Sec-GPC: 1` (Global Privacy Control)
/// always withdraws analytics and marketing.
pub fn consent(cookie_value: Option<&str>, default: &[String], gpc: bool) -> Consent {
    let has = |name: &str| match cookie_value {
        Some(v) => v.split([',', '|', ' ']).any(|p| p == name),
        None => default.iter().any(|d| d == name),
    };
    Consent {
        analytics: has("analytics") && !gpc,
        personalization: has("personalization"),
        marketing: has("marketing") && !gpc,
    }
}

/// Everything known about the visitor, for segment rules (GrowthBook attributes).
pub struct Facts<'a> {
    /// Cookie state (already updated for this request).
    pub state: &'a VisitorState,
    /// Device class.
    pub device: DeviceClass,
    /// Country code.
    pub country: Option<&'a str>,
    /// Locale.
    pub locale: Option<&'a str>,
    /// UTM parameters.
    pub utm: &'a [(String, String)],
    /// Referer.
    pub referrer: Option<&'a str>,
    /// Request path (without query).
    pub path: &'a str,
    /// Request host.
    pub host: &'a str,
    /// User-Agent.
    pub user_agent: &'a str,
    /// Consent.
    pub consent: Consent,
}

impl Facts<'_> {
    /// The attributes object segment conditions and experiments are evaluated against.
    pub fn attributes(&self) -> Value {
        let utm: Map<String, Value> = self
            .utm
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({
            "id": self.state.id,
            "visitCount": self.state.visits,
            "returning": self.state.visits > 1,
            "firstSeen": self.state.first,
            "device": device_name(self.device),
            "country": self.country,
            "locale": self.locale,
            "language": self.locale.map(|l| l.split('-').next().unwrap_or(l).to_ascii_lowercase()),
            "utm": utm,
            "referrer": self.referrer,
            "path": self.path,
            "host": self.host,
            "userAgent": self.user_agent,
            "consent": {
                "analytics": self.consent.analytics,
                "personalization": self.consent.personalization,
                "marketing": self.consent.marketing,
            },
        })
    }
}

/// Loads the visitor's state from the cookie (or starts a new one) and counts the visit.
/// Returns the state and whether the cookie must be (re)issued.
pub fn resume(signer: &CookieSigner, cookie_value: Option<&str>, now: u64) -> VisitorState {
    resume_known(signer, cookie_value, now).0
}

/// Like [`resume`], and whether the cookie was a valid one (`false`: a visitor new to us, who
/// cannot have a profile yet).
pub fn resume_known(
    signer: &CookieSigner,
    cookie_value: Option<&str>,
    now: u64,
) -> (VisitorState, bool) {
    let decoded = cookie_value.and_then(|v| signer.decode(v));
    let known = decoded.is_some();
    let state = match decoded {
        Some(mut s) => {
            let today = day_number(i64::try_from(now).unwrap_or(i64::MAX));
            s.caps.retain(|_, (day, _)| *day == today);
            if now.saturating_sub(s.last) > VISIT_GAP_SECS {
                s.visits = s.visits.saturating_add(1);
            }
            s.last = now;
            s
        }
        None => VisitorState::fresh(uuid::Uuid::new_v4().to_string(), now),
    };
    (state, known)
}

impl VisitorState {
    /// A visitor seen for the first time at `now` (Unix seconds), with this id.
    pub fn fresh(id: String, now: u64) -> VisitorState {
        VisitorState {
            id,
            first: now,
            last: now,
            visits: 1,
            sticky: BTreeMap::new(),
            caps: BTreeMap::new(),
            customer: None,
            customer_of: None,
        }
    }
}

/// The claim `claim` of a JWT signed with HS256 under `secret`, if the signature verifies and
/// the token is current at `now` (`exp`, `nbf`). Only HS256 is accepted: a token cannot
/// choose a weaker algorithm (`none`) or another kind of key.
pub fn jwt_claim(token: &str, secret: &[u8], claim: &str, now: i64) -> Option<String> {
    let mut parts = token.split('.');
    let (header, payload, tag) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let head: Value = serde_json::from_slice(&B64.decode(header).ok()?).ok()?;
    if head.get("alg")?.as_str()? != "HS256" {
        return None;
    }
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).ok()?;
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    mac.verify_slice(&B64.decode(tag).ok()?).ok()?;
    let body: Value = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
    if body
        .get("exp")
        .is_some_and(|e| e.as_f64().is_none_or(|e| e <= now as f64))
    {
        return None;
    }
    if body
        .get("nbf")
        .is_some_and(|n| n.as_f64().is_none_or(|n| n > now as f64))
    {
        return None;
    }
    match body.get(claim)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The UTC day number of `unix_secs` (frequency caps count per day).
pub fn day_number(unix_secs: i64) -> u32 {
    u32::try_from(unix_secs.max(0) / 86_400).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_cookie_round_trips_and_rejects_tampering() {
        let signer = CookieSigner::new(b"0123456789abcdef0123456789abcdef");
        let state = resume(&signer, None, 1000);
        let value = signer.encode(&state);
        assert_eq!(signer.decode(&value), Some(state.clone()));
        let (payload, tag) = value.split_once('.').unwrap_or_default();
        let mut forged = state.clone();
        forged.visits = 99;
        let forged_payload = B64.encode(serde_json::to_vec(&forged).unwrap_or_default());
        assert_eq!(signer.decode(&format!("{forged_payload}.{tag}")), None);
        assert_eq!(signer.decode(payload), None);
        assert_eq!(
            CookieSigner::new(b"another-key-another-key-another!!").decode(&value),
            None
        );
    }

    #[test]
    fn jwt_claims_verify() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let sign = |header: &str, body: &str, key: &[u8]| {
            let (h, b) = (B64.encode(header), B64.encode(body));
            let mut mac =
                <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
            mac.update(format!("{h}.{b}").as_bytes());
            format!("{h}.{b}.{}", B64.encode(mac.finalize().into_bytes()))
        };
        let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
        let good = sign(hs, r#"{"sub":"c42","exp":2000}"#, secret);
        assert_eq!(
            jwt_claim(&good, secret, "sub", 1000).as_deref(),
            Some("c42")
        );
        assert_eq!(jwt_claim(&good, secret, "sub", 2000), None, "expired");
        assert_eq!(
            jwt_claim(&good, b"another-key-another-key-another!!", "sub", 1000),
            None
        );
        let none = sign(r#"{"alg":"none"}"#, r#"{"sub":"c42"}"#, secret);
        assert_eq!(jwt_claim(&none, secret, "sub", 1000), None);
        let early = sign(hs, r#"{"sub":"c42","nbf":1500}"#, secret);
        assert_eq!(jwt_claim(&early, secret, "sub", 1000), None);
        assert_eq!(jwt_claim("a.b", secret, "sub", 1000), None);
    }

    #[test]
    fn visits_count_after_a_gap() {
        let signer = CookieSigner::new(b"0123456789abcdef0123456789abcdef");
        let s = resume(&signer, None, 1000);
        let v = signer.encode(&s);
        assert_eq!(resume(&signer, Some(&v), 1000 + 60).visits, 1);
        assert_eq!(
            resume(&signer, Some(&v), 1000 + VISIT_GAP_SECS + 1).visits,
            2
        );
    }

    #[test]
    fn request_facts() {
        assert!(matches!(
            device_class("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Mobile"),
            DeviceClass::Mobile
        ));
        assert!(matches!(
            device_class("Mozilla/5.0 (iPad; CPU OS 17_0)"),
            DeviceClass::Tablet
        ));
        assert!(matches!(
            device_class("Googlebot/2.1 Mobile"),
            DeviceClass::Bot
        ));
        assert!(matches!(
            device_class("Mozilla/5.0 (X11; Linux x86_64)"),
            DeviceClass::Desktop
        ));
        assert_eq!(
            preferred_locale("nb-NO,nb;q=0.9,en;q=0.8").as_deref(),
            Some("nb-NO")
        );
        assert_eq!(
            utm_params("a=1&utm_source=news%20letter&utm_campaign=x+mas"),
            vec![
                ("source".into(), "news letter".into()),
                ("campaign".into(), "x mas".into())
            ]
        );
        assert_eq!(cookie("a=1; veneer_vid=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(strip_cookie("a=1; veneer_vid=xyz; b=2", COOKIE), "a=1; b=2");
        let c = consent(Some("personalization"), &[], false);
        assert!(c.personalization && !c.analytics && !c.marketing);
        let c = consent(None, &["analytics".into(), "marketing".into()], true);
        assert!(!c.analytics && !c.marketing);
    }
}
