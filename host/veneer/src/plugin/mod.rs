//! The plugin runtime: wasmtime behind one boundary.
//!
//! Organisation, in the order things happen:
//! - [`Runtime::new`] builds the one `Engine` (component model, pooling allocator, epoch
//!   interruption), its `Linker` with Veneer's host interfaces and an empty WASI context, and
//!   starts the single epoch ticker thread that bounds every plugin call in the process.
//! - [`Runtime::load`] compiles a plugin once, or loads its precompiled form from the on-disk
//!   cache (keyed by the plugin's content hash and the engine's compatibility hash, so a
//!   restart never recompiles), and links it once into an `InstancePre`.
//! - [`Plugin::instantiate`] gives each request a fresh `Store` and instance from the pool;
//!   [`Instance`]'s hook methods call into it under a per-request time budget and the
//!   tenant's memory limit, and turn every failure into a [`PluginFault`].
//!
//! The engine runs in async mode although plugin calls are short and never wait: the WASI
//! implementation a Rust guest needs (its panic message goes to stderr, for one) is only safe
//! to call from inside tokio in its async form. `on-request`/`on-response` are awaited;
//! `on-element`/`on-text` run inside lol-html's synchronous handlers and are polled once with
//! a no-op waker. Host functions never pend, so a call completes in that one poll; one that
//! does not is treated as a fault.
//!
//! Host services a plugin imports (content, analytics, campaigns, config, log) are reached
//! through [`HostServices`], which the proxy implements; this module knows nothing of tenants.
//!
//! Contract versions: every released version of `veneer:plugin` is linked side by side, one
//! bindings module each ([`v0_1`], [`v0_2`]), converting to and from the host's own
//! [`model`]. [`Runtime::load`] reads which version a component targets from its
//! `veneer:plugin/hooks@X.Y.Z` export and refuses one this host does not support with a
//! message naming its version and the supported ones, at load, never per request.

pub mod breaker;
pub mod budget;
mod lent;
pub mod model;
mod stderr;
mod v0_1;
mod v0_2;
mod watched;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use breaker::{Admission, BreakerPolicy, Transition};
pub use budget::Budget;
pub use lent::ElementView;
pub use model::{
    Assignment, Campaign, Consent, DeviceClass, ElementInfo, HeaderEdits, HtmlOp, HtmlRule, JsonOp,
    Level, RequestAction, RequestHead, ResponseHead, ResponsePlan, RuleOptions, Subscription,
    SyntheticResponse, Visitor,
};

/// A version of the plugin contract this host links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contract {
    /// `veneer:plugin@0.1.0`: records in, records out (frozen).
    V0_1,
    /// `veneer:plugin@0.2.x` (0.2.2 today; 0.2.0 and 0.2.1 components link by semver): resources with
    /// methods, grows by adding functions.
    V0_2,
}

impl Contract {
    /// Every supported version, oldest first.
    pub const ALL: [Contract; 2] = [Contract::V0_1, Contract::V0_2];

    /// The version this host implements, e.g. `0.2.2`.
    pub fn version(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.2",
        }
    }

    /// Every released contract version this host runs, oldest first: what
    /// `veneer_plugins_loaded` lists (at 0 when no tenant deploys it).
    pub const RELEASES: [&'static str; 4] = ["0.1.0", "0.2.0", "0.2.1", "0.2.2"];

    /// The supported versions as a list for messages: `0.1.0, 0.2.2`.
    pub fn supported_list() -> String {
        Contract::ALL.map(Contract::version).join(", ")
    }

    /// The supported contract a component built for `version` links against: same major
    /// version, and for 0.x the same minor (semver), at or below what the host implements.
    fn for_version(version: &semver::Version) -> Option<Contract> {
        Contract::ALL.into_iter().find(|c| {
            let ours = semver::Version::parse(c.version()).unwrap_or(semver::Version::new(0, 0, 0));
            ours.major == version.major && (ours.major > 0 || ours.minor == version.minor)
        })
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "veneer:plugin@{}", self.version())
    }
}

/// The prefix of the one export every plugin has, whatever its contract version.
const HOOKS_EXPORT: &str = "veneer:plugin/hooks@";

/// What the host provides to the plugins of one request. Implementations must not block:
/// in-memory lookups and channel sends only, because plugin calls run synchronously.
pub trait HostServices: Send + Sync {
    /// A content fragment for the visitor's locale.
    fn fragment(&self, key: &str) -> Option<String>;
    /// Records an analytics event from `plugin`.
    fn track(&self, plugin: &str, name: &str, properties: Vec<(String, String)>);
    /// Campaigns live for this visitor now, highest priority first.
    fn active_campaigns(&self) -> &[Arc<Campaign>];
    /// The visitor's (sticky) assignment in an experiment.
    fn assign(&self, experiment: &str) -> Option<Assignment>;
    /// `plugin`'s circuit breaker opened or closed (log and metrics).
    fn breaker_changed(&self, plugin: &str, transition: Transition);
    /// `plugin` shows the visitor campaign `campaign_id` in this response.
    fn impression(&self, plugin: &str, campaign_id: &str);
    /// The instant the request is evaluated at, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// The request id, for log lines.
    fn request_id(&self) -> &str;
    /// The tenant name, for log lines.
    fn tenant(&self) -> &str;
    /// `plugin` went over its per-request allowance: `events` analytics events and
    /// `log_lines` log lines were left out (for metrics and one log line).
    fn left_out(&self, _plugin: &str, _events: u32, _log_lines: u32) {}
    /// The attributes the segment rules saw (with the visitor's profile: `customer`,
    /// `affinity`, `journey`, `cart`, `purchases`), for the `profile` interface.
    fn attributes(&self) -> Option<&serde_json::Value> {
        None
    }
}

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where compiled plugins are cached.
    pub cache_dir: PathBuf,
    /// Upper bound for any tenant's per-instance memory limit (sizes the pool's slots).
    pub max_memory_bytes: usize,
    /// Plugin instances alive at once, across all requests (the pool's size).
    pub max_instances: u32,
}

