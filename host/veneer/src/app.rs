//! Everything the proxy needs, built once from the config: tenants (origin, rules, fragments,
//! loaded plugins), the plugin runtime, the cookie signer, analytics, metrics and the origin
//! client.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use veneer_rules::RuleSet;

use crate::analytics::Analytics;
use crate::config::{self, Config, ConfigError};
use crate::metrics::Metrics;
use crate::plugin::{BreakerPolicy, Budget, Contract, Limits, Plugin, Runtime, RuntimeOptions};
use crate::visitor::CookieSigner;

/// Body type for requests to the origin.
pub type OriginBody = UnsyncBoxBody<bytes::Bytes, crate::proxy::BoxError>;

/// One site.
pub struct Tenant {
    /// Its config.
    pub config: config::Tenant,
    /// Origin scheme and authority.
    pub origin: http::uri::Authority,
    /// Segments, experiments, campaigns.
    pub rules: RuleSet,
    /// Content fragments.
    pub fragments: Fragments,
    /// The plugin chain.
    pub plugins: Vec<Plugin>,
    /// Kept answers of the chain's deterministic plugins, index for index (`None`: the
    /// plugin is called on every request).
    pub memos: Vec<Option<Arc<crate::proxy::Memo>>>,
    /// Methods this tenant serves (`methods`); others get 405.
    pub methods: Vec<http::Method>,
    /// Its name, shared (rate-limit keys).
    pub name: Arc<str>,
    /// Requests that may be inside this tenant's plugins at once (`plugin_concurrency`): a
    /// tenant whose plugins spin cannot take every worker thread from the others.
    pub plugin_slots: Arc<tokio::sync::Semaphore>,
    /// Requests this tenant may have in flight (`max_concurrent_requests`; `None`: no cap).
    pub request_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Cached origin responses (`[tenant.cache]`; `None`: off).
    pub cache: Option<Arc<crate::cache::Cache>>,
    /// Journey stages (`[[tenant.profile.journey]]`), nearest first, compiled.
    pub journey: Vec<(String, veneer_rules::Condition)>,
}

/// Content fragments: key → locale → HTML.
#[derive(Default)]
pub struct Fragments {
    by_key: HashMap<String, HashMap<String, String>>,
    default_locale: String,
}

impl Fragments {
    /// Parses a fragments TOML file: `[hero-new]` tables of `locale = "html"`.
    pub fn parse(text: &str, default_locale: &str) -> Result<Self, String> {
        let by_key: HashMap<String, HashMap<String, String>> =
            toml::from_str(text).map_err(|e| e.to_string())?;
        Ok(Self::from_map(by_key, default_locale))
    }

    /// Parses fragments as JSON, `{"hero-new": {"en": "html", ...}, ...}` (the admin API's form).
    pub fn parse_json(text: &str, default_locale: &str) -> Result<Self, String> {
        let by_key: HashMap<String, HashMap<String, String>> =
            serde_json::from_str(text).map_err(|e| e.to_string())?;
        Ok(Self::from_map(by_key, default_locale))
    }

    /// Fragments with no entries.
    pub fn empty(default_locale: &str) -> Self {
        Self::from_map(HashMap::new(), default_locale)
    }

    fn from_map(by_key: HashMap<String, HashMap<String, String>>, default_locale: &str) -> Self {
        let by_key = by_key
            .into_iter()
            .map(|(k, locales)| {
                (
                    k,
                    locales
                        .into_iter()
                        .map(|(l, v)| (l.to_ascii_lowercase(), v))
                        .collect(),
                )
            })
            .collect();
        Fragments {
            by_key,
            default_locale: default_locale.to_ascii_lowercase(),
        }
    }

    /// The fragment for `locale` (`nb-NO`), then its language (`nb`), then the default.
    pub fn get(&self, key: &str, locale: Option<&str>) -> Option<String> {
        let locales = self.by_key.get(key)?;
        if let Some(locale) = locale.map(str::to_ascii_lowercase) {
            if let Some(v) = locales.get(&locale) {
                return Some(v.clone());
            }
            let language = locale.split('-').next().unwrap_or(&locale);
            if let Some(v) = locales.get(language) {
                return Some(v.clone());
            }
        }
        locales.get(&self.default_locale).cloned()
    }
}

