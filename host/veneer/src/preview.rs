//! Preview links: a page as a chosen segment, variation, consent and instant — say one second
//! before and after a campaign ends — with nothing recorded. A link carries its settings
//! signed by the host (HMAC with the cookie secret) and an expiry; it is created through the
//! admin API (`POST /v1/tenants/{t}/previews`) or `veneer admin preview create`, and opened by
//! adding `veneer_preview=TOKEN` to any URL of the tenant's site.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::visitor::CookieSigner;

/// What `POST /v1/tenants/{t}/previews` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    #[serde(default)]
    segments: Option<Vec<String>>,
    #[serde(default)]
    variations: BTreeMap<String, i64>,
    #[serde(default)]
    consent: Option<Vec<String>>,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    path: Option<String>,
}

/// Creates a preview link for `tenant` from the admin API's request body: every segment,
/// experiment and variation must exist, so a typo is an error now rather than a preview that
/// silently shows something else.
pub fn create(
    app: &crate::app::App,
    tenant: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let req: CreateRequest = serde_json::from_value(body.clone()).map_err(|e| {
        format!("body: {e} (fields: segments, variations, consent, at, ttl_seconds, path)")
    })?;
    let t = app
        .tenant_named(tenant)
        .ok_or_else(|| format!("no tenant {tenant:?} is serving"))?;
    for s in req.segments.iter().flatten() {
        if !t.rules.segment_names().contains(s) {
            return Err(format!("segments: tenant {tenant:?} has no segment {s:?}"));
        }
    }
    for (key, v) in &req.variations {
        let exp = t
            .rules
            .experiment(key)
            .ok_or_else(|| format!("variations: tenant {tenant:?} has no experiment {key:?}"))?;
        let n = exp.spec.variations.len();
        if *v < 0 || usize::try_from(*v).is_ok_and(|v| v >= n) {
            return Err(format!(
                "variations.{key}: {v} is not a variation (0 to {})",
                n.saturating_sub(1)
            ));
        }
    }
    for c in req.consent.iter().flatten() {
        if !matches!(c.as_str(), "analytics" | "personalization" | "marketing") {
            return Err(format!(
                "consent: {c:?} (use analytics, personalization, marketing)"
            ));
        }
    }
    let at = req
        .at
        .as_deref()
        .map(|a| {
            a.parse::<jiff::Timestamp>()
                .map_err(|e| format!("at: {a:?} is not an RFC 3339 instant: {e}"))
        })
        .transpose()?;
    let ttl = req.ttl_seconds.unwrap_or(24 * 3600);
    if ttl == 0 || ttl > MAX_TTL_SECONDS {
        return Err(format!("ttl_seconds: 1 to {MAX_TTL_SECONDS}"));
    }
    let path = req.path.unwrap_or_else(|| "/".to_owned());
    if !path.starts_with('/') || path.contains('#') {
        return Err(format!(
            "path {path:?}: a path on the site, starting with '/'"
        ));
    }
    let expires = jiff::Timestamp::now().as_second() + i64::try_from(ttl).unwrap_or(i64::MAX);
    let preview = Preview {
        tenant: tenant.to_owned(),
        segments: req.segments,
        variations: req.variations,
        consent: req.consent,
        at,
        expires,
        record: false,
    };
    let token = preview.sign(&app.signer);
    let link = format!(
        "{path}{}{PARAM}={token}",
        if path.contains('?') { '&' } else { '?' }
    );
    Ok(serde_json::json!({
        "token": token,
        "path": link,
        "url": t.config.hosts.first().map(|h| format!("http://{h}{link}")),
        "expires_at": jiff::Timestamp::from_second(expires).map(|t| t.to_string()).unwrap_or_default(),
        "preview": preview,
    }))
}

/// The query parameter a preview link adds to a URL.
pub const PARAM: &str = "veneer_preview";

/// Longest life a preview link may be given.
pub const MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;

/// Keeps a preview token from ever being taken for a visitor cookie, or the other way round.
const DOMAIN: &[u8] = b"veneer-preview\n";

/// What a preview shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preview {
    /// The tenant the link is for (a link never works on another tenant's site).
    pub tenant: String,
    /// The visitor's segments, instead of what the rules find (`None`: as the rules find).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<String>>,
    /// Forced variations by experiment key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variations: BTreeMap<String, i64>,
    /// The visitor's consent (`analytics`, `personalization`, `marketing`), instead of theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<Vec<String>>,
    /// The instant the page is shown at (RFC 3339), instead of now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<jiff::Timestamp>,
    /// When the link stops working (seconds since the epoch).
    pub expires: i64,
    /// Record events, impressions and exposures as a visit would: set only by the local
    /// harnesses (`veneer plugin run`/`test`) so their output shows what a plugin records.
    /// Marketers' links never set it: a preview is not a visit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record: bool,
}

/// Why a preview link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not signed by this host, or altered.
    Invalid,
    /// Past its expiry.
    Expired,
    /// Made for another tenant.
    OtherTenant,
}

impl Refused {
    /// What the visitor is told.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Invalid => "this preview link is not valid (altered, or made by another host)",
            Refused::Expired => "this preview link has expired; create a new one",
            Refused::OtherTenant => "this preview link is for another site",
        }
    }
}

impl Preview {
    /// The signed token for this preview.
    pub fn sign(&self, signer: &CookieSigner) -> String {
        let mut payload = DOMAIN.to_vec();
        payload.extend(serde_json::to_vec(self).unwrap_or_default());
        signer.seal(&payload)
    }