/// Per-plugin limits, from the tenant's config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock budget for all of one request's calls into the plugin.
    pub time_budget: Duration,
    /// Linear memory an instance may grow to.
    pub memory_bytes: usize,
    /// What its plans may ask of the host.
    pub budget: Budget,
    /// When to skip it after repeated faults.
    pub breaker: BreakerPolicy,
    /// Analytics events one request's instance may record (its own and `track-applied`
    /// rules'); past it they are left out and counted.
    pub events_per_request: u32,
    /// Log lines one request's instance may write; past it they are left out and counted.
    pub log_lines_per_request: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time_budget: Duration::from_millis(50),
            memory_bytes: 32 << 20,
            budget: Budget::default(),
            breaker: BreakerPolicy::default(),
            events_per_request: 256,
            log_lines_per_request: 64,
        }
    }
}

/// Why a plugin's contribution to a response was dropped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginFault {
    /// The plugin trapped (a panic, an unreachable, an out-of-bounds access...).
    #[error("trap: {0}")]
    Trap(String),
    /// The plugin used up its time budget.
    #[error("deadline exceeded ({0:?} budget)")]
    Deadline(Duration),
    /// One element or text callback ran longer than a streaming call may
    /// ([`STREAMING_CALL_LIMIT`]): it cannot yield, so it holds a worker thread while it runs.
    #[error("a streaming callback used more than {0:?} of CPU in one call")]
    StreamingCall(Duration),
    /// The plugin tried to grow memory beyond its limit.
    #[error("memory limit of {0} bytes exceeded")]
    Memory(usize),
    /// No instance could be created (pool exhausted, start-up trap).
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// The plugin returned something the host cannot apply (an invalid selector, ...).
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
    /// The plugin asked the host for more work than its tenant's budget allows.
    #[error("over budget: {0}")]
    Budget(String),
    /// An earlier call in this request faulted; the instance is not called again.
    #[error("instance already faulted")]
    AlreadyFaulted,
}

impl PluginFault {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginFault::Trap(_) => "trap",
            PluginFault::Deadline(_) | PluginFault::StreamingCall(_) => "deadline",
            PluginFault::Memory(_) => "memory",
            PluginFault::Instantiate(_) => "instantiate",
            PluginFault::InvalidPlan(_) => "invalid_plan",
            PluginFault::Budget(_) => "budget",
            PluginFault::AlreadyFaulted => "already_faulted",
        }
    }
}

/// The engine, linker and epoch ticker shared by every tenant.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StoreState>,
    cache_dir: PathBuf,
    ticker_stop: Arc<AtomicBool>,
    max_memory_bytes: usize,
    /// Components linked so far, by the SHA-256 of their bytes: tenants deploying the same
    /// component share its code and linking (one copy in memory however many load it); an
    /// entry lives as long as some loaded plugin holds it.
    linked: std::sync::Mutex<HashMap<[u8; 32], Weak<Linked>>>,
}

/// A component compiled and linked against its contract version's bindings.
struct Linked {
    pre: Pre,
    contract: Contract,
    /// The exact version the component was built for (0.2.0, 0.2.1 and 0.2.2 share bindings).
    built_for: String,
    /// It declares itself deterministic (see [`declares_deterministic`]).
    deterministic: bool,
}

/// How often the epoch advances; deadlines are whole ticks.
const TICK: Duration = Duration::from_millis(1);

/// The longest one `on-element` or `on-text` call may run. Awaited hooks yield to the
/// scheduler every tick; a streaming callback runs inside the body's poll and cannot, so
/// until it returns its worker thread serves nobody else. A callback is meant to take
/// microseconds; one running this long is stopped as a fault instead of holding the worker
/// for the rest of the request's budget.
pub const STREAMING_CALL_LIMIT: Duration = Duration::from_millis(2);

/// A streaming callback in progress, for its CPU limit.
#[derive(Debug, Clone, Copy)]
struct StreamingCall {
    /// When it started.
    since: Instant,
    /// The thread's CPU time at its first epoch tick.
    first_tick: Option<Duration>,
}

/// CPU time the calling thread has used.
#[cfg(unix)]
#[expect(
    unsafe_code,
    reason = "reading the thread's CPU clock; see the SAFETY note"
)]
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a constant the platform
    // defines; clock_gettime writes only into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Without a per-thread CPU clock the wall clock stands in (it also counts preemption).
#[cfg(not(unix))]
fn thread_cpu_time() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

impl Runtime {
    /// Builds the engine and starts the epoch ticker.
    pub fn new(options: &RuntimeOptions) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(options.max_instances)
            .total_core_instances(options.max_instances.saturating_mul(4))
            .total_memories(options.max_instances.saturating_mul(2))
            .total_tables(options.max_instances.saturating_mul(4))
            .total_stacks(options.max_instances)
            .max_core_instances_per_component(16)
            .max_memories_per_component(2)
            .max_tables_per_component(8)
            .max_memory_size(options.max_memory_bytes)
            // Measured with the HTTP benchmark: with pagemap scanning only dirty pages are
            // reset, so keeping 1 MiB resident (a Rust guest's stack and first heap pages)
            // avoids madvise and its cross-core TLB shootdowns: hero plugin 17k → 24k req/s.
            // 4 MiB was no better.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(16 << 10)
            .async_stack_keep_resident(256 << 10)
            // Resetting a slot with madvise costs a TLB shootdown across cores; batching the
            // decommits and, where the kernel has it, resetting only dirty pages keeps that
            // from dominating short requests.
            .decommit_batch_size(32)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = wt(Engine::new(&config)).context("creating the wasmtime engine")?;

