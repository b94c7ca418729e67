//! The control plane: every change to what the host serves goes through here, in one order —
//! apply the change to the stored tenant in memory, build the whole new tenant from it
//! (rules parsed, fragments parsed, every plugin compiled and linked, off the request path and
//! through the compile cache), write it to the store with its audit entry in one transaction,
//! then swap the new snapshot in. An invalid change fails at the build and changes nothing; a
//! failed write leaves the old snapshot serving; requests in flight finish with the snapshot
//! they started with.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::StatusCode;
use serde_json::{Value, json};
use veneer_rules::RuleSet;

use crate::app::{self, App, Fragments, Tenant};
use crate::config::{self, Config};
use crate::store::{Document, Scope, Store, StoreError, TenantRecord, TokenRecord};

/// A refused or failed control-plane call: its status and a message for the caller.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the caller.
    pub message: String,
}

impl ApiError {
    /// A 400/404/409/413/422 or 500 with `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            StoreError::Db(e) => {
                tracing::error!(error = %e, "state store failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the state store failed")
            }
        }
    }
}

/// Who is making a call, after authentication.
#[derive(Debug, Clone)]
pub struct Principal {
    /// For the audit log: `operator:env`, `operator:3`, `tenant:shop:5`.
    pub actor: String,
    /// What the token grants.
    pub scope: Scope,
}

impl Principal {
    /// Whether this principal may act on `tenant`.
    pub fn may(&self, tenant: &str) -> bool {
        match &self.scope {
            Scope::Operator => true,
            Scope::Tenant(t) => t == tenant,
        }
    }
}

/// The control plane over one store and one running app.
pub struct Control {
    /// The state store.
    pub store: Arc<Store>,
    app: Arc<App>,
    server: config::Server,
    base_dir: std::path::PathBuf,
    /// Changes are serialized: two concurrent changes to one tenant must not each build from
    /// the same old state and lose the other's edit.
    lock: tokio::sync::Mutex<()>,
    bootstrap: Option<[u8; 32]>,
    tokens: ArcSwap<Vec<TokenRecord>>,
    loaded: std::sync::atomic::AtomicBool,
    failed: std::sync::Mutex<std::collections::HashSet<String>>,
    /// In a fleet: the cluster every change is shared through.
    fleet: Option<Arc<crate::fleet::Fleet>>,
}

/// Largest plugin component accepted by an upload.
pub const MAX_PLUGIN_BYTES: usize = 32 << 20;

/// Runs blocking store work off the async workers; a task that panics is a 500.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("control-plane task failed: {e}"),
        ))
    })
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Compares two digests without an early exit.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// RFC 7396 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

impl Control {
    /// A control plane for `app` over `store`; `admin_token` is the bootstrap operator token
    /// (`VENEER_ADMIN_TOKEN` or the config's).
    pub fn new(
        store: Store,
        app: Arc<App>,
        config: &Config,
        admin_token: Option<&str>,
    ) -> Result<Control, ApiError> {
        let tokens = store.tokens()?;
        Ok(Control {
            store: Arc::new(store),
            app,
            server: config.server.clone(),
            base_dir: config.base_dir.clone(),
            lock: tokio::sync::Mutex::new(()),
            bootstrap: admin_token.map(digest),
            tokens: ArcSwap::from_pointee(tokens),
            loaded: std::sync::atomic::AtomicBool::new(false),
            failed: std::sync::Mutex::new(std::collections::HashSet::new()),
            fleet: None,
        })
    }

