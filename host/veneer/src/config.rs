//! The host's configuration: one TOML file with a `[server]` table and one `[[tenant]]` table
//! per site. Every error names the file, the field and what is wrong, and problems in
//! referenced files (rules, fragments, plugins) are reported with that file's name.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A configuration problem, with its place.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// The field (`tenant[0] (shop).plugin[1].path`), or `(file)` for the file as a whole.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    #[serde(default)]
    pub server: Server,
    /// The sites served.
    #[serde(rename = "tenant", default)]
    pub tenants: Vec<Tenant>,
    /// `[cluster]`: this node is one of a fleet sharing state through NATS JetStream
    /// (docs/fleet.md). Without it the host is a single node.
    #[serde(default)]
    pub cluster: Option<Cluster>,
    /// The directory relative paths are resolved against (the config file's directory).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The config file itself.
    #[serde(skip)]
    pub file: PathBuf,
}

/// `[cluster]`: the NATS servers a fleet shares and this node's name in it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// NATS server URLs (`nats://host:4222`); the client fails over between them.
    pub nats: Vec<String>,
    /// This node's name, unique in the fleet: letters, digits, `-` and `_` (it names the
    /// node's consumer and its events).
    pub node: String,
    /// A NATS credentials file (`.creds`: user JWT and NKey seed), relative to the config.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// Replicas of the fleet's buckets and stream (1 for a single NATS server, 3 for a
    /// cluster). Default 3, capped at the servers listed.
    #[serde(default)]
    pub replicas: Option<usize>,
    /// Seconds between full re-syncs of the config bucket (a watch can skip revisions).
    #[serde(default = "default_resync_secs")]
    pub resync_secs: u64,
}

fn default_resync_secs() -> u64 {
    60
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Where visitors connect (HTTP/1.1 and h2c).
    pub listen: SocketAddr,
    /// Where visitors connect over TLS (HTTP/2 and HTTP/1.1 by ALPN); each tenant's
    /// `tls_cert`/`tls_key` is chosen by SNI.
    pub tls_listen: Option<SocketAddr>,
    /// Optional admin listener: `/metrics`, `/healthz`, `/readyz`, and with `data_dir` the
    /// admin API (`/v1/...`).
    pub admin_listen: Option<SocketAddr>,
    /// The state store's directory (SQLite). When set, the store is the source of truth for
    /// tenants, plugins, rules and fragments: the config's `[[tenant]]` tables seed it on the
    /// first start and are not read again; the admin API changes it while the host serves.
    pub data_dir: Option<PathBuf>,
    /// The first operator token for the admin API; `VENEER_ADMIN_TOKEN` overrides it.
    pub admin_token: Option<String>,
    /// Secret for signing visitor cookies; `VENEER_COOKIE_SECRET` overrides it. At least 32
    /// bytes. When neither is set, a random secret is made at start (cookies then do not
    /// survive a restart, which is logged).
    pub cookie_secret: Option<String>,
    /// Compiled-plugin cache directory.
    pub cache_dir: PathBuf,
    /// Analytics events are appended here as JSON lines.
    pub analytics_log: Option<PathBuf>,
    /// The log is rotated past this size (`FILE.1`, `FILE.2`...; 0: never).
    pub analytics_max_bytes: u64,
    /// Rotated files kept; older ones are deleted, so the log is bounded.
    pub analytics_keep: u32,
    /// Days the ledger keeps exposures, impressions and conversions for reports (0: for ever).
    pub ledger_retention_days: u32,
    /// Upper bound on plugin instances alive at once (the instance pool's size).
    pub max_instances: u32,
    /// How long to wait for an origin's response head.
    pub origin_timeout_ms: u64,
    /// How long an origin's response body may send nothing between two reads before it is cut
    /// off (like nginx's `proxy_read_timeout`; long enough for event streams' heartbeats).
    pub origin_read_timeout_ms: u64,
    /// On SIGTERM or SIGINT: how long in-flight requests may take to finish before the host
    /// exits anyway. New connections are refused at once.
    pub shutdown_grace_ms: u64,
    /// Addresses (CIDR, e.g. `10.0.0.0/8`, or single addresses) of proxies in front of Veneer
    /// whose `X-Forwarded-For`, `X-Request-Id` and tenants' geo headers are believed. From any
    /// other peer they are replaced (forwarding, id) or ignored and removed (geo). Default none.
    pub trusted_proxies: Vec<String>,
    /// Addresses (CIDR) of Apple Mail Privacy Protection's image proxies: e-mail image hits
    /// from them are logged as `apple_mpp`, not counted as opens. Default none.
    pub apple_mpp_cidrs: Vec<String>,
    /// Open connections one client address may hold (0: no limit). Trusted proxies are exempt.
    pub max_connections_per_client: u32,
    /// How long a client may take to send a request's head (slow-header attacks).
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    pub idle_timeout_ms: u64,
    /// A connection whose client has taken none of the response for this long, while the host
    /// had bytes waiting to go, is closed: the client stopped reading (like nginx's
    /// `send_timeout`). Waiting on the origin or a plugin does not count.
    pub send_timeout_ms: u64,
    /// Largest request head, in bytes (431 past it; at least 8192).
    pub max_header_bytes: usize,
    /// Most header lines in a request (431 past it).
    pub max_headers: usize,
    /// A MaxMind-format country database: the client's address (through trusted proxies, the
    /// forwarded one) gives `visitor.country` when no trusted geo header does.
    pub geoip: Option<PathBuf>,
    /// Customer and visitor profiles kept in memory in front of the store.
    pub profile_cache_entries: usize,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            tls_listen: None,
            data_dir: None,
            admin_token: None,
            cookie_secret: None,
            cache_dir: PathBuf::from(".veneer-cache"),
            analytics_log: None,
            analytics_max_bytes: 256 << 20,
            analytics_keep: 5,
            ledger_retention_days: 400,
            max_instances: 1000,
            origin_timeout_ms: 10_000,
            origin_read_timeout_ms: 60_000,
            shutdown_grace_ms: 10_000,
            trusted_proxies: Vec::new(),
            apple_mpp_cidrs: Vec::new(),
            max_connections_per_client: 256,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
            max_header_bytes: 64 << 10,
            max_headers: 100,
            geoip: None,
            profile_cache_entries: crate::profile::DEFAULT_CACHE_ENTRIES,
        }
    }
}

