//! A fleet of nodes sharing their state through NATS JetStream (`[cluster]`, docs/fleet.md).
//!
//! - **Config and plugins**: each tenant is one key of the KV bucket `veneer_config` (its
//!   whole state: spec, documents, plugin chain by digest; the key's revision is its version)
//!   and plugin components are objects of `veneer_plugins` named by SHA-256. An admin change
//!   on any node is written to the local store and then to the bucket (compare-and-set on the
//!   revision this node last applied, so two nodes cannot each overwrite the other's edit);
//!   every node watches the bucket and applies what it sees through the same build-and-swap
//!   path a local change takes ([`crate::control::Control::apply_fleet`]). A node records the
//!   revision it applied per key in its SQLite store, catches up from there on start and
//!   re-syncs the whole bucket every `resync_secs` (a watch may skip revisions): handling is
//!   by latest state and idempotent.
//! - **Static stability**: the NATS client connects and reconnects in the background; until
//!   it is connected a node serves its local copy and refuses admin writes with 503.
//! - **Profiles**: see [`ProfileShare`].
//! - **Events**: see [`crate::outbox`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv, object_store, stream};
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::config::Cluster;
use crate::control::ApiError;
use crate::metrics::Metrics;
use crate::store::{Params, TenantRecord};

/// The KV bucket holding each tenant's state.
pub const CONFIG_BUCKET: &str = "veneer_config";
/// The object store holding plugin components by digest.
pub const PLUGIN_BUCKET: &str = "veneer_plugins";
/// The stream of every node's analytics events.
pub const EVENTS_STREAM: &str = "VENEER_EVENTS";
/// Subject prefix of events (`veneer.events.<tenant key>`).
pub const EVENTS_SUBJECT: &str = "veneer.events";
/// The key that hands out plugin version ids fleet-wide.
const VERSION_SEQ_KEY: &str = "seq.plugin_version";
/// How long the stream remembers a `Nats-Msg-Id`: longer than any publisher retries one
/// event (a leader election takes seconds; a node cut off keeps its outbox and retries).
pub const DEDUP_WINDOW: Duration = Duration::from_secs(10 * 60);

/// One tenant's state as the fleet shares it: everything but the plugin bytes, which are
/// named by digest. Maps are ordered so one state always serializes to the same bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantState {
    /// The `[[tenant]]` table (as the admin API shows it).
    pub spec: serde_json::Value,
    /// Not served.
    pub disabled: bool,
    /// The rules document's text.
    pub rules: Option<String>,
    /// The fragments document's text.
    pub fragments: Option<String>,
    /// The plugin chain in order.
    pub plugins: Vec<PluginState>,
    /// Every stored version (plugin, id, SHA-256), active or not, so any node can activate
    /// or roll back to any of them.
    #[serde(default)]
    pub versions: Vec<(String, i64, String)>,
}

/// One plugin of a [`TenantState`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PluginState {
    /// Plugin name.
    pub name: String,
    /// Version id (fleet-wide).
    pub version: i64,
    /// The component's SHA-256 (hex): its object's name.
    pub sha256: String,
    /// Its params.
    pub params: std::collections::BTreeMap<String, String>,
}

/// What a KV value holds: the state, its digest and who wrote it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The state.
    pub state: TenantState,
    /// [`TenantState::digest`] of `state`.
    pub digest: String,
    /// The node that wrote it.
    pub node: String,
}

impl TenantState {
    /// The shareable state of a stored tenant.
    pub fn of(rec: &TenantRecord, versions: Vec<(String, i64, String)>) -> TenantState {
        let mut spec = serde_json::to_value(&rec.spec).unwrap_or_default();
        if let serde_json::Value::Object(map) = &mut spec {
            for key in ["rules", "fragments", "plugin"] {
                map.remove(key);
            }
        }
        TenantState {
            spec,
            disabled: rec.disabled,
            rules: rec.rules.clone(),
            fragments: rec.fragments.clone(),
            plugins: rec
                .plugins
                .iter()
                .map(|p| PluginState {
                    name: p.name.clone(),
                    version: p.version,
                    sha256: p.sha256.clone(),
                    params: p
                        .params
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                })
                .collect(),
            versions,
        }
    }