/// Tenants by lower-case host name.
pub type TenantMap = HashMap<String, Arc<Tenant>>;

/// The running host's shared state.
pub struct App {
    /// Tenants by lower-case host name: one immutable snapshot, swapped whole by the control
    /// plane, so a request sees one version of its tenant from start to end.
    pub tenants: arc_swap::ArcSwap<TenantMap>,
    /// Signs visitor cookies.
    pub signer: CookieSigner,
    /// Event queue.
    pub analytics: Analytics,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Pooled origin client.
    pub client: Client<HttpConnector, OriginBody>,
    /// How long to wait for an origin's response head.
    pub origin_timeout: Duration,
    /// How long an origin's response body may stall between two reads.
    pub origin_read_timeout: Duration,
    /// Proxies whose forwarding headers are believed (`[server] trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Open connections per client address.
    pub connections: crate::limits::ConnectionLimiter,
    /// Requests per client address per tenant.
    pub rates: crate::limits::RateLimiter,
    /// Per-visitor rate of beacon events.
    pub event_rates: crate::limits::RateLimiter<(Arc<str>, String)>,
    /// Rate of e-mail images and clicks drawn per recipient token and slot (tenant, key).
    pub email_draws: crate::limits::RateLimiter<(Arc<str>, String)>,
    /// Bounds the log lines for refused requests (a flood must not become a log flood).
    pub refusal_log: crate::limits::LogBudget,
    /// Listener settings: idle timeout, head size and header count.
    pub server: config::Server,
    /// Country by client address (`[server] geoip`).
    pub geo: Option<crate::geo::GeoDb>,
    /// Keeps the engine and its ticker alive.
    pub runtime: Arc<Runtime>,
    /// Relative paths (certificates) resolve against the config's directory.
    pub base_dir: std::path::PathBuf,
    /// Exposures and conversions for reports (`data_dir/ledger.db`; none without a data_dir).
    pub ledger: Option<Arc<crate::ledger::Ledger>>,
    /// Customer and visitor profiles (`data_dir/profiles.db`; in memory only without one).
    pub profiles: Arc<crate::profile::Profiles>,
    /// A development host (`veneer dev`): the visitor's settings come from query parameters
    /// ([`crate::preview::DEV_PARAMS`]) without a signed link. Never set from a config file.
    pub dev: bool,
    /// Plugin faults of the messages `veneer render` is rendering, by request id (each
    /// message lists its own faults; requests from clients are never in it).
    pub message_faults: dashmap::DashMap<String, Vec<String>>,
    /// Open-time e-mail images: Apple's proxy addresses, fonts, drawn images, slot files.
    pub email: crate::email::EmailState,
}

impl App {
    /// Whether `ip` is one of the trusted proxies.
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// Builds the host from a validated config. Must run inside a tokio runtime (analytics).
    pub fn build(config: &Config) -> anyhow::Result<App> {
        Self::build_with(config, true)
    }