    /// The preview a token carries, if this host signed it for `tenant` and it has not
    /// expired at `now_secs`.
    pub fn verify(
        signer: &CookieSigner,
        token: &str,
        tenant: &str,
        now_secs: i64,
    ) -> Result<Preview, Refused> {
        let payload = signer.open(token).ok_or(Refused::Invalid)?;
        let json = payload.strip_prefix(DOMAIN).ok_or(Refused::Invalid)?;
        let preview: Preview = serde_json::from_slice(json).map_err(|_| Refused::Invalid)?;
        if preview.tenant != tenant {
            return Err(Refused::OtherTenant);
        }
        if now_secs >= preview.expires {
            return Err(Refused::Expired);
        }
        Ok(preview)
    }
}

/// The preview token in a query string, and the query string without it (for the origin).
pub fn take_from_query(query: &str) -> Option<(String, String)> {
    let mut token = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some((k, v)) if k == PARAM => {
                token = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    token.map(|t| (t, rest.join("&")))
}

/// The query parameters `veneer dev` reads as the visitor's settings, with no signed link:
/// `veneer_segment` (repeatable or comma-separated; `none` for none), `veneer_variation`
/// (`EXPERIMENT:INDEX`, repeatable), `veneer_consent` (comma-separated; `none` for none) and
/// `veneer_at` (RFC 3339).
pub const DEV_PARAMS: [&str; 4] = [
    "veneer_segment",
    "veneer_variation",
    "veneer_consent",
    "veneer_at",
];

/// A development host's switches: the settings the query asks for as a preview that records
/// what the visit would (so a developer sees their plugin's events), and the query without
/// them. `Ok(None)` when the query has none.
pub fn dev_switches(query: &str, tenant: &str) -> Result<Option<(Preview, String)>, String> {
    let mut preview = Preview {
        tenant: tenant.to_owned(),
        expires: i64::MAX,
        record: true,
        ..Preview::default()
    };
    let mut found = false;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        let mut decoded = form_urlencoded::parse(pair.as_bytes());
        let Some((key, value)) = decoded.next() else {
            continue;
        };
        let list = || {
            value
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty() && s != "none")
                .collect::<Vec<_>>()
        };
        match &*key {
            "veneer_segment" => preview.segments.get_or_insert_with(Vec::new).extend(list()),
            "veneer_consent" => preview.consent.get_or_insert_with(Vec::new).extend(list()),
            "veneer_variation" => {
                let (experiment, index) = value
                    .split_once(':')
                    .and_then(|(e, i)| Some((e.to_owned(), i.trim().parse::<i64>().ok()?)))
                    .ok_or_else(|| {
                        format!("veneer_variation={value}: EXPERIMENT:INDEX expected")
                    })?;
                preview.variations.insert(experiment, index);
            }
            "veneer_at" => {
                preview.at = Some(value.parse().map_err(|_| {
                    format!("veneer_at={value}: an RFC 3339 instant, e.g. 2026-12-24T10:00:00Z")
                })?);
            }
            _ => {
                rest.push(pair);
                continue;
            }
        }
        found = true;
    }
    Ok(found.then(|| (preview, rest.join("&"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_switches_read_segments_variations_consent_and_instant() {
        let (p, rest) = dev_switches(
            "a=1&veneer_segment=returning,vip&veneer_variation=headline%3A1&veneer_consent=none&veneer_at=2026-12-24T10%3A00%3A00Z&b=2",
            "shop",
        )
        .expect("valid")
        .expect("switches");
        assert_eq!(rest, "a=1&b=2");
        assert_eq!(p.segments, Some(vec!["returning".into(), "vip".into()]));
        assert_eq!(p.variations.get("headline"), Some(&1));
        assert_eq!(p.consent, Some(vec![]));
        assert_eq!(p.at.map(|t| t.as_second()), Some(1_798_106_400));
        assert!(p.record);
        assert_eq!(dev_switches("a=1", "shop"), Ok(None));
        assert!(
            dev_switches("veneer_variation=headline", "shop")
                .expect_err("no index")
                .contains("EXPERIMENT:INDEX")
        );
        assert!(dev_switches("veneer_at=tomorrow", "shop").is_err());
    }

    #[test]
    fn a_token_verifies_only_unaltered_unexpired_and_for_its_tenant() {
        let signer = CookieSigner::new(b"0123456789abcdef0123456789abcdef");
        let p = Preview {
            tenant: "shop".into(),
            segments: Some(vec!["vip".into()]),
            expires: 1_000,
            ..Preview::default()
        };
        let token = p.sign(&signer);
        assert_eq!(Preview::verify(&signer, &token, "shop", 999), Ok(p.clone()));
        assert_eq!(
            Preview::verify(&signer, &token, "shop", 1_000),
            Err(Refused::Expired)
        );
        assert_eq!(
            Preview::verify(&signer, &token, "other", 999),
            Err(Refused::OtherTenant)
        );
        let mut altered = token.clone();
        altered.insert(3, 'x');
        assert_eq!(
            Preview::verify(&signer, &altered, "shop", 999),
            Err(Refused::Invalid)
        );
        let other = CookieSigner::new(b"another-secret-0123456789abcdef0123");
        assert_eq!(
            Preview::verify(&other, &token, "shop", 999),
            Err(Refused::Invalid)
        );
        // A visitor cookie, signed by the same key, is not a preview.
        let cookie = signer.seal(br#"{"tenant":"shop","expires":99999}"#);
        assert_eq!(
            Preview::verify(&signer, &cookie, "shop", 1),
            Err(Refused::Invalid)
        );
    }

    #[test]
    fn the_token_is_taken_out_of_the_query() {
        assert_eq!(
            take_from_query("a=1&veneer_preview=T.X&b=2"),
            Some(("T.X".to_owned(), "a=1&b=2".to_owned()))
        );
        assert_eq!(take_from_query("a=1"), None);
    }
}