    /// What decides whether two nodes serve the same thing: the state without version ids
    /// (a node that held an id before joining stores the same bytes under another).
    pub fn digest(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(plugins) = v.get_mut("plugins").and_then(|p| p.as_array_mut()) {
            for p in plugins {
                if let serde_json::Value::Object(map) = p {
                    map.remove("version");
                }
            }
        }
        if let Some(versions) = v.get_mut("versions").and_then(|p| p.as_array_mut()) {
            let mut set: Vec<serde_json::Value> = versions
                .iter()
                .filter_map(|t| Some(serde_json::json!([t.get(0)?, t.get(2)?])))
                .collect();
            set.sort_by_key(ToString::to_string);
            set.dedup();
            *versions = set;
        }
        crate::store::sha256_hex(&serde_json::to_vec(&v).unwrap_or_default())
    }

    /// Params of one plugin as the store keeps them.
    pub fn params(p: &PluginState) -> Params {
        p.params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The KV key of a tenant: its name when that is a valid key token, else its hex.
pub fn tenant_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        format!("tenant.n.{name}")
    } else {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        format!("tenant.h.{hex}")
    }
}

/// The tenant a KV key names.
pub fn key_tenant(key: &str) -> Option<String> {
    if let Some(name) = key.strip_prefix("tenant.n.") {
        return Some(name.to_owned());
    }
    let hex = key.strip_prefix("tenant.h.")?;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// Whether the stream `name` does not exist (an error for anything but "not found": a
/// bucket is only ever created when it is missing, never re-configured by a node).
async fn missing(js: &jetstream::Context, name: &str) -> anyhow::Result<bool> {
    match js.get_stream(name).await {
        Ok(_) => Ok(false),
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(err)
                if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(true)
            }
            _ => Err(anyhow::Error::from(e).context(format!("looking up {name}"))),
        },
    }
}

/// Opens a KV bucket, creating it when it does not exist.
pub async fn open_bucket(js: &jetstream::Context, config: kv::Config) -> anyhow::Result<kv::Store> {
    let bucket = config.bucket.clone();
    if missing(js, &format!("KV_{bucket}")).await?
        && let Ok(kv) = js.create_key_value(config).await
    {
        return Ok(kv);
    }
    // Existing, or created by another node meanwhile.
    js.get_key_value(&bucket)
        .await
        .with_context(|| format!("opening the bucket {bucket}"))
}

/// The JetStream handles, created once NATS is reachable.
pub struct Parts {
    /// Tenants' state.
    pub kv: kv::Store,
    /// Plugin components.
    pub objects: object_store::ObjectStore,
    /// Events.
    pub events: stream::Stream,
}

/// This node's connection to the fleet.
pub struct Fleet {
    /// This node's name.
    pub node: String,
    urls: String,
    replicas: usize,
    /// Seconds between full re-syncs.
    pub resync: Duration,
    client: async_nats::Client,
    js: jetstream::Context,
    parts: tokio::sync::OnceCell<Parts>,
    /// The event counts bucket, once opened ([`crate::outbox`]).
    pub(crate) aggregates: tokio::sync::OnceCell<kv::Store>,
    /// The highest config revision this node has seen (for the lag metric, which a task of
    /// its own computes: a slow JetStream request must never hold up the watch).
    seen: std::sync::atomic::AtomicU64,
    metrics: Arc<Metrics>,
    /// Wakes the sync loop for a full re-sync now (after a refused compare-and-set).
    pub kick: tokio::sync::Notify,
}

/// Why a write to the fleet failed.
#[derive(Debug)]
pub enum WriteError {
    /// Another node changed the key since this node applied it.
    Conflict,
    /// NATS did not take it.
    Unreachable(String),
}