    /// Like [`App::build`]; without `load_tenants` the config's tenants only size the plugin
    /// pool and nothing is served until the control plane swaps tenants in.
    pub fn build_with(config: &Config, load_tenants: bool) -> anyhow::Result<App> {
        let metrics = Arc::new(Metrics::default());
        let max_memory = config
            .tenants
            .iter()
            .map(|t| t.limits.plugin_memory_mb)
            .max()
            .unwrap_or(32);
        let runtime = Arc::new(Runtime::new(&RuntimeOptions {
            cache_dir: config.resolve(&config.server.cache_dir),
            max_memory_bytes: usize::try_from(max_memory << 20).unwrap_or(usize::MAX),
            max_instances: config.server.max_instances,
        })?);
        let geo = match &config.server.geoip {
            Some(path) => {
                let db = crate::geo::GeoDb::open(&config.resolve(path))
                    .map_err(|e| err(config, "server.geoip".into(), format!("{e:#}")))?;
                tracing::info!(kind = db.kind(), "geoip database loaded");
                Some(db)
            }
            None => None,
        };
        let mut tenants = HashMap::new();
        let mut per_contract: HashMap<String, u64> = HashMap::new();
        for (i, t) in config.tenants.iter().enumerate() {
            if !load_tenants {
                break;
            }
            let tenant = Arc::new(load_tenant(config, i, t, &runtime)?);
            for p in &tenant.plugins {
                tracing::info!(tenant = %t.name, plugin = p.name(), contract = p.built_for(), "plugin loaded");
                *per_contract.entry(p.built_for().to_owned()).or_default() += 1;
            }
            for host in &t.hosts {
                tenants.insert(host.to_ascii_lowercase(), tenant.clone());
            }
        }
        // Every supported version is listed, at 0 when unused, so an operator sees both what
        // this host can run and what its tenants deployed before retiring a version.
        for version in plugins_loaded_labels(&per_contract) {
            let n = per_contract.get(&version).copied().unwrap_or(0);
            metrics.add("veneer_plugins_loaded", &[("contract", &version)], n);
        }
        let secret = match std::env::var("VENEER_COOKIE_SECRET")
            .ok()
            .or_else(|| config.server.cookie_secret.clone())
        {
            Some(s) => s.into_bytes(),
            None => {
                tracing::warn!(
                    "no cookie_secret configured: using a random one, so visitor cookies will not survive a restart"
                );
                let mut key = uuid::Uuid::new_v4().as_bytes().to_vec();
                key.extend(uuid::Uuid::new_v4().as_bytes());
                key
            }
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let ledger = match &config.server.data_dir {
            Some(dir) => Some(Arc::new(
                crate::ledger::Ledger::open(
                    &config.resolve(dir),
                    metrics.clone(),
                    config.server.ledger_retention_days,
                )
                .map_err(|e| err(config, "server.data_dir".into(), format!("{e:#}")))?,
            )),
            None => None,
        };
        let entries = config.server.profile_cache_entries;
        let profiles = Arc::new(match &config.server.data_dir {
            Some(dir) => {
                crate::profile::Profiles::open(&config.resolve(dir), entries, metrics.clone())
                    .map_err(|e| err(config, "server.data_dir".into(), format!("{e:#}")))?
            }
            None => crate::profile::Profiles::in_memory(entries, metrics.clone()),
        });
        Ok(App {
            tenants: arc_swap::ArcSwap::from_pointee(tenants),
            signer: CookieSigner::new(&secret),
            analytics: Analytics::start(
                config
                    .server
                    .analytics_log
                    .as_ref()
                    .map(|p| config.resolve(p)),
                crate::analytics::Rotation {
                    max_bytes: config.server.analytics_max_bytes,
                    keep: config.server.analytics_keep,
                },
                metrics.clone(),
            ),
            metrics,
            client,
            origin_timeout: Duration::from_millis(config.server.origin_timeout_ms),
            origin_read_timeout: Duration::from_millis(config.server.origin_read_timeout_ms),
            trusted_proxies: config
                .server
                .trusted_proxies
                .iter()
                .filter_map(|c| config::parse_cidr(c))
                .collect(),
            connections: crate::limits::ConnectionLimiter::new(
                config.server.max_connections_per_client,
            ),
            rates: crate::limits::RateLimiter::default(),
            event_rates: crate::limits::RateLimiter::default(),
            email_draws: crate::limits::RateLimiter::default(),
            refusal_log: crate::limits::LogBudget::new(20),
            server: config.server.clone(),
            geo,
            runtime,
            base_dir: config.base_dir.clone(),
            ledger,
            profiles,
            dev: false,
            message_faults: dashmap::DashMap::new(),
            email: crate::email::EmailState::new(
                config
                    .server
                    .apple_mpp_cidrs
                    .iter()
                    .filter_map(|c| config::parse_cidr(c))
                    .collect(),
            ),
        })
    }

    /// The tenant serving `host` (port ignored).
    pub fn tenant(&self, host: &str) -> Option<Arc<Tenant>> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                name
            }
            _ => host,
        };
        self.tenants.load().get(&name.to_ascii_lowercase()).cloned()
    }

    /// How long a client may take to send a request's head (or a TLS handshake).
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.server.header_read_timeout_ms)
    }

    /// `path` resolved against the config's directory.
    pub fn resolve(&self, path: &Path) -> std::path::PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The tenant named `name`, if it is being served.
    pub fn tenant_named(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenants
            .load()
            .values()
            .find(|t| &*t.name == name)
            .cloned()
    }

    /// Serves `new` in place of the tenant named `name` (or stops serving it, with `None`).
    /// Requests that already hold the old snapshot finish with it. Callers serialize changes.
    pub fn swap_tenant(&self, name: &str, new: Option<Arc<Tenant>>) {
        let mut map: TenantMap = (**self.tenants.load()).clone();
        map.retain(|_, t| &*t.name != name);
        if let Some(t) = new {
            for p in &t.plugins {
                self.metrics.set(
                    "veneer_plugin_active_version",
                    &[("tenant", name), ("plugin", p.name())],
                    p.version().unwrap_or(0),
                );
            }
            for host in &t.config.hosts {
                map.insert(host.to_ascii_lowercase(), t.clone());
            }
        }
        // Count each tenant once (a tenant appears under each of its hosts).
        let mut per_contract: HashMap<String, u64> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for t in map.values() {
            if seen.insert(t.name.clone()) {
                for p in &t.plugins {
                    *per_contract.entry(p.built_for().to_owned()).or_default() += 1;
                }
            }
        }
        for version in plugins_loaded_labels(&per_contract) {
            let n = per_contract.get(&version).copied().unwrap_or(0);
            self.metrics
                .set("veneer_plugins_loaded", &[("contract", &version)], n);
        }
        self.tenants.store(Arc::new(map));
    }
}