/// `[[tenant]]`: one site.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Name used in logs, metrics and analytics.
    pub name: String,
    /// `Host` values served (port ignored).
    pub hosts: Vec<String>,
    /// Origin base URL (`http://host:port`).
    pub origin: String,
    /// Segments, experiments, campaigns and saved groups (JSON, see `veneer rules check`).
    pub rules: Option<PathBuf>,
    /// Content fragments: a TOML file of `[key] locale = "html"` tables.
    pub fragments: Option<PathBuf>,
    /// Locale used when a fragment has no entry for the visitor's.
    #[serde(default = "default_locale")]
    pub default_locale: String,
    /// Channel campaigns are evaluated for (`web`, `app`, `kiosk`, ...).
    #[serde(default = "default_channel")]
    pub channel: String,
    /// Request header holding the visitor's country, set by a trusted edge (e.g. `cf-ipcountry`).
    pub geo_header: Option<String>,
    /// PEM certificate chain served for this tenant's hosts on `tls_listen` (re-read when the
    /// file changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// HTTP methods this site serves; any other gets 405 with `Allow`.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Cookie holding consent (`analytics,personalization,marketing`); absent means `default_consent`.
    #[serde(default = "default_consent_cookie")]
    pub consent_cookie: String,
    /// Consent assumed when the visitor has not chosen.
    #[serde(default = "default_consent")]
    pub default_consent: Vec<String>,
    /// Limits for this tenant's plugins.
    #[serde(default)]
    pub limits: TenantLimits,
    /// The cache of origin responses (off unless `max_bytes` is set).
    #[serde(default)]
    pub cache: TenantCache,
    /// The plugin chain, in order.
    #[serde(rename = "plugin", default)]
    pub plugins: Vec<PluginConfig>,
    /// How a request's channel is found (the first rule that matches; otherwise `channel`),
    /// so one campaign reaches web, app and kiosk alike.
    #[serde(
        rename = "channel_rule",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub channel_rules: Vec<ChannelRule>,
    /// What counts as a conversion on this site (see README "Goals and reports").
    #[serde(rename = "goal", default, skip_serializing_if = "Vec::is_empty")]
    pub goals: Vec<Goal>,
    /// How a logged-in visitor is recognised (`[tenant.identity]`; the origin's
    /// `veneer-identify` response header always works).
    #[serde(default, skip_serializing_if = "Identity::is_default")]
    pub identity: Identity,
    /// Customer profiles, affinity, journey stages and carts (`[tenant.profile]`).
    #[serde(default, skip_serializing_if = "ProfileConfig::is_default")]
    pub profile: ProfileConfig,
    /// Images in e-mails drawn when the e-mail is opened (`[[tenant.email_slot]]`, served
    /// at `/_veneer/i/TOKEN/SLOT.png`; see README "Messages on every channel").
    #[serde(rename = "email_slot", default, skip_serializing_if = "Vec::is_empty")]
    pub email_slots: Vec<EmailSlot>,
}

/// `[[tenant.email_slot]]`: an image in an e-mail, drawn from an SVG template at each open
/// with the recipient's values, personalized by the tenant's plugins, rasterized to PNG.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmailSlot {
    /// The slot's name, as the image URL names it (`[a-z0-9_-]`, at most 64).
    pub name: String,
    /// The SVG template (relative to the config file).
    pub svg: PathBuf,
    /// The image served whenever the slot cannot be drawn (a bad or expired token, a plugin
    /// fault, over the time budget): PNG, GIF or JPEG.
    pub fallback: PathBuf,
    /// Where a click goes unless the drawn SVG's root names another (`data-href`): a path on
    /// the tenant's site or an absolute http(s) URL.
    #[serde(default = "default_slot_link")]
    pub link: String,
    /// Time allowed to draw the image before the fallback is served, in milliseconds.
    #[serde(default = "default_slot_budget_ms")]
    pub budget_ms: u64,
}