impl Fleet {
    /// Starts connecting to `cluster`'s servers; returns at once (the client connects and
    /// reconnects in the background, so a node starts and serves with NATS down).
    pub async fn connect(
        cluster: &Cluster,
        credentials: Option<std::path::PathBuf>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Fleet>> {
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("veneer-{}", cluster.node))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(Duration::from_secs(5)));
        if let Some(path) = credentials {
            options = options
                .credentials_file(&path)
                .await
                .with_context(|| format!("reading cluster.credentials {}", path.display()))?;
        }
        let client = options
            .connect(cluster.nats.clone())
            .await
            .context("cluster.nats")?;
        let js = jetstream::new(client.clone());
        // Not capped by the URLs listed: a PoP's node lists its one local leaf server while
        // the hub cluster holds the replicas.
        let replicas = cluster.replicas.unwrap_or(3);
        Ok(Arc::new(Fleet {
            node: cluster.node.clone(),
            urls: cluster.nats.join(", "),
            replicas,
            resync: Duration::from_secs(cluster.resync_secs),
            client,
            js,
            parts: tokio::sync::OnceCell::new(),
            aggregates: tokio::sync::OnceCell::new(),
            seen: std::sync::atomic::AtomicU64::new(0),
            metrics,
            kick: tokio::sync::Notify::new(),
        }))
    }

    /// Whether the client is connected to a NATS server now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The JetStream context (events).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Replicas of the fleet's buckets and stream.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The 503 an admin write gets while the fleet is unreachable.
    pub fn unreachable(&self, why: &str) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the cluster (NATS at {}) is unreachable: {why}; admin changes are refused until it is back, and this node keeps serving its last copy",
                self.urls
            ),
        )
    }

    /// Refuses a write unless NATS is connected and the fleet's buckets are open.
    pub async fn writable(&self) -> Result<&Parts, ApiError> {
        if !self.connected() {
            return Err(self.unreachable("not connected"));
        }
        match tokio::time::timeout(Duration::from_secs(5), self.parts()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(self.unreachable(&format!("{e:#}"))),
            Err(_) => Err(self.unreachable("timed out opening the fleet's buckets")),
        }
    }

    /// Opens (creating when missing) the buckets and the stream.
    pub async fn parts(&self) -> anyhow::Result<&Parts> {
        self.parts
            .get_or_try_init(|| async {
                let kv = open_bucket(
                    &self.js,
                    kv::Config {
                        bucket: CONFIG_BUCKET.into(),
                        description: "Veneer tenants' state, one key per tenant".into(),
                        history: 5,
                        num_replicas: self.replicas,
                        storage: jetstream::stream::StorageType::File,
                        ..Default::default()
                    },
                )
                .await?;
                let objects_stream = format!("OBJ_{PLUGIN_BUCKET}");
                if missing(&self.js, &objects_stream).await? {
                    // Another node may create it first: then it is opened below.
                    let _ = self
                        .js
                        .create_object_store(object_store::Config {
                            bucket: PLUGIN_BUCKET.into(),
                            description: Some("Veneer plugin components by SHA-256".into()),
                            num_replicas: self.replicas,
                            storage: jetstream::stream::StorageType::File,
                            ..Default::default()
                        })
                        .await;
                }
                let objects = self
                    .js
                    .get_object_store(PLUGIN_BUCKET)
                    .await
                    .context("opening the plugin object store")?;
                let events = self
                    .js
                    .get_or_create_stream(stream::Config {
                        name: EVENTS_STREAM.into(),
                        description: Some("Veneer analytics events from every node".into()),
                        subjects: vec![format!("{EVENTS_SUBJECT}.>")],
                        num_replicas: self.replicas,
                        storage: jetstream::stream::StorageType::File,
                        duplicate_window: DEDUP_WINDOW,
                        max_age: Duration::from_secs(30 * 86_400),
                        ..Default::default()
                    })
                    .await
                    .context("creating the events stream")?;
                Ok(Parts {
                    kv,
                    objects,
                    events,
                })
            })
            .await
    }

    /// Stores a plugin component under its digest, unless the object store has it.
    pub async fn put_plugin(&self, sha256: &str, bytes: &[u8]) -> Result<(), WriteError> {
        let parts = self
            .writable()
            .await
            .map_err(|e| WriteError::Unreachable(e.message))?;
        if parts.objects.info(sha256).await.is_ok() {
            return Ok(());
        }
        let meta = object_store::ObjectMetadata {
            name: sha256.to_owned(),
            chunk_size: Some(512 << 10),
            ..Default::default()
        };
        parts
            .objects
            .put(meta, &mut std::io::Cursor::new(bytes))
            .await
            .map(|_| ())
            .map_err(|e| WriteError::Unreachable(format!("storing plugin {sha256}: {e}")))
    }

    /// Whether the object store holds this component.
    pub async fn has_plugin(&self, sha256: &str) -> bool {
        match self.parts().await {
            Ok(parts) => parts.objects.info(sha256).await.is_ok(),
            Err(_) => false,
        }
    }

    /// A plugin component by digest, checked against it.
    pub async fn get_plugin(&self, sha256: &str) -> anyhow::Result<Vec<u8>> {
        use tokio::io::AsyncReadExt as _;
        let parts = self.parts().await?;
        let mut object = parts
            .objects
            .get(sha256)
            .await
            .with_context(|| format!("fetching plugin {sha256}"))?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .with_context(|| format!("reading plugin {sha256}"))?;
        let got = crate::store::sha256_hex(&bytes);
        anyhow::ensure!(
            got == sha256,
            "plugin object {sha256} holds bytes with digest {got}"
        );
        Ok(bytes)
    }

    /// Writes a tenant's state; `expect` is the revision this node last applied (None: the
    /// key must not exist). Returns the new revision.
    pub async fn put_tenant(
        &self,
        name: &str,
        state: &TenantState,
        expect: Option<u64>,
    ) -> Result<u64, WriteError> {
        let parts = self
            .writable()
            .await
            .map_err(|e| WriteError::Unreachable(e.message))?;
        let envelope = Envelope {
            digest: state.digest(),
            state: state.clone(),
            node: self.node.clone(),
        };
        let value = Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default());
        let key = tenant_key(name);
        let result = match expect {
            Some(rev) => parts.kv.update(&key, value, rev).await.map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                    WriteError::Conflict
                } else {
                    WriteError::Unreachable(e.to_string())
                }
            }),
            None => parts.kv.create(&key, value).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    WriteError::Conflict
                } else {
                    WriteError::Unreachable(e.to_string())
                }
            }),
        };
        if result.is_ok() {
            self.metrics.inc("veneer_fleet_writes_total", &[]);
        }
        result
    }

    /// Deletes a tenant's key (a tombstone every node applies), unless it changed since
    /// revision `expect` (this node's last applied).
    pub async fn delete_tenant(&self, name: &str, expect: Option<u64>) -> Result<(), WriteError> {
        let parts = self
            .writable()
            .await
            .map_err(|e| WriteError::Unreachable(e.message))?;
        parts
            .kv
            .delete_expect_revision(tenant_key(name), expect)
            .await
            .map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                    WriteError::Conflict
                } else {
                    WriteError::Unreachable(e.to_string())
                }
            })
    }

    /// What a deleted tenant leaves in the fleet besides its key: its profiles (every
    /// `p.HEX(tenant).*` subject of the profile bucket's stream, purged at once) and its event
    /// counts (reset to start after the stream's current end, so events recorded before the
    /// deletion never count for a new tenant of the same name).
    pub async fn purge_tenant(&self, name: &str) -> anyhow::Result<()> {
        let profiles = self
            .js
            .get_stream(format!("KV_{PROFILE_BUCKET}"))
            .await
            .context("the profile bucket")?;
        profiles
            .purge()
            .filter(format!("$KV.{PROFILE_BUCKET}.p.{}.>", hex(name)))
            .await
            .context("purging the tenant's profiles")?;
        crate::outbox::reset_counts(self, name).await
    }

    /// The next plugin version id, unique in the fleet (a compare-and-set counter), above
    /// `floor` (the highest id this node holds).
    pub async fn next_version_id(&self, floor: i64) -> Result<i64, ApiError> {
        let parts = self.writable().await?;
        for _ in 0..32 {
            let entry = parts
                .kv
                .entry(VERSION_SEQ_KEY)
                .await
                .map_err(|e| self.unreachable(&e.to_string()))?;
            let (current, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .unwrap_or(0),
                    Some(e.revision),
                ),
                _ => (0, None),
            };
            let next = current.max(floor) + 1;
            let value = Bytes::from(next.to_string());
            let stored = match revision {
                Some(rev) => parts.kv.update(VERSION_SEQ_KEY, value, rev).await.is_ok(),
                None => parts.kv.create(VERSION_SEQ_KEY, value).await.is_ok(),
            };
            if stored {
                return Ok(next);
            }
        }
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "could not allocate a plugin version id: too many concurrent uploads in the fleet",
        ))
    }

    /// The bucket's last revision (for the lag metric).
    pub async fn last_revision(&self) -> anyhow::Result<u64> {
        let parts = self.parts().await?;
        let mut kv_stream = self
            .js
            .get_stream(format!("KV_{CONFIG_BUCKET}"))
            .await
            .context("the config bucket's stream")?;
        let _ = &parts.kv;
        Ok(kv_stream.info().await?.state.last_sequence)
    }

    /// Records the connection state in metrics (1 connected, 0 not).
    pub fn observe(&self) {
        self.metrics.set(
            "veneer_fleet_connected",
            &[("node", self.node.as_str())],
            u64::from(self.connected()),
        );
    }
}