    /// Makes this control plane a fleet node's: changes are shared through `fleet` and
    /// refused (503) while it is unreachable.
    pub fn with_fleet(mut self, fleet: Arc<crate::fleet::Fleet>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// The fleet this node belongs to, if any.
    pub fn fleet(&self) -> Option<&Arc<crate::fleet::Fleet>> {
        self.fleet.as_ref()
    }

    /// The plugin contract version a component targets ("" when it is not a component).
    fn contract_of(&self, bytes: &[u8]) -> String {
        self.app
            .runtime
            .inspect(bytes)
            .map(|i| i.version.to_string())
            .unwrap_or_default()
    }

    /// In a fleet, refuses a change before anything is touched while NATS is unreachable.
    async fn gate(&self) -> Result<(), ApiError> {
        if let Some(fleet) = &self.fleet {
            fleet.writable().await?;
        }
        Ok(())
    }

    /// In a fleet, writes the tenant as this node now stores it to the config bucket
    /// (components first, so no node sees a state whose plugins it cannot fetch). A refusal
    /// leaves the local store ahead of the fleet until the re-sync it triggers puts the
    /// fleet's state back, so the caller hears of it and nothing diverges for long.
    async fn share(&self, tenant: &str) -> Result<(), ApiError> {
        use crate::fleet::{TenantState, WriteError, tenant_key};
        let Some(fleet) = &self.fleet else {
            return Ok(());
        };
        let key = tenant_key(tenant);
        let expect = self
            .store
            .fleet_applied(&key)?
            .filter(|(_, digest)| !digest.is_empty())
            .map(|(rev, _)| rev);
        let result = match self.store.tenant(tenant)? {
            None => fleet.delete_tenant(tenant, expect).await,
            Some(rec) => {
                let versions = self.store.version_list(tenant)?;
                let mut shared = Ok(());
                for (_, id, sha) in &versions {
                    if fleet.has_plugin(sha).await {
                        continue;
                    }
                    let bytes =
                        self.store
                            .version_bytes(tenant, &versions_plugin(&versions, *id), *id)?;
                    shared = fleet.put_plugin(sha, &bytes).await;
                    if shared.is_err() {
                        break;
                    }
                }
                match shared {
                    Ok(()) => {
                        let state = TenantState::of(&rec, versions);
                        fleet
                            .put_tenant(tenant, &state, expect)
                            .await
                            .and_then(|rev| {
                                self.store
                                    .set_fleet_applied(&key, rev, &state.digest())
                                    .map_err(|e| WriteError::Unreachable(e.to_string()))
                            })
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                match expect {
                    // The fleet decides now: the next re-sync puts its state back here.
                    Some(rev) => self.store.set_fleet_applied(&key, rev, "unshared")?,
                    // Never shared: still this node's alone (a new tenant's caller undoes it).
                    None => self.store.clear_fleet_applied(&key)?,
                }
                fleet.kick.notify_one();
                fleet
                    .metrics()
                    .inc("veneer_fleet_write_failures_total", &[]);
                Err(match e {
                    WriteError::Conflict => ApiError::new(
                        StatusCode::CONFLICT,
                        format!(
                            "tenant {tenant:?} was changed on another node meanwhile: this change is not applied; read the tenant again and retry"
                        ),
                    ),
                    WriteError::Unreachable(why) => fleet.unreachable(&why),
                })
            }
        }
    }

    /// Applies a fleet revision of `key` (`None`: the key was deleted) the way a local change
    /// is applied — built off the request path, stored, swapped in — unless this node already
    /// serves that state. Idempotent: a replayed revision, or one older than the one applied,
    /// changes nothing.
    pub async fn apply_fleet(
        &self,
        key: &str,
        revision: u64,
        value: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        use crate::fleet::{Envelope, TenantState};
        use anyhow::Context as _;
        let Some(fleet) = &self.fleet else {
            return Ok(());
        };
        let Some(name) = crate::fleet::key_tenant(key) else {
            return Ok(());
        };
        let actor = format!("fleet:{}", fleet.node);
        let envelope: Option<Envelope> = value
            .map(serde_json::from_slice)
            .transpose()
            .with_context(|| format!("fleet key {key} revision {revision} is unreadable"))?;
        // Components are fetched before the lock is taken (a fetch can wait out a NATS
        // outage; admin calls must not wait behind it) and at most 30 s.
        // Every component the state names, read from this node's store or fetched.
        let mut fetched: HashMap<String, Vec<u8>> = HashMap::new();
        if let Some(env) = &envelope {
            let wanted = env
                .state
                .plugins
                .iter()
                .map(|p| &p.sha256)
                .chain(env.state.versions.iter().map(|(_, _, sha)| sha));
            for sha in wanted {
                if fetched.contains_key(sha) {
                    continue;
                }
                let bytes = match self.store.bytes_by_sha(sha)? {
                    Some(bytes) => bytes,
                    None => tokio::time::timeout(
                        std::time::Duration::from_secs(30),
                        fleet.get_plugin(sha),
                    )
                    .await
                    .map_err(|_| anyhow::anyhow!("fetching plugin {sha} timed out"))??,
                };
                fetched.insert(sha.clone(), bytes);
            }
        }
        let _guard = self.lock.lock().await;
        let applied = self.store.fleet_applied(key)?;
        let unshared = applied.as_ref().is_some_and(|(_, d)| d == "unshared");
        if let Some((rev, _)) = &applied
            && revision < *rev
            && !unshared
        {
            // A replay (the watch and a re-sync overlap): this node is past it.
            return Ok(());
        }
        let Some(envelope) = envelope else {
            if self.store.tenant(&name)?.is_some() {
                tracing::info!(tenant = %name, revision, "tenant deleted in the fleet");
                self.remove_tenant(&actor, &name)
                    .map_err(|e| anyhow::anyhow!(e.message))?;
            }
            self.store.set_fleet_applied(key, revision, "")?;
            return Ok(());
        };
        let local = self.store.tenant(&name)?;
        // Already stored and served — unless this node's own write was left unshared: then
        // the store may hold it without the snapshot serving it.
        if !unshared
            && let Some(rec) = &local
            && TenantState::of(rec, self.store.version_list(&name)?).digest() == envelope.digest
        {
            self.store
                .set_fleet_applied(key, revision, &envelope.digest)?;
            return Ok(());
        }
        let state = envelope.state;
        let mut spec: config::Tenant = serde_json::from_value(state.spec.clone())
            .with_context(|| format!("fleet key {key}: tenant spec"))?;
        spec.name = name.clone();
        let mut contracts = HashMap::new();
        let mut component = |sha: &str| -> anyhow::Result<Vec<u8>> {
            let bytes = fetched
                .get(sha)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("plugin {sha} is not available"))?;
            let contract = self.contract_of(&bytes);
            contracts.insert(sha.to_owned(), contract);
            Ok(bytes)
        };
        let mut plugins = Vec::new();
        for p in &state.plugins {
            let bytes = component(&p.sha256)?;
            plugins.push(crate::store::PluginRecord {
                name: p.name.clone(),
                version: p.version,
                sha256: p.sha256.clone(),
                bytes,
                params: TenantState::params(p),
            });
        }
        // Inactive versions too, so an activation or rollback on this node finds them.
        let mut inactive = Vec::new();
        for (plugin, id, sha) in &state.versions {
            if plugins
                .iter()
                .any(|p| p.sha256 == *sha && p.name == *plugin)
                || inactive
                    .iter()
                    .any(|p: &crate::store::PluginRecord| p.sha256 == *sha && p.name == *plugin)
            {
                continue;
            }
            let bytes = component(sha)?;
            inactive.push(crate::store::PluginRecord {
                name: plugin.clone(),
                version: *id,
                sha256: sha.clone(),
                bytes,
                params: HashMap::new(),
            });
        }
        let rec = TenantRecord {
            spec,
            disabled: state.disabled,
            rules: state.rules,
            fragments: state.fragments,
            plugins,
        };
        let built = match self.build(rec.clone()).await {
            Ok(b) => b,
            Err(e) => {
                // Stored all the same: this node's store is the fleet's state, so an edit
                // made here later starts from it (and is refused while it cannot be built)
                // rather than quietly writing an older state back to the fleet. Recorded as
                // applied: retrying the same revision changes nothing; the old snapshot keeps
                // serving and /readyz says so until a later revision builds.
                self.store
                    .replace_tenant(&actor, &rec, &inactive, &contracts)?;
                tracing::error!(tenant = %name, revision, error = %e.message, "fleet change cannot be served on this node");
                self.failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(name);
                self.store
                    .set_fleet_applied(key, revision, &envelope.digest)?;
                return Ok(());
            }
        };
        // Served first, stored after: the fleet already holds this state durably, so a
        // slow disk (an fsync behind other writes) delays only this node's copy, never the
        // swap. A crash in between is caught up from the bucket on start (the revision is
        // recorded last).
        self.publish(&name, built).await;
        self.store
            .replace_tenant(&actor, &rec, &inactive, &contracts)?;
        self.store
            .set_fleet_applied(key, revision, &envelope.digest)?;
        tracing::info!(tenant = %name, revision, from = %envelope.node, "fleet change applied");
        Ok(())
    }

    /// Shares a tenant this node has and the fleet has never had (a node seeded from its
    /// config before it joined); false when the fleet has it already.
    pub async fn offer_fleet(&self, tenant: &str) -> Result<(), ApiError> {
        let _guard = self.lock.lock().await;
        self.share(tenant).await
    }

    fn remove_tenant(&self, actor: &str, name: &str) -> Result<(), ApiError> {
        self.store.delete_tenant(actor, name)?;
        self.app.swap_tenant(name, None);
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        self.reload_tokens()?;
        // Its reports go with it: a new tenant of the same name starts from nothing.
        if let Some(ledger) = &self.app.ledger {
            ledger.purge(name);
        }
        self.app.profiles.purge(name);
        if let Some(log) = self.app.analytics.log() {
            log.purge(name);
        }
        Ok(())
    }

    /// The running host this control plane changes.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Whether every stored tenant has been loaded and is serving (a tenant that failed to
    /// load at start counts until a later change builds it or deletes it).
    pub fn ready(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
            && self
                .failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_empty()
    }

    /// Who holds `token`, if anyone. Every stored hash is compared, each in constant time.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let digest = digest(token);
        let mut found = None;
        if let Some(b) = &self.bootstrap
            && same(b, &digest)
        {
            found = Some(Principal {
                actor: "operator:env".into(),
                scope: Scope::Operator,
            });
        }
        for t in self.tokens.load().iter() {
            if same(&t.hash, &digest) && found.is_none() {
                found = Some(Principal {
                    actor: match &t.scope {
                        Scope::Operator => format!("operator:{}", t.id),
                        Scope::Tenant(name) => format!("tenant:{name}:{}", t.id),
                    },
                    scope: t.scope.clone(),
                });
            }
        }
        found
    }

    /// Imports the config's tenants (rules, fragments and plugin files included) into an
    /// empty store, once; afterwards the store is the source of truth.
    pub async fn seed(&self, config: &Config) -> anyhow::Result<()> {
        if self.store.seeded()? {
            if !config.tenants.is_empty() {
                tracing::info!(
                    "the state store was seeded before; [[tenant]] tables in the config are not read again (the store is the source of truth)"
                );
            }
            return Ok(());
        }
        // Not seeded but holding tenants: an earlier import was cut off (nothing else writes
        // before the import completes, the admin API is not served yet). Start it again from
        // empty, so the store ends with all of the config or, until then, none of it.
        for name in self.store.tenant_names()? {
            tracing::warn!(tenant = %name, "removing a tenant left by an interrupted config import");
            self.store.delete_tenant("config-import", &name)?;
        }
        for t in &config.tenants {
            let actor = "config-import";
            self.store.put_tenant(actor, t, true)?;
            if let Some(path) = &t.rules {
                let text = std::fs::read_to_string(config.resolve(path))?;
                self.store
                    .set_document(actor, &t.name, Document::Rules, &text)?;
            }
            if let Some(path) = &t.fragments {
                let text = std::fs::read_to_string(config.resolve(path))?;
                let map: HashMap<String, HashMap<String, String>> = toml::from_str(&text)?;
                let json = serde_json::to_string(&map)?;
                self.store
                    .set_document(actor, &t.name, Document::Fragments, &json)?;
            }
            for p in &t.plugins {
                let bytes = std::fs::read(config.resolve(&p.path))?;
                let contract = self.contract_of(&bytes);
                self.store.add_version(
                    actor,
                    &t.name,
                    &p.name,
                    &bytes,
                    &contract,
                    true,
                    Some(&p.params),
                    None,
                )?;
            }
        }
        self.store.mark_seeded()?;
        tracing::info!(
            tenants = config.tenants.len(),
            store = %self.store.path().display(),
            "config imported into the state store"
        );
        Ok(())
    }

    /// Builds and serves every stored tenant; a tenant that cannot be built is logged and not
    /// served (the others are).
    pub async fn load_all(&self) -> anyhow::Result<()> {
        let records = self.store.tenants()?;
        let mut failed = 0;
        for rec in records {
            let name = rec.spec.name.clone();
            if rec.disabled {
                continue;
            }
            match self.build(rec).await {
                Ok(t) => {
                    for p in t.iter().flat_map(|t| &t.plugins) {
                        tracing::info!(tenant = %name, plugin = p.name(), version = p.version(), contract = p.built_for(), "plugin loaded");
                    }
                    self.app.swap_tenant(&name, t.map(Arc::new));
                }
                Err(e) => {
                    failed += 1;
                    tracing::error!(tenant = %name, error = %e.message, "stored tenant cannot be served");
                    self.failed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(name);
                }
            }
        }
        if failed > 0 {
            tracing::warn!(
                failed,
                "/readyz stays 503 until the failed tenants are fixed or deleted"
            );
        }
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Builds a tenant from a stored (or about to be stored) record: everything is checked
    /// even for a disabled tenant, which is then not served (`None`).
    async fn build(&self, rec: TenantRecord) -> Result<Option<Tenant>, ApiError> {
        let app = self.app.clone();
        let disabled = rec.disabled;
        let built = blocking(move || build_tenant(&app, rec)).await?;
        Ok((!disabled).then_some(built))
    }

    /// Validates `spec` beside every other tenant (names, hosts, limits), as the config
    /// loader would.
    fn check_spec(&self, spec: &config::Tenant) -> Result<(), ApiError> {
        let mut specs: Vec<config::Tenant> = self
            .store
            .tenant_specs()?
            .into_iter()
            .map(|(t, _)| t)
            .filter(|t| t.name != spec.name)
            .collect();
        specs.push(spec.clone());
        let candidate = Config {
            server: self.server.clone(),
            tenants: specs,
            cluster: None,
            base_dir: self.base_dir.clone(),
            file: "(admin api)".into(),
        };
        candidate.validate().map_err(|e| {
            // `tenant[3] (shop).limits.x` → `limits.x`: the caller named the tenant already.
            let field = e
                .field
                .split_once(").")
                .map_or(e.field.as_str(), |(_, f)| f);
            ApiError::invalid(format!("{field}: {}", e.message))
        })?;
        let max = self.app.runtime.max_memory_bytes() as u64;
        if spec.limits.plugin_memory_mb << 20 > max {
            return Err(ApiError::invalid(format!(
                "limits.plugin_memory_mb: at most {} on this host (its instance pool's slot size)",
                max >> 20
            )));
        }
        Ok(())
    }

    fn record_spec(&self, tenant: &str) -> Result<config::Tenant, ApiError> {
        self.store
            .tenant_specs()?
            .into_iter()
            .map(|(t, _)| t)
            .find(|t| t.name == tenant)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no tenant {tenant:?}")))
    }

    /// The tenant's record, or 404.
    pub fn record(&self, tenant: &str) -> Result<TenantRecord, ApiError> {
        self.store
            .tenant(tenant)?
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no tenant {tenant:?}")))
    }

    /// Swaps in the tenant as stored now.
    async fn publish(&self, tenant: &str, built: Option<Tenant>) {
        let new = built.map(|mut t| {
            // Requests still running on the old snapshot hold its permits: the new one must
            // count against the same semaphores, or every change would reset the caps.
            if let Some(old) = self.app.tenant_named(tenant) {
                if old.config.limits.plugin_concurrency == t.config.limits.plugin_concurrency {
                    t.plugin_slots = old.plugin_slots.clone();
                }
                if old.config.limits.max_concurrent_requests
                    == t.config.limits.max_concurrent_requests
                {
                    t.request_slots = old.request_slots.clone();
                }
                // Cached origin responses stay valid while the origin is the same.
                if old.config.cache == t.config.cache && old.config.origin == t.config.origin {
                    t.cache = old.cache.clone();
                }
            }
            Arc::new(t)
        });
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(tenant);
        if let Some(t) = &new {
            for p in &t.plugins {
                tracing::info!(
                    tenant,
                    plugin = p.name(),
                    version = p.version(),
                    "plugin active"
                );
            }
        }
        self.app.swap_tenant(tenant, new);
    }

    /// Creates a tenant from a JSON spec (the `[[tenant]]` table's keys).
    pub async fn create_tenant(&self, who: &Principal, body: Value) -> Result<Value, ApiError> {
        let spec = parse_spec(body)?;
        self.gate().await?;
        let _guard = self.lock.lock().await;
        self.check_spec(&spec)?;
        if self.store.tenant(&spec.name)?.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("tenant {:?} already exists", spec.name),
            ));
        }
        let rec = TenantRecord {
            spec: spec.clone(),
            disabled: false,
            rules: None,
            fragments: None,
            plugins: Vec::new(),
        };
        let built = self.build(rec).await?;
        self.store.put_tenant(&who.actor, &spec, true)?;
        if let Err(e) = self.share(&spec.name).await {
            // Not in the fleet: not here either.
            let _ = self.remove_tenant(&who.actor, &spec.name);
            return Err(e);
        }
        self.publish(&spec.name, built).await;
        Ok(tenant_json(&spec, false))
    }

    /// Merges `patch` into a tenant's spec (hosts, origin, limits, ...; not its name).
    pub async fn update_tenant(
        &self,
        who: &Principal,
        name: &str,
        patch: Value,
    ) -> Result<Value, ApiError> {
        self.gate().await?;
        let _guard = self.lock.lock().await;
        let mut rec = self.record(name)?;
        let mut doc = tenant_json(&rec.spec, false);
        if let Value::Object(map) = &mut doc {
            map.remove("disabled");
        }
        merge_patch(&mut doc, &patch);
        if doc.get("name").and_then(Value::as_str) != Some(name) {
            return Err(ApiError::invalid("name: a tenant cannot be renamed"));
        }
        for key in ["rules", "fragments", "plugin"] {
            if patch.get(key).is_some() {
                return Err(ApiError::invalid(format!(
                    "{key}: changed through its own route, not the tenant's"
                )));
            }
        }
        let spec = parse_spec(doc)?;
        self.check_spec(&spec)?;
        rec.spec = spec.clone();
        let disabled = rec.disabled;
        let built = self.build(rec).await?;
        self.store.put_tenant(&who.actor, &spec, false)?;
        self.share(name).await?;
        self.publish(name, built).await;
        Ok(tenant_json(&spec, disabled))
    }

    /// Disables (stops serving) or enables a tenant.
    pub async fn set_disabled(
        &self,
        who: &Principal,
        name: &str,
        disabled: bool,
    ) -> Result<Value, ApiError> {
        self.gate().await?;
        let _guard = self.lock.lock().await;
        let mut rec = self.record(name)?;
        rec.disabled = disabled;
        let spec = rec.spec.clone();
        let built = self.build(rec).await?;
        self.store.set_disabled(&who.actor, name, disabled)?;
        self.share(name).await?;
        self.publish(name, built).await;
        Ok(tenant_json(&spec, disabled))
    }

    /// Deletes a tenant with its plugins, rules, fragments and tokens.
    pub async fn delete_tenant(&self, who: &Principal, name: &str) -> Result<Value, ApiError> {
        self.gate().await?;
        let _guard = self.lock.lock().await;
        self.remove_tenant(&who.actor, name)?;
        self.share(name).await?;
        if let Some(fleet) = &self.fleet
            && let Err(e) = fleet.purge_tenant(name).await
        {
            tracing::warn!(tenant = name, error = %format!("{e:#}"), "the deleted tenant's profiles or counts are still in the fleet");
        }
        Ok(json!({"deleted": name}))
    }

    /// A tenant's spec and state.
    pub fn tenant(&self, name: &str) -> Result<Value, ApiError> {
        let rec = self.record(name)?;
        let mut v = tenant_json(&rec.spec, rec.disabled);
        v["serving"] = json!(self.app.tenant_named(name).is_some());
        v["plugins"] = rec
            .plugins
            .iter()
            .map(|p| json!({"name": p.name, "version": p.version, "sha256": p.sha256, "params": p.params}))
            .collect();
        Ok(v)
    }

    /// Every tenant `who` may see.
    pub fn tenants(&self, who: &Principal) -> Result<Value, ApiError> {
        let mut out = Vec::new();
        for (spec, disabled) in self.store.tenant_specs()? {
            if who.may(&spec.name) {
                out.push(tenant_json(&spec, disabled));
            }
        }
        Ok(Value::Array(out))
    }

    /// Uploads a plugin version after compiling and linking it; with `activate`, it becomes
    /// the active version (with `params` when given) in the same step.
    pub async fn upload(
        &self,
        who: &Principal,
        tenant: &str,
        plugin: &str,
        bytes: Vec<u8>,
        activate: bool,
        params: Option<HashMap<String, String>>,
    ) -> Result<Value, ApiError> {
        check_plugin_name(plugin)?;
        if bytes.len() > MAX_PLUGIN_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a plugin may be at most {MAX_PLUGIN_BYTES} bytes"),
            ));
        }
        // Validate on its own first, before taking the lock (compiling can take a while and
        // must not hold up other changes), so the refusal names the upload, not the chain.
        let limits = app::plugin_limits(&self.record_spec(tenant)?.limits);
        let (app, probe) = (self.app.clone(), bytes.clone());
        let contract = blocking(move || {
            let info = app
                .runtime
                .inspect(&probe)
                .map_err(|e| ApiError::invalid(format!("not a usable plugin: {e:#}")))?;
            app.runtime
                .load_bytes("upload", &probe, HashMap::new(), limits)
                .map_err(|e| ApiError::invalid(format!("not a usable plugin: {e:#}")))?;
            Ok(info.version.to_string())
        })
        .await?;
        self.gate().await?;
        let _guard = self.lock.lock().await;
        let mut rec = self.record(tenant)?;
        let built = if activate {
            let params = params
                .clone()
                .or_else(|| {
                    rec.plugins
                        .iter()
                        .find(|p| p.name == plugin)
                        .map(|p| p.params.clone())
                })
                .unwrap_or_default();
            let sha256 = crate::store::sha256_hex(&bytes);
            let new = crate::store::PluginRecord {
                name: plugin.to_owned(),
                version: 0,
                sha256,
                bytes: bytes.clone(),
                params,
            };
            match rec.plugins.iter_mut().find(|p| p.name == plugin) {
                Some(p) => *p = new,
                None => rec.plugins.push(new),
            }
            Some(self.build(rec).await?)
        } else {
            None
        };
        // A fleet hands out version ids cluster-wide, so one id names one component on
        // every node.
        let fleet_id = match &self.fleet {
            Some(fleet) => Some(fleet.next_version_id(self.store.max_version_id()?).await?),
            None => None,
        };
        let id = self.store.add_version(
            &who.actor,
            tenant,
            plugin,
            &bytes,
            &contract,
            activate,
            params.as_ref(),
            fleet_id,
        )?;
        self.share(tenant).await?;
        if let Some(built) = built {
            // Label the new plugin with the id the store just gave it.
            let built = built.map(|t| relabel(t, plugin, id));
            self.publish(tenant, built).await;
        }
        Ok(
            json!({"version": id, "plugin": plugin, "tenant": tenant, "contract": contract,
                  "sha256": crate::store::sha256_hex(&bytes), "size": bytes.len(), "active": activate}),
        )
    }

    /// Activates a stored version.
    pub async fn activate(
        &self,
        who: &Principal,
        tenant: &str,
        plugin: &str,
        version: i64,
    ) -> Result<Value, ApiError> {
        self.gate().await?;
        let _guard = self.lock.lock().await;
        let mut rec = self.record(tenant)?;
        let bytes = self.store.version_bytes(tenant, plugin, version)?;
        set_plugin(&mut rec, plugin, version, bytes);
        let built = self.build(rec).await?;
        self.store
            .activate(&who.actor, tenant, plugin, version, None)?;
        self.share(tenant).await?;
        self.publish(tenant, built).await;
        Ok(json!({"tenant": tenant, "plugin": plugin, "version": version}))
    }

    /// Re-activates the version active before the current one.
    pub async fn rollback(
        &self,
        who: &Principal,
        tenant: &str,
        plugin: &str,
    ) -> Result<Value, ApiError> {
        self.gate().await?;
        let _guard = self.lock.lock().await;
        let mut rec = self.record(tenant)?;
        let Some((target, params)) = self.store.rollback_target(tenant, plugin)? else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("plugin {plugin:?} has no earlier version to roll back to"),
            ));
        };
        let bytes = self.store.version_bytes(tenant, plugin, target)?;
        set_plugin(&mut rec, plugin, target, bytes);
        if let Some(p) = rec.plugins.iter_mut().find(|p| p.name == plugin) {
            p.params = params;
        }
        let built = self.build(rec).await?;
        let version = self.store.rollback(&who.actor, tenant, plugin)?;
        self.share(tenant).await?;
        self.publish(tenant, built).await;
        Ok(json!({"tenant": tenant, "plugin": plugin, "version": version}))
    }

    /// Replaces a plugin's params.
    pub async fn set_params(
        &self,
        who: &Principal,
        tenant: &str,
        plugin: &str,
        params: HashMap<String, String>,
    ) -> Result<Value, ApiError> {
        self.gate().await?;
        let _guard = self.lock.lock().await;
        let mut rec = self.record(tenant)?;
        match rec.plugins.iter_mut().find(|p| p.name == plugin) {
            Some(p) => p.params = params.clone(),
            None => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("tenant {tenant:?} has no plugin {plugin:?}"),
                ));
            }
        }
        let built = self.build(rec).await?;
        self.store.set_params(&who.actor, tenant, plugin, &params)?;
        self.share(tenant).await?;
        self.publish(tenant, built).await;
        Ok(json!({"tenant": tenant, "plugin": plugin, "params": params}))
    }

    /// Takes a plugin out of the chain (its versions stay stored).
    pub async fn remove_plugin(
        &self,
        who: &Principal,
        tenant: &str,
        plugin: &str,
    ) -> Result<Value, ApiError> {
        self.gate().await?;
        let _guard = self.lock.lock().await;
        let mut rec = self.record(tenant)?;
        rec.plugins.retain(|p| p.name != plugin);
        let built = self.build(rec).await?;
        self.store.remove_plugin(&who.actor, tenant, plugin)?;
        self.share(tenant).await?;
        self.publish(tenant, built).await;
        Ok(json!({"tenant": tenant, "removed": plugin}))
    }

    /// A tenant's plugins and every stored version of each.
    pub fn plugins(&self, tenant: &str) -> Result<Value, ApiError> {
        let rec = self.record(tenant)?;
        let versions = self.store.plugin_versions(tenant)?;
        let out: Vec<Value> = versions
            .into_iter()
            .map(|(name, versions)| {
                let active = rec.plugins.iter().find(|p| p.name == name);
                json!({
                    "name": name,
                    "active": active.map(|p| p.version),
                    "params": active.map(|p| p.params.clone()),
                    "versions": versions,
                })
            })
            .collect();
        Ok(Value::Array(out))
    }

    /// A tenant's rules or fragments document (`{}` when none).
    pub fn document(&self, tenant: &str, kind: Document) -> Result<Value, ApiError> {
        let rec = self.record(tenant)?;
        let text = match kind {
            Document::Rules => rec.rules,
            Document::Fragments => rec.fragments,
        };
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| json!({})))
    }

    /// Replaces (or with `patch`, merges into) a tenant's rules or fragments; validated with
    /// the same errors as `veneer rules check` before anything changes.
    pub async fn set_document(
        &self,
        who: &Principal,
        tenant: &str,
        kind: Document,
        body: Value,
        patch: bool,
    ) -> Result<Value, ApiError> {
        self.gate().await?;
        let _guard = self.lock.lock().await;
        let mut rec = self.record(tenant)?;
        let doc = if patch {
            let current = match kind {
                Document::Rules => &rec.rules,
                Document::Fragments => &rec.fragments,
            };
            let mut doc = current
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or_else(|| json!({}));
            merge_patch(&mut doc, &body);
            doc
        } else {
            body
        };
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        match kind {
            Document::Rules => rec.rules = Some(text.clone()),
            Document::Fragments => rec.fragments = Some(text.clone()),
        }
        let built = self.build(rec).await?;
        self.store.set_document(&who.actor, tenant, kind, &text)?;
        self.share(tenant).await?;
        self.publish(tenant, built).await;
        Ok(doc)
    }

    /// Creates a token (for `tenant`, or an operator token); returns the secret, shown once.
    pub async fn create_token(
        &self,
        who: &Principal,
        tenant: Option<&str>,
        label: &str,
    ) -> Result<Value, ApiError> {
        let _guard = self.lock.lock().await;
        let secret = new_token();
        let id = self
            .store
            .create_token(&who.actor, tenant, label, &secret)?;
        self.reload_tokens()?;
        Ok(json!({"id": id, "token": secret, "tenant": tenant}))
    }

    /// Revokes a token.
    pub async fn revoke_token(&self, who: &Principal, id: i64) -> Result<Value, ApiError> {
        let _guard = self.lock.lock().await;
        self.store.revoke_token(&who.actor, id)?;
        self.reload_tokens()?;
        Ok(json!({"revoked": id}))
    }

    fn reload_tokens(&self) -> Result<(), ApiError> {
        self.tokens.store(Arc::new(self.store.tokens()?));
        Ok(())
    }
}