        let mut linker: Linker<StoreState> = Linker::new(&engine);
        wt(wasmtime_wasi::p2::add_to_linker_async(&mut linker)).context("linking WASI")?;
        // Every supported contract version side by side: their interfaces carry the version
        // in their names (`veneer:plugin/content@0.1.0`), so they never clash.
        wt(v0_1::add_to_linker(&mut linker)).context("linking veneer:plugin@0.1.0")?;
        wt(v0_2::add_to_linker(&mut linker)).context("linking veneer:plugin@0.2.2")?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (stop, ticker_engine) = (ticker_stop.clone(), engine.clone());
        std::thread::Builder::new()
            .name("veneer-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .context("starting the epoch ticker")?;

        std::fs::create_dir_all(&options.cache_dir).with_context(|| {
            format!(
                "creating plugin cache directory {}",
                options.cache_dir.display()
            )
        })?;
        Ok(Runtime {
            engine,
            linker,
            cache_dir: options.cache_dir.clone(),
            ticker_stop,
            max_memory_bytes: options.max_memory_bytes,
            linked: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The largest per-instance memory limit this runtime's pool can give a plugin.
    pub fn max_memory_bytes(&self) -> usize {
        self.max_memory_bytes
    }

    /// Loads a plugin from a `.wasm` component file.
    pub fn load(
        &self,
        name: &str,
        path: &Path,
        params: HashMap<String, String>,
        limits: Limits,
    ) -> anyhow::Result<Plugin> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading plugin {}", path.display()))?;
        self.load_bytes(name, &bytes, params, limits)
            .with_context(|| format!("plugin {}", path.display()))
    }

    /// Loads a plugin from the bytes of a component: compiles it (or takes it from the cache),
    /// finds the contract version it targets and links it against that version's bindings.
    pub fn load_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        params: HashMap<String, String>,
        limits: Limits,
    ) -> anyhow::Result<Plugin> {
        if is_core_module(bytes) {
            anyhow::bail!(
                "this is a core WebAssembly module, not a component: build the plugin with \
                 `cargo build --target wasm32-wasip2 --release` (the wasm32-wasip2 target \
                 produces components)"
            );
        }
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let shared = self
            .linked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&digest)
            .and_then(Weak::upgrade);
        let (linked, from_cache) = match shared {
            Some(linked) => (linked, true),
            None => {
                let (linked, from_cache) = self.link(bytes, &digest)?;
                let linked = Arc::new(linked);
                let mut map = self
                    .linked
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                map.retain(|_, w| w.strong_count() > 0);
                map.insert(digest, Arc::downgrade(&linked));
                (linked, from_cache)
            }
        };
        Ok(Plugin {
            name: Arc::from(name),
            linked,
            params: Arc::new(params),
            limits,
            engine: self.engine.clone(),
            from_cache,
            breaker: Arc::new(breaker::Breaker::new(limits.breaker)),
            version: None,
        })
    }

    /// Compiles (or takes from the cache) and links a component.
    fn link(&self, bytes: &[u8], digest: &[u8; 32]) -> anyhow::Result<(Linked, bool)> {
        let (component, from_cache) = self.compile_cached(bytes, digest).context("compiling")?;
        let target = self.contract_of(&component)?;
        let unlinkable = |e: anyhow::Error| {
            let newer = semver::Version::parse(target.contract.version())
                .is_ok_and(|ours| target.version > ours);
            if newer {
                e.context(format!(
                    "it targets veneer:plugin@{}, newer than this host's {}, and uses \
                     functions this host does not have: upgrade the host or rebuild the \
                     plugin for {} (supported: {})",
                    target.version,
                    target.contract.version(),
                    target.contract.version(),
                    Contract::supported_list()
                ))
            } else {
                e.context(format!(
                    "it does not link against {}: it must target the veneer:plugin/personalizer \
                     world and import nothing else",
                    target.contract
                ))
            }
        };
        let instance_pre = wt(self.linker.instantiate_pre(&component)).map_err(unlinkable)?;
        let pre = match target.contract {
            Contract::V0_1 => {
                Pre::V0_1(wt(v0_1::PersonalizerPre::new(instance_pre)).map_err(unlinkable)?)
            }
            Contract::V0_2 => {
                Pre::V0_2(wt(v0_2::PersonalizerPre::new(instance_pre)).map_err(unlinkable)?)
            }
        };
        Ok((
            Linked {
                pre,
                contract: target.contract,
                built_for: target.version.to_string(),
                deterministic: taken_as_deterministic(target.contract, bytes),
            },
            from_cache,
        ))
    }

    /// Reads the contract version a component targets from its hooks export, without
    /// linking it: the basis of `veneer plugin check`.
    pub fn inspect(&self, bytes: &[u8]) -> anyhow::Result<ComponentInfo> {
        if is_core_module(bytes) {
            anyhow::bail!(
                "this is a core WebAssembly module, not a component: build it for wasm32-wasip2"
            );
        }
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let (component, _) = self.compile_cached(bytes, &digest).context("compiling")?;
        let target = self.contract_of(&component)?;
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let exports = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        Ok(ComponentInfo {
            version: target.version,
            contract: target.contract,
            imports,
            exports,
            deterministic: taken_as_deterministic(target.contract, bytes),
        })
    }