/// Watches the config bucket and applies what it sees, re-syncing the whole bucket on start,
/// on every reconnection, when a write was refused and every `resync_secs`.
pub fn spawn_sync(control: Arc<crate::control::Control>) {
    let Some(fleet) = control.fleet().cloned() else {
        return;
    };
    let lagging = fleet.clone();
    tokio::spawn(async move {
        let node = lagging.node.clone();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if lagging.connected()
                && let Ok(Ok(last)) =
                    tokio::time::timeout(Duration::from_secs(5), lagging.last_revision()).await
            {
                let seen = lagging.seen.load(std::sync::atomic::Ordering::Relaxed);
                lagging.metrics.set(
                    "veneer_fleet_lag_revisions",
                    &[("node", node.as_str())],
                    last.saturating_sub(seen),
                );
            }
        }
    });
    tokio::spawn(async move {
        let mut warned = false;
        loop {
            fleet.observe();
            let parts = match fleet.parts().await {
                Ok(parts) => parts,
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %format!("{e:#}"), "the cluster is unreachable: serving the local copy, refusing admin changes");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = follow(&control, &fleet, parts).await {
                if !warned {
                    tracing::warn!(error = %format!("{e:#}"), "fleet sync interrupted; retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            } else {
                warned = false;
            }
        }
    });
}

/// One session of following the bucket: a full re-sync, then the watch from the revision
/// the re-sync started at (what changed during it is seen twice, harmlessly). Returns when
/// the connection was lost and came back (a new session starts), or on an error.
async fn follow(
    control: &crate::control::Control,
    fleet: &Fleet,
    parts: &Parts,
) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    let start = fleet.last_revision().await?;
    let mut seen = resync(control, fleet, parts).await?.max(start);
    let mut watch = parts.kv.watch_all_from_revision(start + 1).await?;
    let mut watched = start;
    let mut every = tokio::time::interval(fleet.resync);
    every.reset();
    let mut status = tokio::time::interval(Duration::from_secs(1));
    let mut was_connected = true;
    let node = fleet.node.clone();
    loop {
        tokio::select! {
            entry = watch.next() => {
                let entry = match entry {
                    Some(Ok(entry)) => entry,
                    // A watch can fail on a busy node (a missed heartbeat) or when its server
                    // dies: a new one from the last revision seen, at once; the periodic
                    // re-sync covers anything it might skip.
                    failed => {
                        tracing::debug!(error = ?failed.map(|r| r.err()), "the config bucket's watch failed; watching again");
                        watch = parts.kv.watch_all_from_revision(watched + 1).await?;
                        continue;
                    }
                };
                watched = entry.revision;
                seen = seen.max(entry.revision);
                fleet.seen.fetch_max(seen, std::sync::atomic::Ordering::Relaxed);
                apply(control, fleet, &entry.key, entry.revision, &entry.operation, &entry.value).await;
            }
            _ = every.tick() => {
                seen = seen.max(resync(control, fleet, parts).await?);
            }
            () = fleet.kick.notified() => {
                seen = seen.max(resync(control, fleet, parts).await?);
            }
            _ = status.tick() => {
                fleet.observe();
                let connected = fleet.connected();
                if connected && !was_connected {
                    tracing::info!("reconnected to the cluster: re-syncing");
                    return Ok(());
                }
                was_connected = connected;
                fleet.seen.fetch_max(seen, std::sync::atomic::Ordering::Relaxed);
                fleet.metrics.set("veneer_fleet_applied_revision", &[("node", node.as_str())], seen);
            }
        }
    }
}