fn default_slot_link() -> String {
    "/".into()
}

fn default_slot_budget_ms() -> u64 {
    250
}

impl EmailSlot {
    /// Why this slot is unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Some("name: 1 to 64 of a-z, 0-9, - and _".into());
        }
        let ext = self
            .fallback
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if !matches!(ext.as_deref(), Some("png" | "gif" | "jpg" | "jpeg")) {
            return Some(
                "fallback: a .png, .gif or .jpg file (e-mail image proxies take nothing else)"
                    .into(),
            );
        }
        if !(self.link.starts_with('/')
            || self.link.starts_with("https://")
            || self.link.starts_with("http://"))
        {
            return Some("link: a path (/...) or an http(s) URL".into());
        }
        if self.budget_ms == 0 || self.budget_ms > 10_000 {
            return Some("budget_ms: 1 to 10000".into());
        }
        None
    }
}

/// `[tenant.identity]`: ways besides the origin's `veneer-identify` header to know which
/// customer a visitor is.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// A request header naming the customer, set by the tenant's own edge authentication;
    /// believed only from `trusted_proxies` (anyone can send a header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie holding a JWT (HS256) whose claim `jwt_claim` names the customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_cookie: Option<String>,
    /// The JWT's HMAC key (at least 32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    /// The claim naming the customer (default `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_claim: Option<String>,
}

impl Identity {
    fn is_default(&self) -> bool {
        *self == Identity::default()
    }

    fn problem(&self) -> Option<(&'static str, String)> {
        if let Some(h) = &self.header
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return Some(("header", format!("{h:?} is not a header name")));
        }
        match (&self.jwt_cookie, &self.jwt_secret) {
            (Some(_), None) => {
                return Some(("jwt_secret", "jwt_cookie needs jwt_secret".into()));
            }
            (None, Some(_)) => return Some(("jwt_cookie", "jwt_secret needs jwt_cookie".into())),
            (Some(_), Some(s)) if s.len() < 32 => {
                return Some(("jwt_secret", "must be at least 32 bytes".into()));
            }
            _ => {}
        }
        None
    }
}

/// `[tenant.profile]`: what is learned about visitors and customers, and how.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    /// Profiles for this tenant at all: `false` and nothing is read, linked or recorded (the
    /// origin's `veneer-identify` is still taken out of responses).
    pub enabled: bool,
    /// A category's affinity halves after this many hours without a view.
    pub affinity_half_life_hours: f64,
    /// A cart with items and no purchase for this long is abandoned.
    pub cart_abandoned_after_secs: u64,
    /// Which pages belong to which category (the first matching rule).
    #[serde(rename = "category", skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<CategoryRule>,
    /// Journey stages, nearest first: a visitor is in the furthest stage whose condition holds.
    #[serde(rename = "journey", skip_serializing_if = "Vec::is_empty")]
    pub journey: Vec<JourneyStage>,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        ProfileConfig {
            enabled: true,
            affinity_half_life_hours: 7.0 * 24.0,
            cart_abandoned_after_secs: 3600,
            categories: Vec::new(),
            journey: Vec::new(),
        }
    }
}

impl ProfileConfig {
    fn is_default(&self) -> bool {
        *self == ProfileConfig::default()
    }