    fn contract_of(&self, component: &Component) -> anyhow::Result<Target> {
        let ty = component.component_type();
        let exports: Vec<&str> = ty.exports(&self.engine).map(|(n, _)| n).collect();
        let Some(version) = exports.iter().find_map(|n| n.strip_prefix(HOOKS_EXPORT)) else {
            anyhow::bail!(
                "not a Veneer plugin: it exports no veneer:plugin/hooks interface (it exports: \
                 {}); this host supports veneer:plugin {}",
                if exports.is_empty() {
                    "nothing".to_owned()
                } else {
                    exports.join(", ")
                },
                Contract::supported_list()
            );
        };
        let parsed = semver::Version::parse(version)
            .with_context(|| format!("veneer:plugin/hooks@{version}: not a semver version"))?;
        let contract = Contract::for_version(&parsed).ok_or_else(|| {
            anyhow::anyhow!(
                "it targets veneer:plugin@{version}, which this host does not support \
                 (supported: {}): rebuild it with a veneer-sdk for a supported version, or \
                 upgrade the host",
                Contract::supported_list()
            )
        })?;
        Ok(Target {
            version: parsed,
            contract,
        })
    }

    /// Returns the compiled component, from the cache when the same bytes were compiled by a
    /// compatible engine before.
    fn compile_cached(&self, bytes: &[u8], digest: &[u8; 32]) -> anyhow::Result<(Component, bool)> {
        use std::hash::{Hash, Hasher};
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        let key: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let path = self
            .cache_dir
            .join(format!("{key}-{:016x}.cwasm", engine_hash.finish()));
        if path.exists() {
            match load_precompiled(&self.engine, &path) {
                Ok(c) => {
                    tracing::debug!(path = %path.display(), "plugin loaded from compile cache");
                    return Ok((c, true));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unusable compile cache entry")
                }
            }
        }
        let compiled = wt(self.engine.precompile_component(bytes))?;
        // Write to a temporary name and rename, so a concurrent reader never sees half a file.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if let Err(e) = std::fs::write(&tmp, &compiled).and_then(|()| std::fs::rename(&tmp, &path))
        {
            tracing::warn!(path = %path.display(), error = %e, "could not write compile cache entry");
        }
        Ok((load_precompiled_bytes(&self.engine, &compiled)?, false))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// wasmtime has its own error type; this crate reports with anyhow.
fn wt<T>(r: wasmtime::Result<T>) -> anyhow::Result<T> {
    r.map_err(anyhow::Error::from)
}

#[expect(
    unsafe_code,
    reason = "deserializing precompiled code; see the SAFETY note"
)]
fn load_precompiled(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    // SAFETY: wasmtime requires that the file was produced by `precompile_component` of a
    // compatible engine and not tampered with. It was: this process family writes the cache
    // directory, names entries by the SHA-256 of the source and the engine's compatibility
    // hash, and the operator owns that directory (it is as trusted as the binary itself).
    wt(unsafe { Component::deserialize_file(engine, path) })
}

#[expect(
    unsafe_code,
    reason = "deserializing precompiled code; see the SAFETY note"
)]
fn load_precompiled_bytes(engine: &Engine, bytes: &[u8]) -> anyhow::Result<Component> {
    // SAFETY: `bytes` was produced by `precompile_component` on this very engine just now.
    wt(unsafe { Component::deserialize(engine, bytes) })
}

/// What a component targets, from its hooks export.
struct Target {
    version: semver::Version,
    contract: Contract,
}

/// What `veneer plugin check` reports about a component.
#[derive(Debug, Clone)]
pub struct ComponentInfo {
    /// The exact contract version it was built for (from `veneer:plugin/hooks@X.Y.Z`).
    pub version: semver::Version,
    /// The supported contract it links against.
    pub contract: Contract,
    /// Its imports (interfaces), by name.
    pub imports: Vec<String>,
    /// Its exports, by name.
    pub exports: Vec<String>,
    /// It declares itself deterministic (see [`declares_deterministic`]).
    pub deterministic: bool,
}

/// The custom section in which a plugin declares traits the host may rely on, one per line
/// (`veneer_sdk::export_plugin!(P, deterministic)` writes it); hosts ignore traits they do not
/// know, and the plugin contract (its WIT) is unchanged by them.
pub const TRAITS_SECTION: &str = "veneer:traits";

/// Whether a component declares itself deterministic in its [`TRAITS_SECTION`] (in the
/// component or in a core module inside it, where a Rust `#[link_section]` puts it): its
/// hooks' answers depend only on the inputs `proxy::memo` names, so the host may serve them
/// again without calling it.
pub fn declares_deterministic(bytes: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(bytes).any(|payload| {
        matches!(payload, Ok(wasmparser::Payload::CustomSection(ref section))
            if section.name() == TRAITS_SECTION
                && section
                    .data()
                    .split(|b| *b == b'\n' || *b == 0)
                    .any(|line| line.trim_ascii() == b"deterministic"))
    })
}

/// Whether the host takes a component's declaration that it is deterministic: a 0.1 plugin
/// gets every input copied in, so the host could not see it read what a kept answer is not
/// keyed by, and its declaration is not taken.
fn taken_as_deterministic(contract: Contract, bytes: &[u8]) -> bool {
    contract != Contract::V0_1 && declares_deterministic(bytes)
}

