//! The state store: tenants, plugin versions (the component bytes and their metadata), rules,
//! fragments, admin tokens and the audit log, in one SQLite database under `[server] data_dir`.
//!
//! SQLite (through rusqlite, with its bundled library so a fresh machine needs nothing
//! installed) gives what the control plane needs from an embedded store: transactions, so a
//! change and its audit entry are written together or not at all, and a journal that survives
//! a crash at any instant (WAL with `synchronous = FULL`: a committed change is on disk, an
//! interrupted one is rolled back on the next open). Schema changes are numbered migrations
//! tracked in `PRAGMA user_version`.
//!
//! Every method is blocking; the async callers run them on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config;

/// Schema migrations, in order; entry `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE rules (
        tenant TEXT PRIMARY KEY REFERENCES tenants(name) ON DELETE CASCADE,
        body TEXT NOT NULL
    );
    CREATE TABLE fragments (
        tenant TEXT PRIMARY KEY REFERENCES tenants(name) ON DELETE CASCADE,
        body TEXT NOT NULL
    );
    CREATE TABLE plugin_versions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
        plugin TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        contract TEXT NOT NULL,
        bytes BLOB NOT NULL,
        uploader TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX plugin_versions_by_plugin ON plugin_versions (tenant, plugin);
    CREATE TABLE plugins (
        tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        position INTEGER NOT NULL,
        active INTEGER NOT NULL REFERENCES plugin_versions(id),
        params TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (tenant, name)
    );
    CREATE TABLE activations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
        plugin TEXT NOT NULL,
        version INTEGER NOT NULL,
        params TEXT NOT NULL DEFAULT '{}',
        undone INTEGER NOT NULL DEFAULT 0,
        at INTEGER NOT NULL
    );
    CREATE TABLE tokens (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        hash TEXT NOT NULL UNIQUE,
        tenant TEXT REFERENCES tenants(name) ON DELETE CASCADE,
        label TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        tenant TEXT,
        target TEXT,
        before_hash TEXT,
        after_hash TEXT,
        detail TEXT
    );
    ",
    // 2: a fleet node's record of what it applied from the cluster (key → revision, digest).
    "
    CREATE TABLE fleet_applied (
        key TEXT PRIMARY KEY,
        revision INTEGER NOT NULL,
        digest TEXT NOT NULL
    );
    ",
];

/// Versions kept per plugin (besides the active one); older ones are deleted on upload.
pub const KEEP_VERSIONS: i64 = 20;

/// A plugin's params: what it reads with `config(key)`.
pub type Params = std::collections::HashMap<String, String>;

/// A store failure the API reports as the client's (404, 409) rather than the host's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such tenant, plugin or version.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with what is there (a tenant that exists, nothing to roll back to).
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] rusqlite::Error),
}

/// A plugin in a tenant's chain, with its active version.
#[derive(Debug, Clone)]
pub struct PluginRecord {
    /// Its name in the chain.
    pub name: String,
    /// The active version's id.
    pub version: i64,
    /// SHA-256 of the active component, hex.
    pub sha256: String,
    /// The component.
    pub bytes: Vec<u8>,
    /// Values the plugin reads with `config(key)`.
    pub params: std::collections::HashMap<String, String>,
}

/// Everything needed to build one tenant.
#[derive(Debug, Clone)]
pub struct TenantRecord {
    /// Hosts, origin, limits...; `rules`, `fragments` and `plugins` are not used from it.
    pub spec: config::Tenant,
    /// Not served while disabled.
    pub disabled: bool,
    /// The rules JSON, if any.
    pub rules: Option<String>,
    /// Fragments as JSON `{key: {locale: html}}`, if any.
    pub fragments: Option<String>,
    /// The plugin chain, in order.
    pub plugins: Vec<PluginRecord>,
}

/// One stored plugin version, without its bytes.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    /// Version id (global, increasing).
    pub id: i64,
    /// SHA-256 of the component, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: i64,
    /// The plugin contract it targets.
    pub contract: String,
    /// Who uploaded it.
    pub uploader: String,
    /// When, Unix seconds.
    pub created_at: i64,
    /// Whether it is the active version.
    pub active: bool,
}