    fn problem(&self) -> Option<(String, String)> {
        if !(self.affinity_half_life_hours.is_finite()
            && self.affinity_half_life_hours > 0.0
            && self.affinity_half_life_hours <= 24.0 * 3650.0)
        {
            return Some((
                "affinity_half_life_hours".into(),
                "must be above 0 and at most 87600 (ten years)".into(),
            ));
        }
        if self.cart_abandoned_after_secs == 0 {
            return Some((
                "cart_abandoned_after_secs".into(),
                "must be at least 1".into(),
            ));
        }
        for (i, c) in self.categories.iter().enumerate() {
            if !c.path.starts_with('/') {
                return Some((
                    format!("category[{i}].path"),
                    format!("{:?} must start with '/'", c.path),
                ));
            }
            if !name_ok(&c.name) {
                return Some((
                    format!("category[{i}].name"),
                    format!("{:?}: 1 to 64 letters, digits, '-', '_' or '.'", c.name),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, j) in self.journey.iter().enumerate() {
            if !name_ok(&j.stage) {
                return Some((
                    format!("journey[{i}].stage"),
                    format!("{:?}: 1 to 64 letters, digits, '-', '_' or '.'", j.stage),
                ));
            }
            if !seen.insert(&j.stage) {
                return Some((
                    format!("journey[{i}].stage"),
                    format!("{:?} is listed twice", j.stage),
                ));
            }
            if let Err(e) = veneer_rules::condition::Condition::compile(&j.when) {
                return Some((format!("journey[{i}].when"), e.to_string()));
            }
        }
        None
    }

    /// The affinity half-life in seconds.
    pub fn half_life_secs(&self) -> f64 {
        self.affinity_half_life_hours * 3600.0
    }

    /// The category of a page at `path`, if a rule names one.
    pub fn category(&self, path: &str) -> Option<&str> {
        self.categories
            .iter()
            .find(|c| glob(&c.path, path))
            .map(|c| c.name.as_str())
    }
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `[[tenant.profile.category]]`: pages at `path` (`*` matches any run of characters) are in
/// category `name`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CategoryRule {
    /// Path pattern.
    pub path: String,
    /// Category name (`affinity.NAME` in rules).
    pub name: String,
}

/// `[[tenant.profile.journey]]`: a stage and the condition (as in `rules.json` segments, over
/// the same attributes) that puts a visitor in it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JourneyStage {
    /// The stage's name (the `journey` attribute).
    pub stage: String,
    /// The condition; `{}` always holds.
    #[serde(default = "empty_condition")]
    pub when: serde_json::Value,
}

fn empty_condition() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// A request matching every condition given is on channel `name`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChannelRule {
    /// The channel (as campaigns' `channels` name it: `app`, `kiosk`...).
    pub name: String,
    /// A request header that must be present (e.g. `x-channel`)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// ...with this value (case-insensitive), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A path prefix (e.g. `/api/app/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// A media type the request's `Accept` names (e.g. `application/json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<String>,
}

impl ChannelRule {
    /// Why this rule is unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        if self.name.is_empty() || self.name.len() > 32 {
            return Some("name: 1 to 32 characters".into());
        }
        if self.header.is_none() && self.path_prefix.is_none() && self.accept.is_none() {
            return Some("give at least one of header, path_prefix, accept".into());
        }
        if self.value.is_some() && self.header.is_none() {
            return Some("value needs a header".into());
        }
        if let Some(h) = &self.header
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return Some(format!("header {h:?} is not a header name"));
        }
        None
    }

    /// Whether a request with these headers and path is on this channel.
    pub fn matches(&self, headers: &http::HeaderMap, path: &str) -> bool {
        let header_ok = self.header.as_deref().is_none_or(|h| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    self.value
                        .as_deref()
                        .is_none_or(|want| v.trim().eq_ignore_ascii_case(want))
                })
        });
        let path_ok = self
            .path_prefix
            .as_deref()
            .is_none_or(|p| path.starts_with(p));
        let accept_ok = self.accept.as_deref().is_none_or(|a| {
            headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains(&a.to_ascii_lowercase()))
        });
        header_ok && path_ok && accept_ok
    }
}

/// A conversion goal: reached by a request to a path, or by a named event sent to the beacon
/// (`POST /_veneer/event`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Goal {
    /// The goal's name in reports.
    pub name: String,
    /// A path pattern (`*` matches any run of characters): a successful GET of a matching
    /// path is a conversion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// An event name: a beacon event of that name is a conversion, with its `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The value of a path conversion (a beacon event brings its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The currency of the goal's values (ISO 4217); a beacon event in another currency is
    /// not counted for this goal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// The largest value one conversion may carry (a beacon event above it is not counted:
    /// anyone can post to the beacon, so a goal's sums should not take any number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value: Option<f64>,
}

impl Goal {
    /// Why this goal is unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Some(format!(
                "name {:?}: 1 to 64 letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        match (&self.path, &self.event) {
            (Some(_), Some(_)) | (None, None) => {
                return Some("give exactly one of `path` and `event`".into());
            }
            (Some(p), None) if !p.starts_with('/') => {
                return Some(format!("path {p:?} must start with '/'"));
            }
            _ => {}
        }
        if self.value.is_some_and(|v| !v.is_finite()) {
            return Some("value must be a finite number".into());
        }
        if self.max_value.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            return Some("max_value must be a number above 0".into());
        }
        if let Some(c) = &self.currency
            && !(c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Some(format!(
                "currency {c:?}: a 3-letter ISO 4217 code such as EUR"
            ));
        }
        None
    }

    /// Whether a request path reaches this (path) goal.
    pub fn matches_path(&self, path: &str) -> bool {
        self.path.as_deref().is_some_and(|p| glob(p, path))
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn default_locale() -> String {
    "en".into()
}
fn default_channel() -> String {
    "web".into()
}
fn default_consent_cookie() -> String {
    "veneer_consent".into()
}
fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        .map(str::to_owned)
        .to_vec()
}
fn default_consent() -> Vec<String> {
    vec![
        "analytics".into(),
        "personalization".into(),
        "marketing".into(),
    ]
}

/// `[tenant.cache]`: an in-memory cache of origin responses, before the plugins.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantCache {
    /// Byte budget (0: no cache).
    pub max_bytes: usize,
    /// Largest response stored.
    pub max_object_bytes: usize,
}

impl Default for TenantCache {
    fn default() -> Self {
        TenantCache {
            max_bytes: 0,
            max_object_bytes: 1 << 20,
        }
    }
}