/// Whether `bytes` are a core WebAssembly module (preamble version 1), not a component.
fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

/// A plugin linked against one contract version's bindings.
#[derive(Clone)]
enum Pre {
    V0_1(v0_1::PersonalizerPre<StoreState>),
    V0_2(v0_2::PersonalizerPre<StoreState>),
}

/// An instance's exports, by contract version.
enum Bound {
    V0_1(v0_1::Personalizer),
    V0_2(v0_2::Personalizer),
}

/// A loaded plugin: compiled, linked, ready to instantiate per request.
#[derive(Clone)]
pub struct Plugin {
    name: Arc<str>,
    linked: Arc<Linked>,
    params: Arc<HashMap<String, String>>,
    limits: Limits,
    engine: Engine,
    from_cache: bool,
    breaker: Arc<breaker::Breaker>,
    version: Option<u64>,
}

impl Plugin {
    /// Whether this request may run the plugin (its circuit breaker is closed, or this is the
    /// one trial after a cool-down). Pass the answer to [`Plugin::instantiate`].
    pub fn admit(&self) -> Admission {
        self.breaker.admit()
    }

    /// Counts a fault in applying a plan kept from an earlier run of the plugin (no instance
    /// ran this time to count it).
    pub fn kept_plan_faulted(&self, services: &dyn HostServices) {
        record_outcome(
            &self.breaker,
            breaker::Outcome::Fault,
            false,
            &self.name,
            services,
        );
    }

    /// Whether the plugin is being skipped after repeated faults.
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// What its plans may ask of the host.
    pub fn budget(&self) -> &Budget {
        &self.limits.budget
    }

    /// Whether the component declares itself deterministic (see [`declares_deterministic`]).
    pub fn deterministic(&self) -> bool {
        self.linked.deterministic
    }

    /// Whether the compiled code came from the on-disk cache (no compilation at load).
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// The plugin's name in the tenant config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stored version id this plugin was loaded from (plugins from the state store).
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// Labels the plugin with its stored version id.
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = Some(version);
        self
    }

    /// The contract version the plugin was built for.
    pub fn contract(&self) -> Contract {
        self.linked.contract
    }

    /// The exact contract version the component was built for, e.g. `0.2.0` (it links
    /// against [`Plugin::contract`], its minor line's bindings).
    pub fn built_for(&self) -> &str {
        &self.linked.built_for
    }

    /// A fresh instance for one request; `admission` is what [`Plugin::admit`] said (a
    /// skipped plugin is not instantiated at all).
    pub async fn instantiate(
        &self,
        services: Arc<dyn HostServices>,
        admission: Admission,
    ) -> Result<Instance, PluginFault> {
        let stderr = stderr::GuestStderr::default();
        let mut wasi = WasiCtx::builder();
        wasi.stderr(stderr.clone());
        // Only a deterministic plugin's answers are kept, so only its reads need watching.
        let wasi_read = self
            .linked
            .deterministic
            .then(|| Arc::new(std::sync::atomic::AtomicBool::new(false)));
        if let Some(read) = &wasi_read {
            watched::watch(&mut wasi, read);
        }
        let state = StoreState {
            wasi: wasi.build(),
            wasi_read,
            stderr,
            table: ResourceTable::new(),
            memory_limit: self.limits.memory_bytes,
            memory_exceeded: false,
            services,
            plugin: self.name.clone(),
            params: self.params.clone(),
            owned_handles: 0,
            budget: self.limits.budget,
            usage: budget::Usage::default(),
            over_budget: None,
            deadline: Instant::now(),
            may_yield: true,
            interrupted: false,
            streaming: None,
            streaming_stopped: false,
            yielded_ns: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            ticks_in_call: 0,
            wall_deadline: Instant::now(),
            unkeyed: false,
            events: Allowance::new(self.limits.events_per_request),
            log_lines: Allowance::new(self.limits.log_lines_per_request),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s);
        // Every tick past the deadline traps; before it, an awaited call yields to the
        // scheduler each tick, so a plugin spinning through its budget does not hold a worker
        // thread that other tenants' requests are waiting for.
        store.epoch_deadline_callback(|mut ctx| {
            let s = ctx.data_mut();
            // Time spent waiting to be scheduled again after a yield is not the plugin's.
            let paused = Duration::from_nanos(s.yielded_ns.load(Ordering::Relaxed));
            let now = Instant::now();
            // A streaming callback is held to the CPU it burns, not to the wall clock: a
            // worker preempted by a busy machine is not the plugin's doing, and stopping a
            // callback for it would fault a good plugin whenever the host is loaded.
            if let Some(streaming) = &mut s.streaming {
                // The thread's CPU clock costs a system call (~0.4 µs, a tenth of a typical
                // callback), so it is read only in calls that last a tick: the limit counts
                // from the first tick (at most a tick's CPU before it goes uncounted: a wall
                // estimate of it would count a preempted worker against the plugin), and is
                // checked once the call could have reached it.
                let elapsed = now.saturating_duration_since(streaming.since);
                let cpu_then = *streaming.first_tick.get_or_insert_with(thread_cpu_time);
                if elapsed >= STREAMING_CALL_LIMIT
                    && thread_cpu_time().saturating_sub(cpu_then) >= STREAMING_CALL_LIMIT
                {
                    s.interrupted = true;
                    s.streaming_stopped = true;
                    return Ok(wasmtime::UpdateDeadline::Interrupt);
                }
            }
            // Paused time does not count against the budget, but the visitor still waits for
            // it: a call ends at 4 × its budget of wall time whatever it was doing.
            if now >= s.deadline + paused || now >= s.wall_deadline {
                s.interrupted = true;
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            if s.may_yield {
                s.ticks_in_call += 1;
                // A call past its first couple of ticks runs long: from then on it pauses a
                // tick for every tick it runs, so even a plugin spinning through its whole
                // budget holds at most half a worker thread.
                let throttle = s.ticks_in_call > 2 && now + TICK < s.wall_deadline;
                let (yielded, paused_at) = (s.yielded_ns.clone(), Instant::now());
                Ok(wasmtime::UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(async move {
                        if throttle {
                            tokio::time::sleep(TICK).await;
                        } else {
                            tokio::task::yield_now().await;
                        }
                        let waited =
                            u64::try_from(paused_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        yielded.fetch_add(waited, Ordering::Relaxed);
                    }),
                ))
            } else {
                Ok(wasmtime::UpdateDeadline::Continue(1))
            }
        });
        let mut instance = Instance {
            store,
            bindings: None,
            budget: self.limits.time_budget,
            used: Duration::ZERO,
            faulted: false,
            breaker: self.breaker.clone(),
            trial: admission == Admission::Trial,
            abandoned: false,
            in_call: false,
            lending: lent::Lending::default(),
        };
        let start = instance.arm(true);
        let result = match &self.linked.pre {
            Pre::V0_1(pre) => pre
                .instantiate_async(&mut instance.store)
                .await
                .map(Bound::V0_1),
            Pre::V0_2(pre) => pre
                .instantiate_async(&mut instance.store)
                .await
                .map(Bound::V0_2),
        };
        let paused = instance.store.data().yielded_ns.load(Ordering::Relaxed);
        instance.used += start.elapsed().saturating_sub(Duration::from_nanos(paused));
        match result {
            Ok(b) => {
                instance.bindings = Some(b);
                Ok(instance)
            }
            // Dropping the instance reports the fault to the breaker.
            Err(e) => Err(match instance.classify(e) {
                PluginFault::Trap(m) => PluginFault::Instantiate(m),
                other => other,
            }),
        }
    }
}