/// 244 random bits (two v4 UUIDs), URL-safe, with a prefix secret scanners recognise.
fn new_token() -> String {
    use base64::Engine as _;
    let mut bytes = uuid::Uuid::new_v4().as_bytes().to_vec();
    bytes.extend(uuid::Uuid::new_v4().as_bytes());
    format!(
        "vnr_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn check_plugin_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::invalid(
            "plugin name: 1 to 64 letters, digits, `-` or `_`",
        ));
    }
    Ok(())
}

fn set_plugin(rec: &mut TenantRecord, plugin: &str, version: i64, bytes: Vec<u8>) {
    let sha256 = crate::store::sha256_hex(&bytes);
    match rec.plugins.iter_mut().find(|p| p.name == plugin) {
        Some(p) => {
            p.version = version;
            p.bytes = bytes;
            p.sha256 = sha256;
        }
        None => rec.plugins.push(crate::store::PluginRecord {
            name: plugin.to_owned(),
            version,
            sha256,
            bytes,
            params: HashMap::new(),
        }),
    }
}

fn versions_plugin(versions: &[(String, i64, String)], id: i64) -> String {
    versions
        .iter()
        .find(|(_, v, _)| *v == id)
        .map(|(p, _, _)| p.clone())
        .unwrap_or_default()
}