/// One audit log entry.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// Entry id.
    pub id: i64,
    /// When, Unix seconds.
    pub at: i64,
    /// Who (`operator:env`, `operator:3`, `tenant:shop:5`, `config-import`).
    pub actor: String,
    /// What (`tenant.create`, `plugin.activate`, ...).
    pub action: String,
    /// The tenant concerned, if any.
    pub tenant: Option<String>,
    /// The object within it (a plugin name, a version).
    pub target: Option<String>,
    /// SHA-256 of the object before the change (absent when it did not exist).
    pub before_hash: Option<String>,
    /// SHA-256 after (absent when it was deleted).
    pub after_hash: Option<String>,
    /// Free-form detail.
    pub detail: Option<String>,
}

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant, tenants and tokens themselves.
    Operator,
    /// One tenant.
    Tenant(String),
}

/// A stored token: its hash and scope.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// Token id.
    pub id: i64,
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// What it grants.
    pub scope: Scope,
}

/// The state store.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// SHA-256, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// An audit entry to write with a change.
struct Audit<'a> {
    actor: &'a str,
    action: &'a str,
    tenant: Option<&'a str>,
    target: Option<&'a str>,
    before: Option<String>,
    after: Option<String>,
    detail: Option<String>,
}

fn audit(tx: &Transaction<'_>, a: Audit<'_>) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO audit (at, actor, action, tenant, target, before_hash, after_hash, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            now(),
            a.actor,
            a.action,
            a.tenant,
            a.target,
            a.before,
            a.after,
            a.detail
        ],
    )?;
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, bringing its schema up to date.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data_dir {}", dir.display()))?;
        let path = dir.join("veneer.db");
        let mut conn = Connection::open(&path)
            .with_context(|| format!("opening the store {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            anyhow::bail!(
                "the store {} has schema version {version}, newer than this host knows ({}): \
                 it was written by a newer Veneer",
                path.display(),
                MIGRATIONS.len()
            );
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            // Each migration and its version bump commit together.
            let tx = conn.transaction()?;
            tx.execute_batch(sql)
                .with_context(|| format!("store migration {}", i + 1))?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-written change: the transaction
        // it was in rolls back when dropped.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the config was imported already.
    pub fn seeded(&self) -> Result<bool, StoreError> {
        let conn = self.conn();
        let v: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'seeded'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(v.is_some())
    }

    /// Marks the config as imported.
    pub fn mark_seeded(&self) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('seeded', ?1)",
            params![now().to_string()],
        )?;
        Ok(())
    }

    /// Names of every tenant.
    pub fn tenant_names(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name FROM tenants ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(names)
    }

    /// Every tenant's spec and whether it is disabled, without documents or plugin bytes.
    pub fn tenant_specs(&self) -> Result<Vec<(config::Tenant, bool)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, spec, disabled FROM tenants ORDER BY name")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(name, spec, disabled)| {
                serde_json::from_str(&spec)
                    .map(|s| (s, disabled))
                    .map_err(|e| {
                        StoreError::Conflict(format!(
                            "stored spec of tenant {name:?} is unreadable: {e}"
                        ))
                    })
            })
            .collect()
    }

    /// One tenant with its rules, fragments and active plugins.
    pub fn tenant(&self, name: &str) -> Result<Option<TenantRecord>, StoreError> {
        let conn = self.conn();
        let row: Option<(String, bool)> = conn
            .query_row(
                "SELECT spec, disabled FROM tenants WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((spec, disabled)) = row else {
            return Ok(None);
        };
        let spec: config::Tenant = serde_json::from_str(&spec).map_err(|e| {
            StoreError::Conflict(format!("stored spec of tenant {name:?} is unreadable: {e}"))
        })?;
        let text = |table: &str| -> rusqlite::Result<Option<String>> {
            conn.query_row(
                &format!("SELECT body FROM {table} WHERE tenant = ?1"),
                params![name],
                |r| r.get(0),
            )
            .optional()
        };
        let rules = text("rules")?;
        let fragments = text("fragments")?;
        let mut stmt = conn.prepare(
            "SELECT p.name, p.active, v.sha256, v.bytes, p.params
             FROM plugins p JOIN plugin_versions v ON v.id = p.active
             WHERE p.tenant = ?1 ORDER BY p.position, p.name",
        )?;
        let plugins = stmt
            .query_map(params![name], |r| {
                let params: String = r.get(4)?;
                Ok(PluginRecord {
                    name: r.get(0)?,
                    version: r.get(1)?,
                    sha256: r.get(2)?,
                    bytes: r.get(3)?,
                    params: serde_json::from_str(&params).unwrap_or_default(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Some(TenantRecord {
            spec,
            disabled,
            rules,
            fragments,
            plugins,
        }))
    }

    /// The highest plugin version id stored here (0 when none).
    pub fn max_version_id(&self) -> Result<i64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT coalesce(max(id), 0) FROM plugin_versions",
            [],
            |r| r.get(0),
        )?)
    }

    /// The bytes of a stored version with this digest, if any tenant has one.
    pub fn bytes_by_sha(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT bytes FROM plugin_versions WHERE sha256 = ?1 LIMIT 1",
                params![sha256],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Every stored version of a tenant's plugins: (plugin, id, SHA-256), oldest first.
    pub fn version_list(&self, tenant: &str) -> Result<Vec<(String, i64, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT plugin, id, sha256 FROM plugin_versions WHERE tenant = ?1 ORDER BY id",
        )?;
        let rows = stmt
            .query_map(params![tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// What this node last applied from the fleet for `key`: (revision, digest).
    pub fn fleet_applied(&self, key: &str) -> Result<Option<(u64, String)>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT revision, digest FROM fleet_applied WHERE key = ?1",
                params![key],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()?)
    }

    /// Records that `key` is applied at `revision` (`digest` empty for a deletion).
    pub fn set_fleet_applied(
        &self,
        key: &str,
        revision: u64,
        digest: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO fleet_applied (key, revision, digest) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET revision = excluded.revision, digest = excluded.digest",
            params![key, revision as i64, digest],
        )?;
        Ok(())
    }

    /// Forgets what this node applied for `key` (a tenant it shared and the fleet refused:
    /// still this node's alone).
    pub fn clear_fleet_applied(&self, key: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM fleet_applied WHERE key = ?1", params![key])?;
        Ok(())
    }

    /// Makes a tenant exactly `rec` (as a fleet node applies another node's change), in one
    /// transaction: spec, state, documents, the plugin chain in order. Versions missing here
    /// are stored from `rec`'s bytes under their fleet-wide ids; a changed active version or
    /// params is recorded as an activation, so rollback works here as on the node that made it.
    pub fn replace_tenant(
        &self,
        actor: &str,
        rec: &TenantRecord,
        inactive: &[PluginRecord],
        contracts: &std::collections::HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let name = rec.spec.name.as_str();
        let spec = serde_json::to_string(&rec.spec)
            .map_err(|e| StoreError::Conflict(format!("tenant spec: {e}")))?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let at = now();
        tx.execute(
            "INSERT INTO tenants (name, spec, disabled, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, disabled = excluded.disabled,
                 updated_at = excluded.updated_at",
            params![name, spec, rec.disabled, at],
        )?;
        for (table, body) in [("rules", &rec.rules), ("fragments", &rec.fragments)] {
            match body {
                Some(text) => tx.execute(
                    &format!(
                        "INSERT INTO {table} (tenant, body) VALUES (?1, ?2)
                         ON CONFLICT (tenant) DO UPDATE SET body = excluded.body"
                    ),
                    params![name, text],
                )?,
                None => tx.execute(
                    &format!("DELETE FROM {table} WHERE tenant = ?1"),
                    params![name],
                )?,
            };
        }
        for p in inactive {
            let have: bool = tx.query_row(
                "SELECT count(*) > 0 FROM plugin_versions WHERE tenant = ?1 AND plugin = ?2 AND sha256 = ?3",
                params![name, p.name, p.sha256],
                |r| r.get(0),
            )?;
            if !have {
                insert_fleet_version(&tx, name, p, contracts, actor, at)?;
            }
        }
        let mut chain = Vec::new();
        for p in &rec.plugins {
            let found: Option<i64> = tx
                .query_row(
                    "SELECT id FROM plugin_versions WHERE tenant = ?2 AND plugin = ?3 AND sha256 = ?4
                     ORDER BY id = ?1 DESC, id DESC LIMIT 1",
                    params![p.version, name, p.name, p.sha256],
                    |r| r.get(0),
                )
                .optional()?;
            let id = match found {
                Some(id) => id,
                None => insert_fleet_version(&tx, name, p, contracts, actor, at)?,
            };
            let params_json = serde_json::to_string(&p.params).unwrap_or_default();
            let before: Option<(i64, String)> = tx
                .query_row(
                    "SELECT active, params FROM plugins WHERE tenant = ?1 AND name = ?2",
                    params![name, p.name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let same = before.as_ref().is_some_and(|(v, params)| {
                *v == id && serde_json::from_str::<Params>(params).ok().as_ref() == Some(&p.params)
            });
            if !same {
                tx.execute(
                    "INSERT INTO activations (tenant, plugin, version, params, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![name, p.name, id, params_json, at],
                )?;
            }
            chain.push((p.name.as_str(), id, params_json));
        }
        tx.execute("DELETE FROM plugins WHERE tenant = ?1", params![name])?;
        for (position, (plugin, id, params_json)) in chain.into_iter().enumerate() {
            tx.execute(
                "INSERT INTO plugins (tenant, name, position, active, params) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, plugin, position as i64, id, params_json],
            )?;
        }
        audit(
            &tx,
            Audit {
                actor,
                action: "fleet.apply",
                tenant: Some(name),
                target: None,
                before: None,
                after: Some(sha256_hex(spec.as_bytes())),
                detail: None,
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every tenant.
    pub fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let mut out = Vec::new();
        for name in self.tenant_names()? {
            if let Some(t) = self.tenant(&name)? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Creates a tenant (`create`) or replaces its spec; the spec's rules, fragments and
    /// plugins are ignored (they have their own calls).
    pub fn put_tenant(
        &self,
        actor: &str,
        spec: &config::Tenant,
        create: bool,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let before: Option<String> = tx
            .query_row(
                "SELECT spec FROM tenants WHERE name = ?1",
                params![spec.name],
                |r| r.get(0),
            )
            .optional()?;
        let mut stored = spec.clone();
        stored.rules = None;
        stored.fragments = None;
        stored.plugins = Vec::new();
        let json = serde_json::to_string(&stored).unwrap_or_default();
        match (&before, create) {
            (Some(_), true) => {
                return Err(StoreError::Conflict(format!(
                    "tenant {:?} already exists",
                    spec.name
                )));
            }
            (None, false) => {
                return Err(StoreError::NotFound(format!("no tenant {:?}", spec.name)));
            }
            (None, true) => {
                tx.execute(
                    "INSERT INTO tenants (name, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                    params![spec.name, json, now()],
                )?;
            }
            (Some(_), false) => {
                tx.execute(
                    "UPDATE tenants SET spec = ?2, updated_at = ?3 WHERE name = ?1",
                    params![spec.name, json, now()],
                )?;
            }
        }
        audit(
            &tx,
            Audit {
                actor,
                action: if create {
                    "tenant.create"
                } else {
                    "tenant.update"
                },
                tenant: Some(&spec.name),
                target: None,
                before: before.map(|b| sha256_hex(b.as_bytes())),
                after: Some(sha256_hex(json.as_bytes())),
                detail: None,
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Disables or enables a tenant.
    pub fn set_disabled(&self, actor: &str, name: &str, disabled: bool) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE tenants SET disabled = ?2, updated_at = ?3 WHERE name = ?1",
            params![name, disabled, now()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no tenant {name:?}")));
        }
        audit(
            &tx,
            Audit {
                actor,
                action: if disabled {
                    "tenant.disable"
                } else {
                    "tenant.enable"
                },
                tenant: Some(name),
                target: None,
                before: None,
                after: None,
                detail: None,
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records an action that changes no table here (profile imports and erasures) in the
    /// audit log.
    pub fn audit_action(
        &self,
        actor: &str,
        action: &str,
        tenant: &str,
        target: Option<&str>,
        detail: Option<String>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        audit(
            &tx,
            Audit {
                actor,
                action,
                tenant: Some(tenant),
                target,
                before: None,
                after: None,
                detail,
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes a tenant and everything it owns (its audit entries stay).
    pub fn delete_tenant(&self, actor: &str, name: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let before: Option<String> = tx
            .query_row(
                "SELECT spec FROM tenants WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        let Some(before) = before else {
            return Err(StoreError::NotFound(format!("no tenant {name:?}")));
        };
        tx.execute("DELETE FROM tenants WHERE name = ?1", params![name])?;
        audit(
            &tx,
            Audit {
                actor,
                action: "tenant.delete",
                tenant: Some(name),
                target: None,
                before: Some(sha256_hex(before.as_bytes())),
                after: None,
                detail: None,
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces a tenant's rules (`kind` = `rules`) or fragments (`fragments`) with `body`.
    pub fn set_document(
        &self,
        actor: &str,
        tenant: &str,
        kind: Document,
        body: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        exists(&tx, tenant)?;
        let table = kind.table();
        let before: Option<String> = tx
            .query_row(
                &format!("SELECT body FROM {table} WHERE tenant = ?1"),
                params![tenant],
                |r| r.get(0),
            )
            .optional()?;
        tx.execute(
            &format!("INSERT OR REPLACE INTO {table} (tenant, body) VALUES (?1, ?2)"),
            params![tenant, body],
        )?;
        audit(
            &tx,
            Audit {
                actor,
                action: kind.action(),
                tenant: Some(tenant),
                target: None,
                before: before.map(|b| sha256_hex(b.as_bytes())),
                after: Some(sha256_hex(body.as_bytes())),
                detail: None,
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Stores a new version of `plugin` (already validated); returns its id (`id` when given:
    /// a fleet allocates version ids cluster-wide). With `activate`, it also becomes the
    /// active version, with `params` when given.
    #[allow(clippy::too_many_arguments)]
    pub fn add_version(
        &self,
        actor: &str,
        tenant: &str,
        plugin: &str,
        bytes: &[u8],
        contract: &str,
        activate: bool,
        params: Option<&std::collections::HashMap<String, String>>,
        id: Option<i64>,
    ) -> Result<i64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        exists(&tx, tenant)?;
        let sha = sha256_hex(bytes);
        tx.execute(
            "INSERT INTO plugin_versions (id, tenant, plugin, sha256, size, contract, bytes, uploader, created_at)
             VALUES (?9, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![tenant, plugin, sha, bytes.len() as i64, contract, bytes, actor, now(), id],
        )?;
        let id = tx.last_insert_rowid();
        // Keep the newest versions of each plugin (and the active one): a tenant pushing in a
        // loop cannot fill the disk.
        tx.execute(
            "DELETE FROM plugin_versions WHERE tenant = ?1 AND plugin = ?2
               AND id NOT IN (SELECT id FROM plugin_versions WHERE tenant = ?1 AND plugin = ?2
                              ORDER BY id DESC LIMIT ?3)
               AND id NOT IN (SELECT active FROM plugins WHERE tenant = ?1 AND name = ?2)",
            params![tenant, plugin, KEEP_VERSIONS],
        )?;
        audit(
            &tx,
            Audit {
                actor,
                action: "plugin.upload",
                tenant: Some(tenant),
                target: Some(&format!("{plugin}@{id}")),
                before: None,
                after: Some(sha.clone()),
                detail: Some(format!("{} bytes, contract {contract}", bytes.len())),
            },
        )?;
        if activate {
            activate_in(&tx, actor, tenant, plugin, id, params, "plugin.activate")?;
        }
        tx.commit()?;
        Ok(id)
    }

    /// Makes `version` the active version of `plugin` (adding the plugin to the end of the
    /// chain when it is new), with `params` when given.
    pub fn activate(
        &self,
        actor: &str,
        tenant: &str,
        plugin: &str,
        version: i64,
        params: Option<&std::collections::HashMap<String, String>>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        exists(&tx, tenant)?;
        activate_in(
            &tx,
            actor,
            tenant,
            plugin,
            version,
            params,
            "plugin.activate",
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Re-activates the deployment (version and params) that was active before the current
    /// one; a second rollback goes one further back. Returns the version now active.
    pub fn rollback(&self, actor: &str, tenant: &str, plugin: &str) -> Result<i64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        exists(&tx, tenant)?;
        let history: Vec<(i64, i64, String)> = {
            let mut stmt = tx.prepare(
                "SELECT id, version, params FROM activations
                 WHERE tenant = ?1 AND plugin = ?2 AND undone = 0 ORDER BY id DESC LIMIT 2",
            )?;
            stmt.query_map(params![tenant, plugin], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        let [(current, _, _), (_, previous, ref previous_params)] = history[..] else {
            return Err(StoreError::Conflict(format!(
                "plugin {plugin:?} of tenant {tenant:?} has no earlier version to roll back to"
            )));
        };
        tx.execute(
            "UPDATE activations SET undone = 1 WHERE id = ?1",
            params![current],
        )?;
        let before = active_sha(&tx, tenant, plugin)?;
        tx.execute(
            "UPDATE plugins SET active = ?3, params = ?4 WHERE tenant = ?1 AND name = ?2",
            params![tenant, plugin, previous, previous_params],
        )?;
        audit(
            &tx,
            Audit {
                actor,
                action: "plugin.rollback",
                tenant: Some(tenant),
                target: Some(&format!("{plugin}@{previous}")),
                before,
                after: active_sha(&tx, tenant, plugin)?,
                detail: None,
            },
        )?;
        tx.commit()?;
        Ok(previous)
    }

    /// Replaces a plugin's params.
    pub fn set_params(
        &self,
        actor: &str,
        tenant: &str,
        plugin: &str,
        params: &std::collections::HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let json = serde_json::to_string(params).unwrap_or_default();
        let before: Option<String> = tx
            .query_row(
                "SELECT params FROM plugins WHERE tenant = ?1 AND name = ?2",
                params![tenant, plugin],
                |r| r.get(0),
            )
            .optional()?;
        let Some(before) = before else {
            return Err(StoreError::NotFound(format!(
                "tenant {tenant:?} has no plugin {plugin:?}"
            )));
        };
        tx.execute(
            "UPDATE plugins SET params = ?3 WHERE tenant = ?1 AND name = ?2",
            params![tenant, plugin, json],
        )?;
        // A params change is a deployment of its own, so a rollback can undo it.
        tx.execute(
            "INSERT INTO activations (tenant, plugin, version, params, at)
             SELECT tenant, name, active, params, ?3 FROM plugins WHERE tenant = ?1 AND name = ?2",
            params![tenant, plugin, now()],
        )?;
        audit(
            &tx,
            Audit {
                actor,
                action: "plugin.params",
                tenant: Some(tenant),
                target: Some(plugin),
                before: Some(sha256_hex(before.as_bytes())),
                after: Some(sha256_hex(json.as_bytes())),
                detail: None,
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Removes a plugin from the chain (its versions stay, for the record).
    pub fn remove_plugin(&self, actor: &str, tenant: &str, plugin: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let before = active_sha(&tx, tenant, plugin)?;
        let n = tx.execute(
            "DELETE FROM plugins WHERE tenant = ?1 AND name = ?2",
            params![tenant, plugin],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "tenant {tenant:?} has no plugin {plugin:?}"
            )));
        }
        tx.execute(
            "DELETE FROM activations WHERE tenant = ?1 AND plugin = ?2",
            params![tenant, plugin],
        )?;
        audit(
            &tx,
            Audit {
                actor,
                action: "plugin.remove",
                tenant: Some(tenant),
                target: Some(plugin),
                before,
                after: None,
                detail: None,
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A version's bytes, if it belongs to `tenant`'s `plugin`.
    pub fn version_bytes(
        &self,
        tenant: &str,
        plugin: &str,
        version: i64,
    ) -> Result<Vec<u8>, StoreError> {
        self.conn()
            .query_row(
                "SELECT bytes FROM plugin_versions WHERE id = ?1 AND tenant = ?2 AND plugin = ?3",
                params![version, tenant, plugin],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "plugin {plugin:?} of tenant {tenant:?} has no version {version}"
                ))
            })
    }

    /// The deployment (version, params) a rollback would activate, if any.
    pub fn rollback_target(
        &self,
        tenant: &str,
        plugin: &str,
    ) -> Result<Option<(i64, Params)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT version, params FROM activations
             WHERE tenant = ?1 AND plugin = ?2 AND undone = 0 ORDER BY id DESC LIMIT 2",
        )?;
        let v: Vec<(i64, String)> = stmt
            .query_map(params![tenant, plugin], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v.get(1)
            .map(|(id, p)| (*id, serde_json::from_str(p).unwrap_or_default())))
    }

    /// Names of a tenant's plugins with their versions, newest first.
    pub fn plugin_versions(
        &self,
        tenant: &str,
    ) -> Result<Vec<(String, Vec<VersionInfo>)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT v.plugin, v.id, v.sha256, v.size, v.contract, v.uploader, v.created_at,
                    coalesce(p.active = v.id, 0)
             FROM plugin_versions v LEFT JOIN plugins p ON p.tenant = v.tenant AND p.name = v.plugin
             WHERE v.tenant = ?1 ORDER BY v.plugin, v.id DESC",
        )?;
        let rows = stmt
            .query_map(params![tenant], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    VersionInfo {
                        id: r.get(1)?,
                        sha256: r.get(2)?,
                        size: r.get(3)?,
                        contract: r.get(4)?,
                        uploader: r.get(5)?,
                        created_at: r.get(6)?,
                        active: r.get(7)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out: Vec<(String, Vec<VersionInfo>)> = Vec::new();
        for (plugin, v) in rows {
            match out.last_mut() {
                Some((p, list)) if *p == plugin => list.push(v),
                _ => out.push((plugin, vec![v])),
            }
        }
        Ok(out)
    }

    /// Creates a token for `tenant` (operator token when `None`); stores only its hash.
    pub fn create_token(
        &self,
        actor: &str,
        tenant: Option<&str>,
        label: &str,
        secret: &str,
    ) -> Result<i64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(t) = tenant {
            exists(&tx, t)?;
        }
        let hash = sha256_hex(secret.as_bytes());
        tx.execute(
            "INSERT INTO tokens (hash, tenant, label, created_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hash, tenant, label, actor, now()],
        )?;
        let id = tx.last_insert_rowid();
        audit(
            &tx,
            Audit {
                actor,
                action: "token.create",
                tenant,
                target: Some(&format!("token {id}")),
                before: None,
                after: None,
                detail: Some(label.to_owned()),
            },
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Revokes a token.
    pub fn revoke_token(&self, actor: &str, id: i64) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let tenant: Option<Option<String>> = tx
            .query_row(
                "SELECT tenant FROM tokens WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(tenant) = tenant else {
            return Err(StoreError::NotFound(format!("no token {id}")));
        };
        tx.execute("DELETE FROM tokens WHERE id = ?1", params![id])?;
        audit(
            &tx,
            Audit {
                actor,
                action: "token.revoke",
                tenant: tenant.as_deref(),
                target: Some(&format!("token {id}")),
                before: None,
                after: None,
                detail: None,
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every token's hash and scope.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, hash, tenant FROM tokens")?;
        let rows = stmt
            .query_map([], |r| {
                let hex: String = r.get(1)?;
                let tenant: Option<String> = r.get(2)?;
                Ok((r.get::<_, i64>(0)?, hex, tenant))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, hex, tenant)| {
                let hash = decode_hex32(&hex)?;
                Some(TokenRecord {
                    id,
                    hash,
                    scope: tenant.map_or(Scope::Operator, Scope::Tenant),
                })
            })
            .collect())
    }

    /// The newest audit entries (for one tenant, or all), newest first.
    pub fn audit_log(
        &self,
        tenant: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            // A tenant's log starts at its latest creation: a tenant made again under a deleted
            // one's name does not read the old one's history.
            "SELECT id, at, actor, action, tenant, target, before_hash, after_hash, detail
             FROM audit WHERE ?1 IS NULL OR (tenant = ?1 AND id >= coalesce(
                 (SELECT max(id) FROM audit WHERE tenant = ?1 AND action = 'tenant.create'), 0))
             ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![tenant, limit], |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    tenant: r.get(4)?,
                    target: r.get(5)?,
                    before_hash: r.get(6)?,
                    after_hash: r.get(7)?,
                    detail: r.get(8)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

/// A tenant document kept as text.
#[derive(Debug, Clone, Copy)]
pub enum Document {
    /// Segments, experiments, campaigns, saved groups (JSON).
    Rules,
    /// Content fragments (JSON `{key: {locale: html}}`).
    Fragments,
}

impl Document {
    fn table(self) -> &'static str {
        match self {
            Document::Rules => "rules",
            Document::Fragments => "fragments",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Document::Rules => "rules.set",
            Document::Fragments => "fragments.set",
        }
    }
}

fn exists(tx: &Transaction<'_>, tenant: &str) -> Result<(), StoreError> {
    let found: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM tenants WHERE name = ?1",
            params![tenant],
            |r| r.get(0),
        )
        .optional()?;
    found
        .map(|_| ())
        .ok_or_else(|| StoreError::NotFound(format!("no tenant {tenant:?}")))
}

fn active_sha(
    tx: &Transaction<'_>,
    tenant: &str,
    plugin: &str,
) -> rusqlite::Result<Option<String>> {
    tx.query_row(
        "SELECT v.sha256 FROM plugins p JOIN plugin_versions v ON v.id = p.active
         WHERE p.tenant = ?1 AND p.name = ?2",
        params![tenant, plugin],
        |r| r.get(0),
    )
    .optional()
}

/// Stores a version a fleet change names under its fleet-wide id, unless this node holds that
/// id for something else (ids allocated before it joined the fleet): then under a local one.
/// Returns the id used.
fn insert_fleet_version(
    tx: &Transaction<'_>,
    tenant: &str,
    p: &PluginRecord,
    contracts: &std::collections::HashMap<String, String>,
    actor: &str,
    at: i64,
) -> rusqlite::Result<i64> {
    let taken: bool = tx.query_row(
        "SELECT count(*) > 0 FROM plugin_versions WHERE id = ?1",
        params![p.version],
        |r| r.get(0),
    )?;
    let contract = contracts.get(&p.sha256).map_or("", String::as_str);
    tx.execute(
        "INSERT INTO plugin_versions (id, tenant, plugin, sha256, size, contract, bytes, uploader, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![(!taken).then_some(p.version), tenant, p.name, p.sha256,
                p.bytes.len() as i64, contract, p.bytes, actor, at],
    )?;
    Ok(tx.last_insert_rowid())
}

fn activate_in(
    tx: &Transaction<'_>,
    actor: &str,
    tenant: &str,
    plugin: &str,
    version: i64,
    params: Option<&std::collections::HashMap<String, String>>,
    action: &str,
) -> Result<(), StoreError> {
    let owned: Option<i64> = tx
        .query_row(
            "SELECT id FROM plugin_versions WHERE id = ?1 AND tenant = ?2 AND plugin = ?3",
            params![version, tenant, plugin],
            |r| r.get(0),
        )
        .optional()?;
    if owned.is_none() {
        return Err(StoreError::NotFound(format!(
            "plugin {plugin:?} of tenant {tenant:?} has no version {version}"
        )));
    }
    let before = active_sha(tx, tenant, plugin)?;
    let position: i64 = tx.query_row(
        "SELECT coalesce(max(position) + 1, 0) FROM plugins WHERE tenant = ?1",
        params![tenant],
        |r| r.get(0),
    )?;
    let params_json = params.map(|p| serde_json::to_string(p).unwrap_or_default());
    tx.execute(
        "INSERT INTO plugins (tenant, name, position, active, params) VALUES (?1, ?2, ?3, ?4, coalesce(?5, '{}'))
         ON CONFLICT (tenant, name) DO UPDATE SET active = excluded.active,
             params = coalesce(?5, plugins.params)",
        params![tenant, plugin, position, version, params_json],
    )?;
    tx.execute(
        "INSERT INTO activations (tenant, plugin, version, params, at)
         SELECT tenant, name, active, params, ?3 FROM plugins WHERE tenant = ?1 AND name = ?2",
        params![tenant, plugin, now()],
    )?;
    audit(
        tx,
        Audit {
            actor,
            action,
            tenant: Some(tenant),
            target: Some(&format!("{plugin}@{version}")),
            before,
            after: active_sha(tx, tenant, plugin)?,
            detail: params_json,
        },
    )?;
    Ok(())
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> config::Tenant {
        let text = format!(
            "[[tenant]]\nname = \"{name}\"\nhosts = [\"{name}.test\"]\norigin = \"http://127.0.0.1:1\"\n"
        );
        let c = config::Config::parse(&text, Path::new("t.toml"), Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"));
        c.tenants[0].clone()
    }

    fn temp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("veneer-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        dir
    }

    #[test]
    fn changes_survive_reopening_and_rollback_walks_back() {
        let dir = temp();
        {
            let s = Store::open(&dir).unwrap_or_else(|e| panic!("{e:#}"));
            s.put_tenant("op", &spec("shop"), true)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(
                s.put_tenant("op", &spec("shop"), true),
                Err(StoreError::Conflict(_))
            ));
            let v1 = s
                .add_version("op", "shop", "hero", b"one", "0.2.0", true, None, None)
                .unwrap_or_default();
            let v2 = s
                .add_version("op", "shop", "hero", b"two", "0.2.0", true, None, None)
                .unwrap_or_default();
            let v3 = s
                .add_version("op", "shop", "hero", b"three", "0.2.0", true, None, None)
                .unwrap_or_default();
            assert!(v1 < v2 && v2 < v3);
            assert_eq!(s.rollback("op", "shop", "hero").ok(), Some(v2));
            assert_eq!(s.rollback("op", "shop", "hero").ok(), Some(v1));
            assert!(matches!(
                s.rollback("op", "shop", "hero"),
                Err(StoreError::Conflict(_))
            ));
        }
        let s = Store::open(&dir).unwrap_or_else(|e| panic!("{e:#}"));
        let t = s
            .tenant("shop")
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("kept"));
        assert_eq!(t.plugins.len(), 1);
        assert_eq!(t.plugins[0].bytes, b"one");
        let log = s.audit_log(Some("shop"), 100).unwrap_or_default();
        assert_eq!(
            log.first().map(|e| e.action.as_str()),
            Some("plugin.rollback")
        );
        assert_eq!(log.len(), 1 + 3 * 2 + 2);
        let _ = std::fs::remove_dir_all(dir);
    }
}