/// Per-store state: WASI (empty), limits and the request's host services.
struct StoreState {
    wasi: WasiCtx,
    /// What the guest printed to stderr (bounded), for the fault's message.
    stderr: stderr::GuestStderr,
    table: ResourceTable,
    memory_limit: usize,
    memory_exceeded: bool,
    services: Arc<dyn HostServices>,
    plugin: Arc<str>,
    params: Arc<HashMap<String, String>>,
    /// Campaign and assignment handles the guest holds (0.2.0 and later).
    owned_handles: usize,
    /// What the plugin's plans may ask for, and what the current call asked for so far.
    budget: Budget,
    usage: budget::Usage,
    /// Set when a recording call went over budget (the call then traps).
    over_budget: Option<String>,
    /// When the current call runs out of time.
    deadline: Instant,
    /// Whether the current call is awaited (may yield) or polled once from a stream.
    may_yield: bool,
    /// The epoch callback stopped the call at its deadline.
    interrupted: bool,
    /// The current streaming callback, held to [`STREAMING_CALL_LIMIT`] of CPU; `None` for
    /// awaited calls, and for a streaming one when less than that is left of the budget.
    streaming: Option<StreamingCall>,
    /// The current call was stopped at its streaming limit.
    streaming_stopped: bool,
    /// Nanoseconds the current call spent yielded (waiting for the scheduler), which do not
    /// count against its budget.
    yielded_ns: Arc<std::sync::atomic::AtomicU64>,
    /// Epoch ticks the current call has seen.
    ticks_in_call: u32,
    /// When the current call ends whatever it was doing (4 × what was left of its budget).
    wall_deadline: Instant,
    /// The plugin read an input that a deterministic plugin's memoized answers are not keyed
    /// by (the visitor's id, a request header...): this request's answers are not kept.
    unkeyed: bool,
    /// Set when the plugin reads WASI's clocks or random numbers (for a deterministic plugin:
    /// see `watched`); the same as `unkeyed`.
    wasi_read: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Analytics events this instance may still record.
    events: Allowance,
    /// Log lines this instance may still write.
    log_lines: Allowance,
}

/// How many more of something one request's instance may do, and how many it was refused: a
/// plugin looping over `track` or `log` would otherwise fill the queues every tenant shares.
struct Allowance {
    left: std::sync::atomic::AtomicU32,
    refused: std::sync::atomic::AtomicU32,
}

impl Allowance {
    fn new(n: u32) -> Self {
        Allowance {
            left: n.into(),
            refused: 0.into(),
        }
    }