async fn apply(
    control: &crate::control::Control,
    fleet: &Fleet,
    key: &str,
    revision: u64,
    operation: &kv::Operation,
    value: &[u8],
) {
    if !key.starts_with("tenant.") {
        return;
    }
    let value = (*operation == kv::Operation::Put).then_some(value);
    let started = std::time::Instant::now();
    match control.apply_fleet(key, revision, value).await {
        Ok(()) => fleet
            .metrics
            .observe("veneer_fleet_apply_seconds", &[], started.elapsed()),
        Err(e) => {
            fleet.metrics.inc("veneer_fleet_apply_failures_total", &[]);
            tracing::warn!(key, revision, error = %format!("{e:#}"), "fleet change not applied; retried at the next re-sync");
        }
    }
}

/// Brings every tenant to the bucket's latest state: keys this node has not applied at
/// their current revision are applied; tenants the fleet deleted are deleted; tenants only
/// this node has (seeded from its config before it joined) are offered to the fleet.
/// Returns the highest revision seen.
async fn resync(
    control: &crate::control::Control,
    fleet: &Fleet,
    parts: &Parts,
) -> anyhow::Result<u64> {
    use futures_util::TryStreamExt as _;
    let keys: Vec<String> = parts.kv.keys().await?.try_collect().await?;
    let mut live = std::collections::HashSet::new();
    let mut seen = 0;
    for key in keys.into_iter().filter(|k| k.starts_with("tenant.")) {
        let Some(entry) = parts.kv.entry(key.as_str()).await? else {
            continue;
        };
        seen = seen.max(entry.revision);
        if entry.operation != kv::Operation::Put {
            continue;
        }
        live.insert(key.clone());
        let applied = control.store.fleet_applied(&key)?;
        let digest = serde_json::from_slice::<Envelope>(&entry.value)
            .map(|e| e.digest)
            .unwrap_or_default();
        if applied.is_some_and(|(rev, d)| rev == entry.revision && d == digest) {
            continue;
        }
        apply(
            control,
            fleet,
            &key,
            entry.revision,
            &entry.operation,
            &entry.value,
        )
        .await;
    }
    for name in control.store.tenant_names()? {
        let key = tenant_key(&name);
        if live.contains(&key) {
            continue;
        }
        match control.store.fleet_applied(&key)? {
            // It was in the fleet and is gone: deleted on another node.
            Some((rev, _)) => {
                let rev = parts
                    .kv
                    .entry(key.as_str())
                    .await?
                    .map_or(rev, |e| e.revision);
                apply(control, fleet, &key, rev, &kv::Operation::Delete, &[]).await;
            }
            None => {
                if let Err(e) = control.offer_fleet(&name).await {
                    tracing::warn!(tenant = %name, error = %e.message, "could not share a local tenant with the fleet");
                } else {
                    tracing::info!(tenant = %name, "local tenant shared with the fleet");
                }
            }
        }
    }
    Ok(seen)
}