fn err(config: &Config, field: String, message: String) -> anyhow::Error {
    ConfigError {
        file: config.file.clone(),
        field,
        message,
    }
    .into()
}

/// The `contract` labels of `veneer_plugins_loaded`: every released version (at 0 when
/// unused), so an operator sees what this host runs and what its tenants still deploy, and
/// any other version a component was built for (a newer compatible minor).
fn plugins_loaded_labels(counts: &HashMap<String, u64>) -> Vec<String> {
    let mut labels: Vec<String> = Contract::RELEASES.iter().map(|v| (*v).to_owned()).collect();
    let mut others: Vec<&String> = counts.keys().filter(|v| !labels.contains(v)).collect();
    others.sort();
    labels.extend(others.into_iter().cloned());
    labels
}

/// Loads tenant `t` (entry `i` of `config`), its plugins compiled and linked.
pub fn load_tenant(
    config: &Config,
    i: usize,
    t: &config::Tenant,
    runtime: &Runtime,
) -> anyhow::Result<Tenant> {
    let at = format!("tenant[{i}] ({})", t.name);
    let origin: http::Uri = t
        .origin
        .parse()
        .map_err(|e| err(config, format!("{at}.origin"), format!("{e}")))?;
    let origin = origin
        .authority()
        .cloned()
        .ok_or_else(|| err(config, format!("{at}.origin"), "no host".into()))?;
    let rules = match &t.rules {
        None => RuleSet::default(),
        Some(path) => {
            let path = config.resolve(path);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            RuleSet::from_json_str(&text).map_err(|errors| {
                let list: Vec<String> = errors
                    .iter()
                    .map(|e| format!("  {}: {e}", path.display()))
                    .collect();
                err(
                    config,
                    format!("{at}.rules"),
                    format!(
                        "{} error(s) in {}:\n{}",
                        errors.len(),
                        path.display(),
                        list.join("\n")
                    ),
                )
            })?
        }
    };
    let fragments = match &t.fragments {
        None => Fragments {
            default_locale: t.default_locale.clone(),
            ..Fragments::default()
        },
        Some(path) => {
            let path = config.resolve(path);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Fragments::parse(&text, &t.default_locale).map_err(|e| {
                err(
                    config,
                    format!("{at}.fragments"),
                    format!("{}: {e}", path.display()),
                )
            })?
        }
    };
    // Slot files are read again when they change (so a fixed file needs no restart), but a
    // missing or unusable one is a config error now, named by its field.
    for (j, slot) in t.email_slots.iter().enumerate() {
        let field = |f: &str| format!("{at}.email_slot[{j}] ({}).{f}", slot.name);
        let svg = config.resolve(&slot.svg);
        let text = std::fs::read(&svg)
            .map_err(|e| err(config, field("svg"), format!("{}: {e}", svg.display())))?;
        if std::str::from_utf8(&text).is_err() {
            return Err(err(
                config,
                field("svg"),
                format!("{}: not UTF-8 text", svg.display()),
            ));
        }
        let fallback = config.resolve(&slot.fallback);
        let image = std::fs::read(&fallback).map_err(|e| {
            err(
                config,
                field("fallback"),
                format!("{}: {e}", fallback.display()),
            )
        })?;
        if crate::email::image_type(&image).is_none() {
            return Err(err(
                config,
                field("fallback"),
                format!("{}: not a PNG, GIF or JPEG image", fallback.display()),
            ));
        }
    }
    let limits = plugin_limits(&t.limits);
    let plugins = t
        .plugins
        .iter()
        .enumerate()
        .map(|(j, p)| {
            runtime
                .load(&p.name, &config.resolve(&p.path), p.params.clone(), limits)
                .map_err(|e| {
                    err(
                        config,
                        format!("{at}.plugin[{j}] ({}).path", p.name),
                        format!("{e:#}"),
                    )
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(assemble(t.clone(), origin, rules, fragments, plugins))
}

/// The engine limits for a tenant's `[tenant.limits]`.
pub fn plugin_limits(l: &config::TenantLimits) -> Limits {
    Limits {
        time_budget: Duration::from_millis(l.plugin_time_ms),
        memory_bytes: usize::try_from(l.plugin_memory_mb << 20).unwrap_or(usize::MAX),
        budget: Budget {
            max_rules: l.plan_max_rules,
            max_inserted_bytes: l.plan_max_inserted_bytes,
            max_header_edits: l.plan_max_header_edits,
            max_header_bytes: l.plan_max_header_bytes,
            max_json_ops: l.plan_max_json_ops,
            max_json_bytes: l.plan_max_json_bytes,
            max_growth: l.rewrite_max_growth,
            extra_bytes: l.rewrite_extra_bytes,
        },
        breaker: BreakerPolicy {
            faults: l.breaker_faults,
            cooldown: Duration::from_millis(l.breaker_cooldown_ms),
        },
        events_per_request: l.plugin_events_per_request,
        log_lines_per_request: l.plugin_log_lines_per_request,
    }
}

/// A tenant from its parts (already loaded and validated).
pub fn assemble(
    t: config::Tenant,
    origin: http::uri::Authority,
    rules: RuleSet,
    fragments: Fragments,
    plugins: Vec<Plugin>,
) -> Tenant {
    Tenant {
        name: Arc::from(t.name.as_str()),
        methods: t
            .methods
            .iter()
            .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
            .collect(),
        plugin_slots: Arc::new(tokio::sync::Semaphore::new(
            t.limits
                .plugin_concurrency
                .unwrap_or_else(default_plugin_concurrency),
        )),
        cache: (t.cache.max_bytes > 0).then(|| {
            Arc::new(crate::cache::Cache::new(
                t.cache.max_bytes,
                t.cache.max_object_bytes,
            ))
        }),
        request_slots: (t.limits.max_concurrent_requests > 0).then(|| {
            Arc::new(tokio::sync::Semaphore::new(
                t.limits.max_concurrent_requests,
            ))
        }),
        journey: t
            .profile
            .journey
            .iter()
            .filter_map(|j| {
                Some((
                    j.stage.clone(),
                    veneer_rules::Condition::compile(&j.when).ok()?,
                ))
            })
            .collect(),
        memos: plugins
            .iter()
            .map(|p| {
                (p.deterministic() && t.limits.plugin_memo_entries > 0)
                    .then(|| Arc::new(crate::proxy::Memo::new(t.limits.plugin_memo_entries)))
            })
            .collect(),
        config: t,
        origin,
        rules,
        fragments,
        plugins,
    }
}

/// As many as there are cores (at least 2): a call past its first ticks runs at most half a
/// worker's time, so one tenant's plugins can take at most half the machine.
fn default_plugin_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// Loads the config file and builds the app.
pub fn from_file(path: &Path) -> anyhow::Result<App> {
    let config = Config::load(path)?;
    App::build(&config)
}