    /// Takes one; `false` (and counted) when none is left.
    fn take(&self) -> bool {
        let taken = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if !taken {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    fn refused(&self) -> u32 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Host services shared by every contract version's bindings.
impl StoreState {
    /// Charges the current call's plan; over budget, remembers why and traps the guest.
    fn charge(
        &mut self,
        f: impl FnOnce(&mut budget::Usage, &Budget) -> Result<(), String>,
    ) -> wasmtime::Result<()> {
        let budget = self.budget;
        if let Err(reason) = f(&mut self.usage, &budget) {
            self.over_budget = Some(reason.clone());
            wasmtime::bail!("over budget: {reason}");
        }
        Ok(())
    }

    fn record_event(&self, name: &str, properties: Vec<(String, String)>) {
        if self.events.take() {
            self.services.track(&self.plugin, name, properties);
        }
    }

    fn param(&self, key: &str) -> Option<String> {
        self.params.get(key).cloned()
    }

    fn write_log(&self, level: Level, message: &str) {
        // A plugin's messages are data; cap their number and length so a chatty plugin
        // cannot flood the log.
        if !self.log_lines.take() {
            return;
        }
        let (tenant, request_id, plugin) = (
            self.services.tenant(),
            self.services.request_id(),
            &*self.plugin,
        );
        let message: String = message.chars().take(1024).collect();
        match level {
            Level::Debug => tracing::debug!(tenant, plugin, request_id, "{message}"),
            Level::Info => tracing::info!(tenant, plugin, request_id, "{message}"),
            Level::Warn => tracing::warn!(tenant, plugin, request_id, "{message}"),
            Level::Error => tracing::error!(tenant, plugin, request_id, "{message}"),
        }
    }
}
impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = true;
            // An error (not `false`) traps at once, instead of letting the guest's allocator
            // turn the failed grow into an opaque abort.
            wasmtime::bail!("memory limit of {} bytes exceeded", self.memory_limit);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// One plugin instance serving one request.
pub struct Instance {
    store: Store<StoreState>,
    bindings: Option<Bound>,
    budget: Duration,
    used: Duration,
    faulted: bool,
    breaker: Arc<breaker::Breaker>,
    trial: bool,
    /// Dropped without having had its chance (the request went on without it): the breaker
    /// learns nothing from it.
    abandoned: bool,
    /// A call is under way: dropped now, the request was cancelled (the client went away), which
    /// says nothing about the plugin either.
    in_call: bool,
    /// Lends the element of a running `on-element` call to the host functions that read it.
    lending: lent::Lending,
}

impl Drop for Instance {
    /// The request is done with the plugin (its body included): tell the breaker how it went.
    fn drop(&mut self) {
        let s = self.store.data();
        let (events, lines) = (s.events.refused(), s.log_lines.refused());
        if events > 0 || lines > 0 {
            s.services.left_out(&s.plugin, events, lines);
        }
        if self.abandoned || (self.in_call && !self.faulted) {
            if self.trial {
                // Let the next request be the trial instead.
                self.breaker.release_trial();
            }
            return;
        }
        let outcome = if self.faulted {
            breaker::Outcome::Fault
        } else {
            breaker::Outcome::Success
        };
        let s = self.store.data();
        record_outcome(&self.breaker, outcome, self.trial, &s.plugin, &*s.services);
    }
}

/// Records how a run (or a kept plan) of `plugin` went on its breaker, and tells the request's
/// services when that opened or closed it.
fn record_outcome(
    breaker: &breaker::Breaker,
    outcome: breaker::Outcome,
    trial: bool,
    plugin: &str,
    services: &dyn HostServices,
) {
    let transition = breaker.record(outcome, trial);
    if transition != Transition::None {
        services.breaker_changed(plugin, transition);
    }
}

impl Instance {
    /// Sets the deadlines for a call starting now to what is left of the request's budget (the
    /// epoch callback checks them every tick); returns the instant the call starts at.
    fn arm(&mut self, awaited: bool) -> Instant {
        let left = self.budget.saturating_sub(self.used);
        let s = self.store.data_mut();
        // A streaming call runs on this thread until it returns (it cannot yield), so the
        // thread's CPU clock measures the plugin alone.
        let now = Instant::now();
        s.streaming = (!awaited && left > STREAMING_CALL_LIMIT).then_some(StreamingCall {
            since: now,
            first_tick: None,
        });
        s.streaming_stopped = false;
        s.deadline = now + left;
        s.wall_deadline = s.deadline + left.saturating_mul(3);
        s.yielded_ns.store(0, Ordering::Relaxed);
        s.ticks_in_call = 0;
        self.store.set_epoch_deadline(1);
        now
    }

    /// Drops the instance without telling the breaker anything: the request went on without
    /// the plugin for a reason that is not the plugin's (its tenant had no turn free).
    pub fn abandon(mut self) {
        self.abandoned = true;
    }

    /// Marks the instance faulted for a fault the host found in what it returned (an invalid
    /// or over-budget plan): it is not called again, and the breaker counts the fault.
    pub fn mark_faulted(&mut self) {
        self.faulted = true;
    }

    fn classify(&mut self, e: wasmtime::Error) -> PluginFault {
        self.faulted = true;
        if self.store.data().memory_exceeded {
            return PluginFault::Memory(self.store.data().memory_limit);
        }
        if let Some(reason) = self.store.data_mut().over_budget.take() {
            return PluginFault::Budget(reason);
        }
        if self.store.data().interrupted
            || matches!(
                e.downcast_ref::<wasmtime::Trap>(),
                Some(wasmtime::Trap::Interrupt)
            )
        {
            if self.store.data().streaming_stopped {
                return PluginFault::StreamingCall(STREAMING_CALL_LIMIT);
            }
            return PluginFault::Deadline(self.budget);
        }
        let first = format!("{e:#}").lines().next().unwrap_or("trap").to_owned();
        match self.store.data().stderr.panic_message() {
            Some(panic) => PluginFault::Trap(panic),
            None => PluginFault::Trap(first),
        }
    }

    /// Starts a call; `awaited` calls may yield to the scheduler, streaming ones cannot.
    fn begin(&mut self, awaited: bool) -> Result<Instant, PluginFault> {
        if self.faulted || self.bindings.is_none() {
            return Err(PluginFault::AlreadyFaulted);
        }
        let start = self.arm(awaited);
        let s = self.store.data_mut();
        s.may_yield = awaited;
        s.usage = budget::Usage::default();
        self.in_call = true;
        Ok(start)
    }

    fn end<R>(
        &mut self,
        start: Instant,
        result: Option<wasmtime::Result<R>>,
    ) -> Result<R, PluginFault> {
        let paused = self.store.data().yielded_ns.load(Ordering::Relaxed);
        self.used += start.elapsed().saturating_sub(Duration::from_nanos(paused));
        self.in_call = false;
        match result {
            Some(Ok(r)) => Ok(r),
            Some(Err(e)) => Err(self.classify(e)),
            None => {
                self.faulted = true;
                Err(PluginFault::Trap(
                    "the call waited on I/O inside a streaming callback".into(),
                ))
            }
        }
    }

    /// [`Instance::end`] for an awaited call, which the wall clock may have cut short: the
    /// epoch deadline stops a plugin only while it runs, not while it waits on a WASI timer
    /// or stream, so the call itself is bounded by the same wall-clock limit. A call dropped
    /// mid-way leaves the instance unusable: it is faulted, on the plugin's breaker too.
    fn end_awaited<R>(
        &mut self,
        start: Instant,
        result: Result<wasmtime::Result<R>, tokio::time::error::Elapsed>,
    ) -> Result<R, PluginFault> {
        match result {
            Ok(r) => self.end(start, Some(r)),
            Err(_) => {
                self.used += start.elapsed();
                self.in_call = false;
                self.faulted = true;
                Err(PluginFault::Deadline(self.budget))
            }
        }
    }

    /// Calls `on-request`.
    pub async fn on_request(
        &mut self,
        request: &Arc<RequestHead>,
        visitor: &Arc<Visitor>,
    ) -> Result<RequestAction, PluginFault> {
        let start = self.begin(true)?;
        let wall = self.store.data().wall_deadline;
        let store = &mut self.store;
        let call = async {
            match &self.bindings {
                Some(Bound::V0_1(b)) => v0_1::on_request(b, store, request, visitor).await,
                Some(Bound::V0_2(b)) => v0_2::on_request(b, store, request, visitor).await,
                None => Err(wasmtime::Error::msg("no bindings")),
            }
        };
        let r = tokio::time::timeout_at(wall.into(), call).await;
        self.end_awaited(start, r)
    }

    /// Calls `on-response`.
    pub async fn on_response(
        &mut self,
        request: &Arc<RequestHead>,
        response: &Arc<ResponseHead>,
        visitor: &Arc<Visitor>,
    ) -> Result<ResponsePlan, PluginFault> {
        let start = self.begin(true)?;
        let wall = self.store.data().wall_deadline;
        let store = &mut self.store;
        let call = async {
            match &self.bindings {
                Some(Bound::V0_1(b)) => {
                    v0_1::on_response(b, store, request, response, visitor).await
                }
                Some(Bound::V0_2(b)) => {
                    v0_2::on_response(b, store, request, response, visitor).await
                }
                None => Err(wasmtime::Error::msg("no bindings")),
            }
        };
        let r = tokio::time::timeout_at(wall.into(), call).await;
        self.end_awaited(start, r)
    }

    /// Records an analytics event from this plugin on the host's behalf (a rule it tagged
    /// with `track-applied` was applied), subject to consent like the plugin's own events.
    pub fn track_applied(&self, name: &str, properties: Vec<(String, String)>) {
        self.store.data().record_event(name, properties);
    }

    /// Calls `on-element` (synchronously, from a streaming handler). A 0.2 plugin reads
    /// `element` through host calls while the call runs (see `lent`); 0.1 is given a copy.
    pub fn on_element(
        &mut self,
        subscription: u32,
        element: &dyn ElementView,
    ) -> Result<Vec<HtmlOp>, PluginFault> {
        let start = self.begin(false)?;
        let store = &mut self.store;
        let r = match &self.bindings {
            Some(Bound::V0_1(b)) => {
                // The copy 0.1's record needs counts against the plugin's time, as reading
                // the element through host calls does for 0.2.
                let info = ElementInfo {
                    tag: element.tag(),
                    attributes: element.attributes(),
                };
                poll_now(v0_1::on_element(b, store, subscription, &info))
            }
            Some(Bound::V0_2(b)) => self.lending.with_lent(element, |lent| {
                poll_now(v0_2::on_element(b, store, subscription, lent))
            }),
            None => return Err(PluginFault::AlreadyFaulted),
        };
        self.end(start, r)
    }

    /// Calls `on-text` (synchronously, from a streaming handler).
    pub fn on_text(
        &mut self,
        subscription: u32,
        text: &str,
    ) -> Result<Option<String>, PluginFault> {
        let start = self.begin(false)?;
        let store = &mut self.store;
        let r = match &self.bindings {
            Some(Bound::V0_1(b)) => poll_now(v0_1::on_text(b, store, subscription, text)),
            Some(Bound::V0_2(b)) => poll_now(v0_2::on_text(b, store, subscription, text)),
            None => return Err(PluginFault::AlreadyFaulted),
        };
        self.end(start, r)
    }

    /// Whether the plugin read an input its memoized answers are not keyed by, through its
    /// arguments or WASI's clocks and random numbers (see `proxy::memo` and `watched`;
    /// contract 0.2 and later: 0.1 copies every input in).
    pub fn read_unkeyed(&self) -> bool {
        let state = self.store.data();
        state.unkeyed
            || state
                .wasi_read
                .as_ref()
                .is_some_and(|r| r.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Time spent inside the plugin so far in this request.
    pub fn time_used(&self) -> Duration {
        self.used
    }
}

/// Polls a future once; `None` if it is not ready. Plugin calls whose host functions never
/// wait finish in one poll.
fn poll_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}