/// `[tenant.limits]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    /// Time budget per plugin per request, in milliseconds.
    pub plugin_time_ms: u64,
    /// Memory per plugin instance, in MiB.
    pub plugin_memory_mb: u64,
    /// Largest JSON body buffered for JSON operations, in bytes.
    pub json_max_bytes: usize,
    /// HTML rules plus subscriptions one plugin's plan may hold (per element callback: the
    /// operations one call may return).
    pub plan_max_rules: usize,
    /// Bytes of HTML, text and attribute values one plan (or one element callback) may carry.
    pub plan_max_inserted_bytes: usize,
    /// Header edits (set and remove) one plan may make, for the request or the response.
    pub plan_max_header_edits: usize,
    /// Bytes of header names and values one plan may set.
    pub plan_max_header_bytes: usize,
    /// JSON operations one plan may hold.
    pub plan_max_json_ops: usize,
    /// Bytes of JSON pointers and values one plan may carry.
    pub plan_max_json_bytes: usize,
    /// While a body streams, the bytes one plugin's rules and callbacks insert may not exceed
    /// the body's bytes so far times this factor plus `rewrite_extra_bytes`; past that, the
    /// plugin is cut off for the rest of the body.
    pub rewrite_max_growth: f64,
    /// See `rewrite_max_growth`.
    pub rewrite_extra_bytes: u64,
    /// Consecutive faulted requests after which a plugin is skipped for a cool-down (0: never).
    pub breaker_faults: u32,
    /// How long a tripped plugin is skipped before one request tries it again.
    pub breaker_cooldown_ms: u64,
    /// Requests that may run this tenant's plugins at once (default: the number of cores, at
    /// least 2). A request that waits longer than 10 × `plugin_time_ms` for a turn is served
    /// without its plugins (counted as skipped, reason `tenant_busy`).
    pub plugin_concurrency: Option<usize>,
    /// Analytics events one plugin may record for one request (its own `track` calls and its
    /// `track-applied` rules'); past it they are left out and counted
    /// (`veneer_plugin_left_out_total{what="events"}`), so no tenant's plugin can fill the
    /// queues every tenant's events go through.
    pub plugin_events_per_request: u32,
    /// Log lines one plugin may write for one request; past it they are left out and counted.
    pub plugin_log_lines_per_request: u32,
    /// Requests whose answers each deterministic plugin keeps (keyed by URL, segments, device,
    /// locale and consents; see `export_plugin!(P, deterministic)`); 0: never kept.
    pub plugin_memo_entries: usize,
    /// Requests per second one client address may make to this tenant (token bucket; 0:
    /// no limit). Past it: 429 with `Retry-After`.
    pub requests_per_second_per_client: f64,
    /// How many requests a client may make at once before the rate applies.
    pub burst_per_client: f64,
    /// How long a client over its rate waits for its 429, in milliseconds. A client flooding
    /// over one connection then gets ten answers a second instead of tens of thousands, so
    /// the flood costs the host (and the other clients on it) almost nothing.
    pub refusal_delay_ms: u64,
    /// Requests this tenant may have in flight at once (0: no cap); past it, 503 with
    /// `Retry-After`, so one tenant's slow origin cannot hold every connection's worth of work.
    pub max_concurrent_requests: usize,
    /// Largest request body, in bytes (413 past it).
    pub max_body_bytes: u64,
    /// E-mail images and clicks drawn per minute for one recipient's token and slot (its send
    /// id, recipient and slot; token bucket, 0: no limit). Past it the image is the slot's fallback and the
    /// click goes to the slot's `link`, without running the plugins: a replayed token cannot
    /// make the host draw without end. Not per client address: Gmail fetches for many
    /// readers from few.
    pub email_draws_per_minute_per_token: f64,
    /// How long a request body may stall between two reads before the request fails (408).
    pub body_read_timeout_ms: u64,
}

impl Default for TenantLimits {
    fn default() -> Self {
        TenantLimits {
            plugin_time_ms: 50,
            plugin_memory_mb: 32,
            json_max_bytes: 1 << 20,
            plan_max_rules: 256,
            plan_max_inserted_bytes: 256 << 10,
            plan_max_header_edits: 64,
            plan_max_header_bytes: 16 << 10,
            plan_max_json_ops: 256,
            plan_max_json_bytes: 256 << 10,
            rewrite_max_growth: 2.0,
            rewrite_extra_bytes: 1 << 20,
            breaker_faults: 5,
            breaker_cooldown_ms: 30_000,
            plugin_concurrency: None,
            plugin_memo_entries: 4096,
            plugin_events_per_request: 256,
            plugin_log_lines_per_request: 64,
            requests_per_second_per_client: 100.0,
            burst_per_client: 200.0,
            refusal_delay_ms: 100,
            max_concurrent_requests: 10_000,
            max_body_bytes: 10 << 20,
            email_draws_per_minute_per_token: 60.0,
            body_read_timeout_ms: 30_000,
        }
    }
}

/// `[[tenant.plugin]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Name in logs and metrics.
    pub name: String,
    /// The `.wasm` component.
    pub path: PathBuf,
    /// Values the plugin reads with `config(key)`.
    #[serde(default)]
    pub params: HashMap<String, String>,
}

/// Largest memory limit a tenant may ask for; it sizes the instance pool's slots.
pub const MAX_PLUGIN_MEMORY_MB: u64 = 1024;