/// The KV bucket holding customers' and visitors' profiles.
pub const PROFILE_BUCKET: &str = "veneer_profiles";
/// Profile changes a node keeps for the fleet while NATS does not take them (the newest per
/// profile); past this the oldest are dropped and counted.
const PROFILE_BACKLOG: usize = 100_000;

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(hex: &str) -> Option<String> {
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// A profile's key in the bucket: `p.<tenant hex>.<subject key hex>`.
pub fn profile_key(tenant: &str, subject: &str) -> String {
    format!("p.{}.{}", hex(tenant), hex(subject))
}

fn key_profile(key: &str) -> Option<(String, String)> {
    let rest = key.strip_prefix("p.")?;
    let (tenant, subject) = rest.split_once('.')?;
    Some((unhex(tenant)?, unhex(subject)?))
}

/// A profile as the bucket holds it.
#[derive(Serialize, Deserialize)]
struct ProfileValue {
    node: String,
    body: String,
}

/// Profiles shared through the `veneer_profiles` bucket: a node writes each profile it
/// stores (after the profile store's write-behind, [`crate::profile::WRITE_EVERY`]), reads a
/// profile it does not cache from the bucket first, and drops its cached copy when another
/// node stores one. A change on one node is therefore read by the others within
/// `WRITE_EVERY` + one KV round trip (≈ 0.2 s on a LAN).
pub struct ProfileShare {
    fleet: Arc<Fleet>,
    tx: tokio::sync::mpsc::Sender<Vec<crate::profile::Change>>,
    kv: tokio::sync::OnceCell<kv::Store>,
}

impl ProfileShare {
    /// Shares `profiles` through `fleet`: starts the publisher and the watcher.
    pub fn start(fleet: Arc<Fleet>, profiles: Arc<crate::profile::Profiles>) -> Arc<ProfileShare> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let share = Arc::new(ProfileShare {
            fleet,
            tx,
            kv: tokio::sync::OnceCell::new(),
        });
        tokio::spawn(share.clone().publish_loop(rx));
        tokio::spawn(share.clone().watch_loop(profiles.clone()));
        profiles.attach(share.clone());
        share
    }

    async fn kv(&self) -> anyhow::Result<&kv::Store> {
        self.kv
            .get_or_try_init(|| {
                open_bucket(
                    &self.fleet.js,
                    kv::Config {
                        bucket: PROFILE_BUCKET.into(),
                        description: "Veneer customers' and visitors' profiles".into(),
                        history: 1,
                        num_replicas: self.fleet.replicas,
                        storage: jetstream::stream::StorageType::File,
                        ..Default::default()
                    },
                )
            })
            .await
    }

    async fn publish_loop(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::Receiver<Vec<crate::profile::Change>>,
    ) {
        // The newest change per profile not yet taken by NATS, oldest first.
        let mut backlog: backlog::Backlog = backlog::Backlog::default();
        loop {
            let more = if backlog.is_empty() {
                rx.recv().await
            } else {
                tokio::time::timeout(Duration::from_secs(1), rx.recv())
                    .await
                    .unwrap_or(Some(Vec::new()))
            };
            let Some(changes) = more else { return };
            for (tenant, subject, body) in changes {
                backlog.insert(profile_key(&tenant, &subject), body);
            }
            while let Ok(changes) = rx.try_recv() {
                for (tenant, subject, body) in changes {
                    backlog.insert(profile_key(&tenant, &subject), body);
                }
            }
            let dropped = backlog.trim(PROFILE_BACKLOG);
            if dropped > 0 {
                self.fleet
                    .metrics
                    .add("veneer_fleet_profile_changes_dropped_total", &[], dropped);
            }
            if !self.fleet.connected() {
                continue;
            }
            let Ok(kv) = self.kv().await else { continue };
            while let Some((key, body)) = backlog.first() {
                let sent = match body {
                    Some(body) => {
                        let value = serde_json::to_vec(&ProfileValue {
                            node: self.fleet.node.clone(),
                            body: body.clone(),
                        })
                        .unwrap_or_default();
                        kv.put(key.as_str(), value.into()).await.is_ok()
                    }
                    None => kv.delete(key.as_str()).await.is_ok(),
                };
                if !sent {
                    break;
                }
                backlog.pop_first();
            }
            self.fleet.metrics.set(
                "veneer_fleet_profile_backlog",
                &[("node", self.fleet.node.as_str())],
                backlog.len() as u64,
            );
        }
    }

    async fn watch_loop(self: Arc<Self>, profiles: Arc<crate::profile::Profiles>) {
        use futures_util::StreamExt as _;
        loop {
            let watch = match self.kv().await {
                Ok(kv) => kv.watch_all().await.map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            let Ok(mut watch) = watch else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            while let Some(Ok(entry)) = watch.next().await {
                let Some((tenant, subject)) = key_profile(&entry.key) else {
                    continue;
                };
                if entry.operation != kv::Operation::Put {
                    profiles.apply_remote(&tenant, &subject, None);
                    continue;
                }
                let Ok(value) = serde_json::from_slice::<ProfileValue>(&entry.value) else {
                    continue;
                };
                if value.node != self.fleet.node {
                    profiles.apply_remote(&tenant, &subject, Some(value.body));
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

impl crate::profile::Share for ProfileShare {
    fn changed(&self, changes: Vec<crate::profile::Change>) {
        if self.tx.try_send(changes).is_err() {
            self.fleet
                .metrics
                .inc("veneer_fleet_profile_changes_dropped_total", &[]);
        }
    }

    fn read(
        &self,
        tenant: &str,
        subject: &str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Option<String>, ()>> + Send + '_>> {
        let key = profile_key(tenant, subject);
        Box::pin(async move {
            if !self.fleet.connected() {
                return Err(());
            }
            let kv = self.kv().await.map_err(|_| ())?;
            match kv.get(key.as_str()).await {
                Ok(Some(v)) => serde_json::from_slice::<ProfileValue>(&v)
                    .map(|p| Some(p.body))
                    .map_err(|_| ()),
                Ok(None) => Ok(None),
                Err(_) => Err(()),
            }
        })
    }
}

/// An insertion-ordered map with the newest value per key (the profile backlog).
mod backlog {
    use std::collections::{BTreeMap, HashMap};

    /// Newest body per key, oldest key first.
    #[derive(Default)]
    pub struct Backlog {
        order: BTreeMap<u64, String>,
        values: HashMap<String, (u64, Option<String>)>,
        next: u64,
    }

    impl Backlog {
        pub fn is_empty(&self) -> bool {
            self.values.is_empty()
        }

        pub fn len(&self) -> usize {
            self.values.len()
        }

        pub fn insert(&mut self, key: String, body: Option<String>) {
            if let Some((seq, _)) = self.values.remove(&key) {
                self.order.remove(&seq);
            }
            self.next += 1;
            self.order.insert(self.next, key.clone());
            self.values.insert(key, (self.next, body));
        }

        pub fn first(&self) -> Option<(String, Option<String>)> {
            let (_, key) = self.order.first_key_value()?;
            let (_, body) = self.values.get(key)?;
            Some((key.clone(), body.clone()))
        }

        pub fn pop_first(&mut self) {
            if let Some((_, key)) = self.order.pop_first() {
                self.values.remove(&key);
            }
        }

        /// Drops the oldest changes past `max`; how many. Deletions (erasures) are never
        /// dropped: a profile erased here must not come back elsewhere.
        pub fn trim(&mut self, max: usize) -> u64 {
            let mut dropped = 0;
            let mut kept = Vec::new();
            while self.values.len() > max + kept.len() {
                let Some((seq, key)) = self.order.pop_first() else {
                    break;
                };
                if matches!(self.values.get(&key), Some((_, None))) {
                    kept.push((seq, key));
                } else {
                    self.values.remove(&key);
                    dropped += 1;
                }
            }
            self.order.extend(kept);
            dropped
        }
    }
}