fn relabel(mut t: Tenant, plugin: &str, id: i64) -> Tenant {
    t.plugins = std::mem::take(&mut t.plugins)
        .into_iter()
        .map(|p| {
            if p.name() == plugin {
                p.with_version(id as u64)
            } else {
                p
            }
        })
        .collect();
    t
}

fn parse_spec(mut body: Value) -> Result<config::Tenant, ApiError> {
    // The API's tenant is the `[[tenant]]` table without the file references.
    if let Value::Object(map) = &mut body {
        for key in ["rules", "fragments", "plugin"] {
            if map.contains_key(key) {
                return Err(ApiError::invalid(format!(
                    "{key}: set through its own route (/rules, /fragments, /plugins)"
                )));
            }
        }
    }
    serde_json::from_value(body).map_err(|e| ApiError::invalid(format!("tenant: {e}")))
}

fn tenant_json(spec: &config::Tenant, disabled: bool) -> Value {
    let mut v = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        for key in ["rules", "fragments", "plugin"] {
            map.remove(key);
        }
        map.insert("disabled".into(), json!(disabled));
    }
    v
}

/// Builds a tenant from a record: everything parsed, every plugin compiled and linked.
fn build_tenant(app: &App, rec: TenantRecord) -> Result<Tenant, ApiError> {
    let spec = rec.spec;
    let origin: http::Uri = spec
        .origin
        .parse()
        .map_err(|e| ApiError::invalid(format!("origin: {e}")))?;
    let origin = origin
        .authority()
        .cloned()
        .ok_or_else(|| ApiError::invalid("origin: no host"))?;
    let rules = match &rec.rules {
        None => RuleSet::default(),
        Some(text) => RuleSet::from_json_str(text).map_err(|errors| {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            ApiError::invalid(format!(
                "{} error(s) in the rules:\n{}",
                errors.len(),
                list.join("\n")
            ))
        })?,
    };
    let fragments = match &rec.fragments {
        None => Fragments::empty(&spec.default_locale),
        Some(text) => Fragments::parse_json(text, &spec.default_locale)
            .map_err(|e| ApiError::invalid(format!("fragments: {e}")))?,
    };
    let limits = app::plugin_limits(&spec.limits);
    let plugins = rec
        .plugins
        .iter()
        .map(|p| {
            app.runtime
                .load_bytes(&p.name, &p.bytes, p.params.clone(), limits)
                .map(|plugin| plugin.with_version(p.version as u64))
                .map_err(|e| {
                    ApiError::invalid(format!("plugin {:?} version {}: {e:#}", p.name, p.version))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(app::assemble(spec, origin, rules, fragments, plugins))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}, "n": [1]}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}, "n": [1]}));
    }
}