impl Config {
    /// Reads and validates a config file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            field: "(file)".into(),
            message: format!("cannot read: {e}"),
        })?;
        let base = file.parent().map(Path::to_owned).unwrap_or_default();
        Self::parse(&text, file, &base)
    }

    /// Parses and validates config text; relative paths resolve against `base_dir`.
    pub fn parse(text: &str, file: &Path, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            ConfigError {
                file: file.to_owned(),
                field: format!("line {line} column {col}"),
                message: e.message().to_owned(),
            }
        })?;
        config.base_dir = base_dir.to_owned();
        config.file = file.to_owned();
        config.validate()?;
        Ok(config)
    }

    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Resolves a path from the config against its directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }

    fn validate_cluster(&self, c: &Cluster) -> Result<(), ConfigError> {
        if c.nats.is_empty() {
            return Err(self.err(
                "cluster.nats",
                "at least one NATS server URL (e.g. \"nats://127.0.0.1:4222\")",
            ));
        }
        for (i, url) in c.nats.iter().enumerate() {
            let ok = url
                .parse::<http::Uri>()
                .ok()
                .filter(|u| matches!(u.scheme_str(), Some("nats" | "tls")))
                .and_then(|u| u.port_u16())
                .is_some();
            if !ok {
                return Err(self.err(
                    format!("cluster.nats[{i}]"),
                    format!(
                        "{url:?} is not a NATS URL with a port (e.g. \"nats://10.0.0.1:4222\")"
                    ),
                ));
            }
        }
        if c.node.is_empty()
            || c.node.len() > 64
            || !c
                .node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(self.err(
                "cluster.node",
                format!("{:?}: 1 to 64 letters, digits, `-` or `_`", c.node),
            ));
        }
        if let Some(creds) = &c.credentials
            && !self.resolve(creds).is_file()
        {
            return Err(self.err(
                "cluster.credentials",
                format!("{} does not exist", self.resolve(creds).display()),
            ));
        }
        if c.replicas.is_some_and(|r| !(1..=5).contains(&r)) {
            return Err(self.err("cluster.replicas", "1 to 5"));
        }
        if c.resync_secs == 0 {
            return Err(self.err("cluster.resync_secs", "must be at least 1"));
        }
        if self.server.data_dir.is_none() {
            return Err(self.err(
                "cluster",
                "a fleet node needs [server] data_dir: its local copy of the fleet's state and its event outbox live there",
            ));
        }
        if self.server.cookie_secret.is_none() {
            return Err(self.err(
                "server.cookie_secret",
                "a fleet node needs it, the same on every node, so a visitor's cookie is valid everywhere",
            ));
        }
        Ok(())
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.tenants.is_empty() && self.server.data_dir.is_none() {
            return Err(self.err(
                "tenant",
                "no [[tenant]] defined: the host would serve nothing",
            ));
        }
        if let Some(secret) = &self.server.cookie_secret
            && secret.len() < 32
        {
            return Err(self.err("server.cookie_secret", "must be at least 32 bytes"));
        }
        if let Some(token) = &self.server.admin_token
            && token.len() < 16
        {
            return Err(self.err("server.admin_token", "must be at least 16 characters"));
        }
        if let Some(c) = &self.cluster {
            self.validate_cluster(c)?;
        }
        if self.server.max_instances == 0 {
            return Err(self.err("server.max_instances", "must be at least 1"));
        }
        for (i, cidr) in self.server.apple_mpp_cidrs.iter().enumerate() {
            if parse_cidr(cidr).is_none() {
                return Err(self.err(
                    format!("server.apple_mpp_cidrs[{i}]"),
                    format!("{cidr:?} is not an address or CIDR block (e.g. \"17.58.0.0/16\")"),
                ));
            }
        }
        for (i, cidr) in self.server.trusted_proxies.iter().enumerate() {
            if parse_cidr(cidr).is_none() {
                return Err(self.err(
                    format!("server.trusted_proxies[{i}]"),
                    format!("{cidr:?} is not an address or CIDR block (e.g. \"10.0.0.0/8\")"),
                ));
            }
        }
        if let Some(db) = &self.server.geoip
            && !self.resolve(db).is_file()
        {
            return Err(self.err(
                "server.geoip",
                format!("no such file: {}", self.resolve(db).display()),
            ));
        }
        if self.server.idle_timeout_ms == 0 {
            return Err(self.err("server.idle_timeout_ms", "must be at least 1"));
        }
        if !(8192..=16 << 20).contains(&self.server.max_header_bytes) {
            return Err(self.err(
                "server.max_header_bytes",
                "must be between 8192 and 16777216",
            ));
        }
        if !(1..=10_000).contains(&self.server.max_headers) {
            return Err(self.err("server.max_headers", "must be between 1 and 10000"));
        }
        if self.server.header_read_timeout_ms == 0 {
            return Err(self.err("server.header_read_timeout_ms", "must be at least 1"));
        }
        if self.server.origin_read_timeout_ms == 0 {
            return Err(self.err("server.origin_read_timeout_ms", "must be at least 1"));
        }
        if self.server.send_timeout_ms == 0 {
            return Err(self.err("server.send_timeout_ms", "must be at least 1"));
        }
        if self.server.shutdown_grace_ms > 3_600_000 {
            return Err(self.err(
                "server.shutdown_grace_ms",
                "must be at most 3600000 (an hour)",
            ));
        }
        let mut hosts: BTreeMap<String, String> = BTreeMap::new();
        let mut names = BTreeMap::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let at = format!("tenant[{i}] ({})", t.name);
            if t.name.is_empty() {
                return Err(self.err(format!("tenant[{i}].name"), "must not be empty"));
            }
            if let Some(prev) = names.insert(t.name.clone(), i) {
                return Err(self.err(
                    format!("{at}.name"),
                    format!("duplicate tenant name, also tenant[{prev}]"),
                ));
            }
            if t.hosts.is_empty() {
                return Err(self.err(format!("{at}.hosts"), "list at least one Host name"));
            }
            for h in &t.hosts {
                let h = h.to_ascii_lowercase();
                if let Some(other) = hosts.insert(h.clone(), t.name.clone()) {
                    return Err(self.err(
                        format!("{at}.hosts"),
                        format!("host {h:?} is already served by tenant {other:?}"),
                    ));
                }
            }
            match t.origin.parse::<http::Uri>() {
                Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {}
                Ok(_) => {
                    return Err(self.err(
                        format!("{at}.origin"),
                        format!("{:?} must be an http:// URL with a host", t.origin),
                    ));
                }
                Err(e) => {
                    return Err(self.err(
                        format!("{at}.origin"),
                        format!("{:?} is not a URL: {e}", t.origin),
                    ));
                }
            }
            let l = &t.limits;
            if l.plugin_time_ms == 0 || l.plugin_time_ms > 10_000 {
                return Err(self.err(
                    format!("{at}.limits.plugin_time_ms"),
                    "must be between 1 and 10000",
                ));
            }
            if l.plugin_memo_entries > 1_000_000 {
                return Err(self.err(
                    format!("{at}.limits.plugin_memo_entries"),
                    "must be at most 1000000",
                ));
            }
            if l.plugin_concurrency.is_some_and(|n| n == 0 || n > 100_000) {
                return Err(self.err(
                    format!("{at}.limits.plugin_concurrency"),
                    "must be between 1 and 100000",
                ));
            }
            if !(l.requests_per_second_per_client >= 0.0
                && l.requests_per_second_per_client.is_finite())
            {
                return Err(self.err(
                    format!("{at}.limits.requests_per_second_per_client"),
                    "must be 0 (no limit) or more",
                ));
            }
            if l.requests_per_second_per_client > 0.0
                && !(l.burst_per_client >= 1.0 && l.burst_per_client.is_finite())
            {
                return Err(self.err(
                    format!("{at}.limits.burst_per_client"),
                    "must be at least 1 when a rate is set",
                ));
            }
            let draws = l.email_draws_per_minute_per_token;
            if !(draws == 0.0 || (1.0..=1_000_000.0).contains(&draws)) {
                return Err(self.err(
                    format!("{at}.limits.email_draws_per_minute_per_token"),
                    "must be 0 (no limit) or between 1 and 1000000",
                ));
            }
            if l.refusal_delay_ms > 10_000 {
                return Err(self.err(
                    format!("{at}.limits.refusal_delay_ms"),
                    "must be at most 10000 (a held refusal still holds a connection)",
                ));
            }
            if l.body_read_timeout_ms == 0 {
                return Err(self.err(
                    format!("{at}.limits.body_read_timeout_ms"),
                    "must be at least 1",
                ));
            }
            if !(0.0..=1000.0).contains(&l.rewrite_max_growth) {
                return Err(self.err(
                    format!("{at}.limits.rewrite_max_growth"),
                    "must be between 0 and 1000",
                ));
            }
            if l.plan_max_header_edits > 10_000 {
                // An http::HeaderMap holds at most 32768 entries; more panics.
                return Err(self.err(
                    format!("{at}.limits.plan_max_header_edits"),
                    "must be at most 10000",
                ));
            }
            if l.plugin_memory_mb == 0 || l.plugin_memory_mb > MAX_PLUGIN_MEMORY_MB {
                return Err(self.err(
                    format!("{at}.limits.plugin_memory_mb"),
                    format!("must be between 1 and {MAX_PLUGIN_MEMORY_MB}"),
                ));
            }
            for m in &t.methods {
                let token = !m.is_empty()
                    && m.len() <= 32
                    && m.bytes()
                        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
                if !token || m == "CONNECT" || m == "TRACE" {
                    return Err(self.err(
                        format!("{at}.methods"),
                        format!("{m:?}: use upper-case method names; CONNECT and TRACE are never proxied"),
                    ));
                }
            }
            for (j, slot) in t.email_slots.iter().enumerate() {
                if let Some(problem) = slot.problem() {
                    return Err(self.err(format!("{at}.email_slot[{j}]"), problem));
                }
                if t.email_slots[..j].iter().any(|o| o.name == slot.name) {
                    return Err(self.err(
                        format!("{at}.email_slot[{j}]"),
                        format!("name {:?} is used twice", slot.name),
                    ));
                }
            }
            for (j, r) in t.channel_rules.iter().enumerate() {
                if let Some(problem) = r.problem() {
                    return Err(self.err(format!("{at}.channel_rule[{j}]"), problem));
                }
            }
            for (j, g) in t.goals.iter().enumerate() {
                if let Some(problem) = g.problem() {
                    return Err(self.err(format!("{at}.goal[{j}]"), problem));
                }
            }
            if let Some((field, problem)) = t.identity.problem() {
                return Err(self.err(format!("{at}.identity.{field}"), problem));
            }
            if let Some((field, problem)) = t.profile.problem() {
                return Err(self.err(format!("{at}.profile.{field}"), problem));
            }
            for c in &t.default_consent {
                if !matches!(c.as_str(), "analytics" | "personalization" | "marketing") {
                    return Err(self.err(
                        format!("{at}.default_consent"),
                        format!("unknown consent {c:?}: use analytics, personalization, marketing"),
                    ));
                }
            }
            for (j, p) in t.plugins.iter().enumerate() {
                let path = self.resolve(&p.path);
                if !path.is_file() {
                    return Err(self.err(
                        format!("{at}.plugin[{j}] ({}).path", p.name),
                        format!("no such file: {}", path.display()),
                    ));
                }
            }
            if t.tls_cert.is_some() != t.tls_key.is_some() {
                return Err(self.err(format!("{at}.tls_cert"), "tls_cert and tls_key go together"));
            }
            for (field, path) in [
                ("rules", &t.rules),
                ("fragments", &t.fragments),
                ("tls_cert", &t.tls_cert),
                ("tls_key", &t.tls_key),
            ] {
                if let Some(path) = path {
                    let path = self.resolve(path);
                    if !path.is_file() {
                        return Err(self.err(
                            format!("{at}.{field}"),
                            format!("no such file: {}", path.display()),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

#[cfg(test)]
mod goal_tests {
    use super::glob;

    #[test]
    fn goal_paths_match_with_stars() {
        assert!(glob("/checkout/thank-you", "/checkout/thank-you"));
        assert!(!glob("/checkout/thank-you", "/checkout/thank-you/x"));
        assert!(glob("/checkout/*", "/checkout/thank-you"));
        assert!(glob("/order/*/done", "/order/42/done"));
        assert!(!glob("/order/*/done", "/order/42/done/again"));
        assert!(glob("*", "/anything"));
        assert!(!glob("/a*b", "/a"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("veneer.toml"), Path::new(".")).map_err(|e| e.to_string())
    }

    #[test]
    fn errors_name_file_field_and_problem() {
        let e = parse("[server]\nlisten = \"nope\"\n").expect_err("bad listen");
        assert!(
            e.starts_with("veneer.toml: line 2 column 10: invalid socket address"),
            "{e}"
        );
        let e = parse("[[tenant]]\nname = \"a\"\nhosts = [\"a\"]\norigin = \"ftp://x\"\n")
            .expect_err("bad origin");
        assert_eq!(
            e,
            "veneer.toml: tenant[0] (a).origin: \"ftp://x\" must be an http:// URL with a host"
        );
        let e = parse("[[tenant]]\nname = \"a\"\nhosts = [\"a\"]\norigin = \"http://x\"\n[[tenant.plugin]]\nname = \"p\"\npath = \"missing.wasm\"\n")
            .expect_err("missing plugin");
        assert!(
            e.starts_with("veneer.toml: tenant[0] (a).plugin[0] (p).path: no such file"),
            "{e}"
        );
        let e = parse("[[tenant]]\nname = \"a\"\nhost = [\"a\"]\n").expect_err("typo");
        assert!(e.contains("unknown field `host`"), "{e}");
        let e = parse("[[tenant]]\nname = \"a\"\nhosts = [\"a\"]\norigin = \"http://x\"\n[[tenant]]\nname = \"b\"\nhosts = [\"A\"]\norigin = \"http://y\"\n")
            .expect_err("dup host");
        assert!(
            e.contains("host \"a\" is already served by tenant \"a\""),
            "{e}"
        );
    }

    #[test]
    fn the_email_draw_rate_is_off_or_at_least_one_a_minute() {
        let tenant = |draws: &str| {
            parse(&format!(
                "[[tenant]]\nname = \"a\"\nhosts = [\"a\"]\norigin = \"http://x\"\n\
                 [tenant.limits]\nemail_draws_per_minute_per_token = {draws}\n"
            ))
        };
        // Under one a minute, a send's bucket would never hold a whole draw.
        for bad in ["0.5", "-1", "nan", "2000000"] {
            assert_eq!(
                tenant(bad).expect_err(bad),
                "veneer.toml: tenant[0] (a).limits.email_draws_per_minute_per_token: must be 0 \
                 (no limit) or between 1 and 1000000"
            );
        }
        for good in ["0", "1", "60.0"] {
            assert!(tenant(good).is_ok(), "{good}");
        }
        assert_eq!(
            tenant("0").expect("off").tenants[0]
                .limits
                .email_draws_per_minute_per_token,
            0.0
        );
    }
}
