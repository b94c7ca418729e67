//! Known customers and what visitors do: one profile per customer (imported CRM attributes
//! and behaviour) and per anonymous visitor (behaviour only), kept in SQLite
//! (`data_dir/profiles.db`) behind a bounded in-memory cache.
//!
//! Requests never wait for a write: they change the cached profile and mark it dirty (a hash
//! insert). One writer thread stores the dirty profiles every [`WRITE_EVERY`] in one
//! transaction, each once however often it changed meanwhile; a dirty profile stays in the
//! cache until it is stored. A request waits for a read only the first time a profile is used
//! after a start or an eviction, and then on the blocking pool; concurrent first reads of one
//! profile make one read.
//!
//! Behaviour is what a visitor does: page views per category (affinity, an exponentially
//! decayed count), a cart (`cart_add`, `cart_remove`, `purchase` events) and purchases. A
//! visitor linked to a customer (`veneer-identify`) takes their behaviour to the customer's
//! profile, so it follows the customer to every device.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::config::ProfileConfig;
use crate::metrics::Metrics;

/// Deletions and flushes queued for the writer before a caller waits for room.
pub const QUEUE: usize = 4096;
/// How often dirty profiles are stored.
pub const WRITE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
/// How long a request waits for the fleet's copy of a profile before reading the local one.
pub const FLEET_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);
/// The origin response header linking the visitor to a customer (`-` unlinks).
pub const IDENTIFY_HEADER: &str = "veneer-identify";
/// The origin response header carrying an event, as the beacon's body (JSON).
pub const EVENT_HEADER: &str = "veneer-event";
/// Profiles kept in memory by default (`[server] profile_cache_entries`).
pub const DEFAULT_CACHE_ENTRIES: usize = 200_000;
/// Categories kept per profile: the weakest go first.
const MAX_CATEGORIES: usize = 32;
/// A decayed score below this is forgotten.
const FORGET_BELOW: f64 = 0.01;
/// Lines in a cart.
const MAX_CART_LINES: usize = 50;
/// Purchased categories remembered (most recent first).
const MAX_PURCHASED_CATEGORIES: usize = 10;
/// Visitors remembered per customer (for data-subject requests).
const MAX_VISITORS: usize = 50;
/// Largest customer id.
pub const MAX_CUSTOMER_ID: usize = 128;

/// Who a profile belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A customer, by the id the tenant's systems use.
    Customer(String),
    /// An anonymous visitor, by the visitor cookie's id.
    Visitor(String),
}

impl Subject {
    /// The subject's key in the store (`c:ID` or `v:ID`).
    pub fn key(&self) -> String {
        match self {
            Subject::Customer(id) => format!("c:{id}"),
            Subject::Visitor(id) => format!("v:{id}"),
        }
    }
}

/// Whether `id` is usable as a customer id: 1 to 128 printable characters, no spaces.
pub fn valid_customer_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CUSTOMER_ID
        && id.bytes().all(|b| b.is_ascii_graphic())
        && id != "-"
}

/// A decayed count: `score` at `at` (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// The score at `at`.
    pub score: f64,
    /// When it was last added to.
    pub at: i64,
}

impl Score {
    /// The score at `now`: halved every `half_life` seconds since `at`.
    pub fn at(&self, now: i64, half_life: f64) -> f64 {
        let elapsed = (now - self.at).max(0) as f64;
        self.score * (-elapsed / half_life).exp2()
    }
}

/// One line of a cart or a purchase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The product.
    pub sku: String,
    /// Its category, if the page or app says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Unit price.
    #[serde(default)]
    pub price: f64,
    /// How many.
    #[serde(default = "one")]
    pub quantity: u32,
}

fn one() -> u32 {
    1
}

impl Item {
    /// Why this item is unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        if self.sku.is_empty() || self.sku.len() > 64 {
            return Some("items[].sku: 1 to 64 characters".into());
        }
        if self
            .category
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > 64)
        {
            return Some("items[].category: 1 to 64 characters".into());
        }
        if !(self.price.is_finite() && (0.0..=1e9).contains(&self.price)) {
            return Some("items[].price: a number from 0 to 1e9".into());
        }
        if self.quantity == 0 || self.quantity > 10_000 {
            return Some("items[].quantity: 1 to 10000".into());
        }
        None
    }
}

/// What sits in the cart, and when it last changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cart {
    /// Lines, one per sku.
    #[serde(default)]
    pub items: Vec<Item>,
    /// Last change, Unix seconds.
    #[serde(default)]
    pub updated: i64,
}

/// Purchases so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Purchases {
    /// How many.
    #[serde(default)]
    pub count: u32,
    /// Their values summed.
    #[serde(default)]
    pub value: f64,
    /// The last one, Unix seconds (0: none).
    #[serde(default)]
    pub last: i64,
    /// Categories bought, most recent first.
    #[serde(default)]
    pub categories: Vec<String>,
}

/// One customer's or visitor's profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Imported attributes (customers only): `customer.*` in rules.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
    /// Category → decayed page views.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub affinity: BTreeMap<String, Score>,
    /// The cart.
    #[serde(default)]
    pub cart: Cart,
    /// Purchases.
    #[serde(default)]
    pub purchases: Purchases,
    /// The journey stage last recorded (a change is a transition event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Visitor ids linked to this customer, most recent last (customers only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub visitors: Vec<String>,
    /// Erased while a request still held it: never stored again.
    #[serde(skip)]
    pub erased: bool,
}

impl Profile {
    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        *self == Profile::default()
    }

    /// Categories by decayed score at `now`, strongest first.
    pub fn affinity_at(&self, now: i64, half_life: f64) -> Vec<(String, f64)> {
        let mut scores: Vec<(String, f64)> = self
            .affinity
            .iter()
            .map(|(k, s)| (k.clone(), s.at(now, half_life)))
            .filter(|(_, s)| *s >= FORGET_BELOW)
            .collect();
        scores.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        scores
    }

    /// A page of `category` viewed at `now`.
    pub fn viewed(&mut self, category: &str, now: i64, half_life: f64) {
        let entry = self.affinity.entry(category.to_owned()).or_insert(Score {
            score: 0.0,
            at: now,
        });
        *entry = Score {
            score: entry.at(now, half_life) + 1.0,
            at: now.max(entry.at),
        };
        self.affinity
            .retain(|_, s| s.at(now, half_life) >= FORGET_BELOW);
        while self.affinity.len() > MAX_CATEGORIES {
            let weakest = self
                .affinity
                .iter()
                .min_by(|a, b| a.1.at(now, half_life).total_cmp(&b.1.at(now, half_life)))
                .map(|(k, _)| k.clone());
            match weakest {
                Some(k) => self.affinity.remove(&k),
                None => break,
            };
        }
    }

    /// Items added to the cart.
    pub fn cart_add(&mut self, items: &[Item], now: i64) {
        for item in items {
            let lines = self.cart.items.len();
            match self.cart.items.iter_mut().find(|i| i.sku == item.sku) {
                Some(line) => {
                    line.quantity = line.quantity.saturating_add(item.quantity).min(10_000);
                    line.price = item.price;
                    if item.category.is_some() {
                        line.category.clone_from(&item.category);
                    }
                }
                None if lines < MAX_CART_LINES => self.cart.items.push(item.clone()),
                None => {}
            }
        }
        self.cart.updated = now;
    }

    /// Items taken out of the cart (the quantities given, or the whole line).
    pub fn cart_remove(&mut self, items: &[Item], now: i64) {
        for item in items {
            if let Some(line) = self.cart.items.iter_mut().find(|i| i.sku == item.sku) {
                line.quantity = line.quantity.saturating_sub(item.quantity);
            }
        }
        self.cart.items.retain(|i| i.quantity > 0);
        self.cart.updated = now;
    }

    /// A purchase: of `items` (or, when none are named, of what is in the cart), worth `value`
    /// (or the items' sum). The cart is emptied.
    pub fn purchase(&mut self, items: &[Item], value: Option<f64>, now: i64) {
        let bought = if items.is_empty() {
            &self.cart.items
        } else {
            items
        };
        let sum: f64 = bought.iter().map(|i| i.price * f64::from(i.quantity)).sum();
        let mut categories: Vec<String> =
            bought.iter().filter_map(|i| i.category.clone()).collect();
        categories.dedup();
        for c in std::mem::take(&mut self.purchases.categories) {
            if !categories.contains(&c) {
                categories.push(c);
            }
        }
        categories.truncate(MAX_PURCHASED_CATEGORIES);
        self.purchases.categories = categories;
        self.purchases.count = self.purchases.count.saturating_add(1);
        self.purchases.value += value.unwrap_or(sum);
        self.purchases.last = now;
        self.cart = Cart {
            items: Vec::new(),
            updated: now,
        };
    }

    /// Takes in an anonymous visitor's behaviour (when the visitor is linked to this
    /// customer): affinity adds up, and the visitor's cart wins if it changed last.
    pub fn absorb(&mut self, other: &Profile, now: i64, half_life: f64) {
        for (k, s) in &other.affinity {
            let mine = self.affinity.get(k).map_or(0.0, |m| m.at(now, half_life));
            self.affinity.insert(
                k.clone(),
                Score {
                    score: mine + s.at(now, half_life),
                    at: now,
                },
            );
        }
        if !other.cart.items.is_empty() && other.cart.updated >= self.cart.updated {
            self.cart = other.cart.clone();
        }
        if other.purchases.count > 0 {
            self.purchases.count = self.purchases.count.saturating_add(other.purchases.count);
            self.purchases.value += other.purchases.value;
            self.purchases.last = self.purchases.last.max(other.purchases.last);
            for c in &other.purchases.categories {
                if !self.purchases.categories.contains(c) {
                    self.purchases.categories.push(c.clone());
                }
            }
            self.purchases.categories.truncate(MAX_PURCHASED_CATEGORIES);
        }
    }

    /// Remembers that `visitor` is this customer (for export and erasure).
    pub fn link(&mut self, visitor: &str) {
        self.visitors.retain(|v| v != visitor);
        self.visitors.push(visitor.to_owned());
        if self.visitors.len() > MAX_VISITORS {
            self.visitors.remove(0);
        }
    }

    /// Whether the cart is abandoned at `now`: items, and no change or purchase for
    /// `abandoned_after` seconds.
    pub fn abandoned(&self, now: i64, abandoned_after: u64) -> bool {
        !self.cart.items.is_empty()
            && now.saturating_sub(self.cart.updated)
                >= i64::try_from(abandoned_after).unwrap_or(i64::MAX)
    }

    /// The attributes rules and plugins see: `customer` (when `customer` is given), `affinity`,
    /// `topCategories`, `cart` and `purchases`, added to `into`.
    pub fn attributes_into(
        &self,
        into: &mut Map<String, Value>,
        customer: Option<&str>,
        now: i64,
        config: &ProfileConfig,
    ) {
        let half_life = config.half_life_secs();
        if let Some(id) = customer {
            let mut c = self.attributes.clone();
            c.insert("id".into(), Value::String(id.to_owned()));
            into.insert("customer".into(), Value::Object(c));
        }
        let scores = self.affinity_at(now, half_life);
        let top: Vec<Value> = scores
            .iter()
            .take(3)
            .map(|(k, _)| Value::String(k.clone()))
            .collect();
        let affinity: Map<String, Value> = scores
            .into_iter()
            .map(|(k, s)| (k, json!((s * 1000.0).round() / 1000.0)))
            .collect();
        into.insert("affinity".into(), Value::Object(affinity));
        into.insert("topCategories".into(), Value::Array(top));
        let items: u32 = self.cart.items.iter().map(|i| i.quantity).sum();
        let value: f64 = self
            .cart
            .items
            .iter()
            .map(|i| i.price * f64::from(i.quantity))
            .sum();
        let mut categories: Vec<&str> = self
            .cart
            .items
            .iter()
            .filter_map(|i| i.category.as_deref())
            .collect();
        categories.dedup();
        into.insert(
            "cart".into(),
            json!({
                "items": items,
                "value": (value * 100.0).round() / 100.0,
                "skus": self.cart.items.iter().map(|i| i.sku.as_str()).collect::<Vec<_>>(),
                "categories": categories,
                "abandoned": self.abandoned(now, config.cart_abandoned_after_secs),
                "updatedAt": self.cart.updated,
            }),
        );
        into.insert(
            "purchases".into(),
            json!({
                "count": self.purchases.count,
                "value": (self.purchases.value * 100.0).round() / 100.0,
                "lastAt": (self.purchases.last > 0).then_some(self.purchases.last),
                "categories": self.purchases.categories,
            }),
        );
    }
}

/// One imported line: `{"customer": "c1", "attributes": {...}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportLine {
    customer: String,
    attributes: Map<String, Value>,
}

/// A line an import refused, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Refused {
    /// 1-based line number in the file.
    pub line: usize,
    /// What is wrong with it.
    pub error: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ImportReport {
    /// Lines written.
    pub imported: usize,
    /// Lines refused (at most [`MAX_REPORTED`] are listed).
    pub refused: Vec<Refused>,
    /// How many lines were refused in all.
    pub refused_count: usize,
}

/// Refused lines listed in an import report.
pub const MAX_REPORTED: usize = 1000;
/// Largest imported line.
pub const MAX_LINE_BYTES: usize = 16 << 10;

/// Checks one import line; the customer and their attributes when it is usable.
fn parse_line(line: &str) -> Result<(String, Map<String, Value>), String> {
    if line.len() > MAX_LINE_BYTES {
        return Err(format!("longer than {MAX_LINE_BYTES} bytes"));
    }
    let parsed: ImportLine = serde_json::from_str(line)
        .map_err(|e| format!("expected {{\"customer\": ID, \"attributes\": {{...}}}}: {e}"))?;
    if !valid_customer_id(&parsed.customer) {
        return Err(format!(
            "customer: 1 to {MAX_CUSTOMER_ID} printable characters without spaces (not \"-\")"
        ));
    }
    for name in parsed.attributes.keys() {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            && name != "id";
        if !ok {
            return Err(format!(
                "attributes.{name}: names are 1 to 64 letters, digits, '-' or '_' (and not \"id\")"
            ));
        }
    }
    Ok((parsed.customer, parsed.attributes))
}

enum Op {
    Delete {
        tenant: String,
        subjects: Vec<String>,
    },
    Purge(String),
    /// Another fleet node's stored change (`None`: deleted), kept here so this node reads
    /// it when NATS is unreachable; never shared again.
    Remote {
        tenant: String,
        subject: String,
        body: Option<String>,
    },
    Flush(std::sync::mpsc::Sender<()>),
}

/// A stored profile change a fleet node shares: (tenant, subject key, body; `None` deleted).
pub type Change = (String, String, Option<String>);

/// Where a fleet node sends its stored changes, and reads profiles it does not cache.
pub trait Share: Send + Sync {
    /// Queues changes for the fleet (never blocks).
    fn changed(&self, changes: Vec<Change>);
    /// The fleet's copy of a profile: `Ok(None)` when the fleet has none, `Err` when it
    /// cannot be asked now (the local copy is read instead).
    fn read(
        &self,
        tenant: &str,
        subject: &str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Option<String>, ()>> + Send + '_>>;
}

struct Db {
    tx: SyncSender<Op>,
    reader: Mutex<Connection>,
    path: PathBuf,
    dirty: Arc<Dirty>,
    share: Arc<std::sync::OnceLock<Arc<dyn Share>>>,
}

type Shared = Arc<Mutex<Profile>>;

/// Profiles changed since the writer last stored them, by cache key: (tenant, subject key,
/// the cached profile). Holding the `Arc` pins the profile in the cache until it is stored.
type Dirty = Mutex<std::collections::HashMap<String, (String, String, Shared)>>;

/// Keeps a profile a request still holds in the cache: evicting it would let the next request
/// load a second copy, and whichever copy is saved last would lose the other's change.
#[derive(Clone, Copy, Default)]
struct PinHeld;

impl quick_cache::Lifecycle<String, Shared> for PinHeld {
    type RequestState = ();

    fn is_pinned(&self, _key: &String, val: &Shared) -> bool {
        Arc::strong_count(val) > 1
    }

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _state: &mut Self::RequestState, _key: String, _val: Shared) {}
}

type Cache = quick_cache::sync::Cache<
    String,
    Shared,
    quick_cache::UnitWeighter,
    quick_cache::DefaultHashBuilder,
    PinHeld,
>;

fn new_cache(entries: usize) -> Cache {
    let entries = entries.max(16);
    Cache::with(
        entries,
        entries as u64,
        quick_cache::UnitWeighter,
        quick_cache::DefaultHashBuilder::default(),
        PinHeld,
    )
}

/// The profiles of every tenant: the cache, and the store behind it (none without a
/// `data_dir`: profiles then live only as long as the cache keeps them).
pub struct Profiles {
    cache: Cache,
    db: Option<Db>,
    metrics: Arc<Metrics>,
}

fn cache_key(tenant: &str, subject: &Subject) -> String {
    let (kind, id) = match subject {
        Subject::Customer(id) => ('c', id),
        Subject::Visitor(id) => ('v', id),
    };
    let mut k = String::with_capacity(tenant.len() + id.len() + 3);
    k.push_str(tenant);
    k.push('\u{1f}');
    k.push(kind);
    k.push(':');
    k.push_str(id);
    k
}

impl Profiles {
    /// Profiles in memory only (up to `entries`).
    pub fn in_memory(entries: usize, metrics: Arc<Metrics>) -> Profiles {
        Profiles {
            cache: new_cache(entries),
            db: None,
            metrics,
        }
    }

    /// Opens (or creates) `dir/profiles.db` and starts its writer thread.
    pub fn open(dir: &Path, entries: usize, metrics: Arc<Metrics>) -> anyhow::Result<Profiles> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("profiles.db");
        let writer = connect(&path)?;
        writer
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS profiles (
                    tenant TEXT NOT NULL, subject TEXT NOT NULL, body TEXT NOT NULL,
                    updated_at INTEGER NOT NULL,
                    PRIMARY KEY (tenant, subject)) WITHOUT ROWID;",
            )
            .with_context(|| format!("creating the profile schema in {}", path.display()))?;
        let reader = connect(&path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let m = metrics.clone();
        let dirty: Arc<Dirty> = Arc::default();
        let d = dirty.clone();
        let share: Arc<std::sync::OnceLock<Arc<dyn Share>>> = Arc::default();
        let sh = share.clone();
        std::thread::Builder::new()
            .name("veneer-profiles".into())
            .spawn(move || write_loop(writer, &rx, &d, &m, &sh))
            .context("starting the profile writer")?;
        Ok(Profiles {
            cache: new_cache(entries),
            db: Some(Db {
                tx,
                reader: Mutex::new(reader),
                path,
                dirty,
                share,
            }),
            metrics,
        })
    }

    /// Shares every stored change with a fleet from now on, and reads a profile this node
    /// does not cache from the fleet first (once; without a store there is nothing to share).
    pub fn attach(&self, share: Arc<dyn Share>) {
        if let Some(db) = &self.db {
            let _ = db.share.set(share);
        }
    }

    /// Another fleet node stored (or deleted) a profile: this node's cached copy is dropped,
    /// so the next request reads the fleet's, and the local store keeps it for when NATS is
    /// unreachable. Concurrent changes on two nodes: the one stored last wins.
    pub fn apply_remote(&self, tenant: &str, subject: &str, body: Option<String>) {
        let Some(db) = &self.db else { return };
        let Some((kind, id)) = subject.split_once(':') else {
            return;
        };
        let key = format!("{tenant}\u{1f}{kind}:{id}");
        self.cache.remove(&key);
        if db
            .tx
            .try_send(Op::Remote {
                tenant: tenant.to_owned(),
                subject: subject.to_owned(),
                body,
            })
            .is_err()
        {
            self.metrics.inc(
                "veneer_profile_writes_total",
                &[("outcome", "dropped_queue_full")],
            );
        }
    }

    /// Where the profiles are stored, if anywhere.
    pub fn path(&self) -> Option<&Path> {
        self.db.as_ref().map(|d| d.path.as_path())
    }

    /// The profile of `subject`: from the cache, or read from the store on the blocking pool
    /// (an unknown subject gets an empty profile, which is cached too).
    pub async fn get(self: &Arc<Self>, tenant: &str, subject: &Subject) -> Shared {
        let key = cache_key(tenant, subject);
        if let Some(p) = self.cache.get(&key) {
            return p;
        }
        if self.db.is_none() {
            // Nothing to read: the cache is all there is.
            return self.adopt(tenant, subject, Arc::new(Mutex::new(Profile::default())));
        }
        let me = self.clone();
        let (t, s) = (tenant.to_owned(), subject.key());
        let loaded = self
            .cache
            .get_or_insert_async(&key, async move {
                if let Some(share) = me.db.as_ref().and_then(|db| db.share.get()).cloned() {
                    // The fleet's copy is the freshest; a slow or unreachable fleet falls back
                    // to this node's copy.
                    let asked = tokio::time::timeout(FLEET_READ_TIMEOUT, share.read(&t, &s)).await;
                    match asked {
                        Ok(Ok(Some(body))) => {
                            me.metrics
                                .inc("veneer_profile_fleet_reads_total", &[("outcome", "found")]);
                            let p = serde_json::from_str(&body).unwrap_or_default();
                            return Ok::<_, std::convert::Infallible>(Arc::new(Mutex::new(p)));
                        }
                        // None in the fleet: a profile this node made before it joined, or
                        // while NATS was down, is still read from here.
                        Ok(Ok(None)) => me
                            .metrics
                            .inc("veneer_profile_fleet_reads_total", &[("outcome", "none")]),
                        _ => me
                            .metrics
                            .inc("veneer_profile_fleet_reads_total", &[("outcome", "local")]),
                    }
                }
                let read = tokio::task::spawn_blocking(move || me.read(&t, &s)).await;
                Ok::<_, std::convert::Infallible>(Arc::new(Mutex::new(
                    read.ok().flatten().unwrap_or_default(),
                )))
            })
            .await;
        match loaded {
            Ok(p) => p,
            Err(never) => match never {},
        }
    }

    /// The cached profile of `subject`, or a new empty one that is not cached (`false`):
    /// for a visitor new to us, whose profile cannot be stored yet, so no read is needed and
    /// nothing enters the cache unless the visitor does something worth keeping
    /// ([`adopt`](Self::adopt)).
    pub fn cached_or_new(&self, tenant: &str, subject: &Subject) -> (Shared, bool) {
        match self.cache.get(&cache_key(tenant, subject)) {
            Some(p) => (p, true),
            None => (Arc::new(Mutex::new(Profile::default())), false),
        }
    }

    /// Caches a profile made by [`cached_or_new`](Self::cached_or_new) once it holds
    /// something; the copy already cached wins if there is one (and is returned).
    pub fn adopt(&self, tenant: &str, subject: &Subject, profile: Shared) -> Shared {
        match self
            .cache
            .get_value_or_guard(&cache_key(tenant, subject), None)
        {
            quick_cache::sync::GuardResult::Value(p) => p,
            quick_cache::sync::GuardResult::Guard(g) => {
                let _ = g.insert(profile.clone());
                profile
            }
            quick_cache::sync::GuardResult::Timeout => profile,
        }
    }

    fn read(&self, tenant: &str, subject: &str) -> Option<Profile> {
        let db = self.db.as_ref()?;
        let conn = db.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let body: Option<String> = conn
            .query_row(
                "SELECT body FROM profiles WHERE tenant = ?1 AND subject = ?2",
                params![tenant, subject],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| tracing::warn!(error = %e, "reading a profile"))
            .ok()?;
        self.metrics.inc("veneer_profile_reads_total", &[]);
        match serde_json::from_str(&body?) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, tenant, "a stored profile does not parse; starting afresh");
                None
            }
        }
    }

    /// Marks `subject`'s cached profile `shared` to be stored by the writer (never blocks
    /// beyond a hash insert).
    pub fn save(&self, tenant: &str, subject: &Subject, shared: &Shared) {
        let Some(db) = &self.db else { return };
        let key = cache_key(tenant, subject);
        let mut dirty = db.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        dirty
            .entry(key)
            .or_insert_with(|| (tenant.to_owned(), subject.key(), shared.clone()));
    }

    /// Queues the deletion of `subject`'s stored profile (its cached copy is the caller's to
    /// empty): a visitor whose behaviour moved to a customer.
    pub fn forget(&self, tenant: &str, subject: &Subject) {
        let Some(db) = &self.db else { return };
        let outcome = match db.tx.try_send(Op::Delete {
            tenant: tenant.to_owned(),
            subjects: vec![subject.key()],
        }) {
            Ok(()) => "queued",
            Err(TrySendError::Full(_)) => "dropped_queue_full",
            Err(TrySendError::Disconnected(_)) => "dropped_writer_gone",
        };
        self.metrics
            .inc("veneer_profile_writes_total", &[("outcome", outcome)]);
    }

    /// Waits until every write queued before this call is stored.
    pub fn flush(&self) {
        let Some(db) = &self.db else { return };
        let (done, wait) = std::sync::mpsc::channel();
        if db.tx.send(Op::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// Imports CRM attributes from JSON lines (blocking): each usable line is an upsert of
    /// the attributes it names (`null` removes one); a refused line writes nothing.
    /// `first_line` numbers the lines (for an import sent in parts).
    pub fn import(&self, tenant: &str, text: &[u8], first_line: usize) -> ImportReport {
        let mut report = ImportReport::default();
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let parsed = std::str::from_utf8(line)
                .map_err(|e| format!("not UTF-8: {e}"))
                .and_then(parse_line);
            match parsed {
                Ok((customer, attributes)) => {
                    let subject = Subject::Customer(customer);
                    let shared = self.get_blocking(tenant, &subject);
                    {
                        let mut p = shared.lock().unwrap_or_else(PoisonError::into_inner);
                        for (k, v) in attributes {
                            if v.is_null() {
                                p.attributes.remove(&k);
                            } else {
                                p.attributes.insert(k, v);
                            }
                        }
                    }
                    // The one cached copy, which requests change too: stored as it is when
                    // the writer comes round.
                    self.save(tenant, &subject, &shared);
                    report.imported += 1;
                }
                Err(error) => {
                    report.refused_count += 1;
                    if report.refused.len() < MAX_REPORTED {
                        report.refused.push(Refused {
                            line: first_line.saturating_add(i),
                            error,
                        });
                    }
                }
            }
        }
        self.flush();
        self.metrics.add(
            "veneer_profile_imported_total",
            &[("outcome", "imported")],
            report.imported as u64,
        );
        self.metrics.add(
            "veneer_profile_imported_total",
            &[("outcome", "refused")],
            report.refused_count as u64,
        );
        report
    }

    fn get_blocking(&self, tenant: &str, subject: &Subject) -> Shared {
        let key = cache_key(tenant, subject);
        // Read under the cache's guard for the key: a request loading it meanwhile waits for
        // this read instead of caching a copy of its own.
        match self.cache.get_value_or_guard(&key, None) {
            quick_cache::sync::GuardResult::Value(p) => p,
            quick_cache::sync::GuardResult::Guard(g) => {
                let loaded = Arc::new(Mutex::new(
                    self.read(tenant, &subject.key()).unwrap_or_default(),
                ));
                let _ = g.insert(loaded.clone());
                loaded
            }
            quick_cache::sync::GuardResult::Timeout => Arc::new(Mutex::new(
                self.read(tenant, &subject.key()).unwrap_or_default(),
            )),
        }
    }

    /// A subject's profile as stored (blocking), `None` when nothing is known.
    pub fn export(&self, tenant: &str, subject: &Subject) -> Option<Profile> {
        let p = self
            .get_blocking(tenant, subject)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        (!p.is_empty()).then_some(p)
    }

    /// Forgets `subjects` everywhere: the cache and the store (blocking, done when it
    /// returns).
    pub fn erase(&self, tenant: &str, subjects: &[Subject]) {
        for s in subjects {
            // A request holding this profile may still save it: marked, it never is.
            let key = cache_key(tenant, s);
            if let Some((_, p)) = self.cache.remove(&key) {
                *p.lock().unwrap_or_else(PoisonError::into_inner) = Profile {
                    erased: true,
                    ..Profile::default()
                };
            }
            if let Some(db) = &self.db {
                db.dirty
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&key);
            }
        }
        if let Some(db) = &self.db {
            let _ = db.tx.send(Op::Delete {
                tenant: tenant.to_owned(),
                subjects: subjects.iter().map(Subject::key).collect(),
            });
        }
        self.flush();
        // A request in flight may have cached a subject again meanwhile.
        for s in subjects {
            self.cache.remove(&cache_key(tenant, s));
        }
    }

    /// Forgets everything of `tenant` (a deleted tenant).
    pub fn purge(&self, tenant: &str) {
        let prefix = format!("{tenant}\u{1f}");
        self.cache.retain(|k, _| !k.starts_with(&prefix));
        if let Some(db) = &self.db {
            db.dirty
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|k, _| !k.starts_with(&prefix));
            // From the admin's async task: never wait for room (a purge that cannot be queued
            // is logged; the tenant's rows stay until the next delete of that name).
            if db.tx.try_send(Op::Purge(tenant.to_owned())).is_err() {
                tracing::error!(
                    tenant,
                    "the profile store is busy: this tenant's stored profiles were not deleted"
                );
            }
        }
    }

    /// Profiles in memory now.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

fn connect(path: &Path) -> anyhow::Result<Connection> {
    let conn =
        Connection::open(path).with_context(|| format!("opening profiles {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn write_loop(
    mut conn: Connection,
    rx: &Receiver<Op>,
    dirty: &Dirty,
    metrics: &Metrics,
    share: &std::sync::OnceLock<Arc<dyn Share>>,
) {
    let mut ops = Vec::with_capacity(64);
    loop {
        let gone = match rx.recv_timeout(WRITE_EVERY) {
            Ok(op) => {
                ops.push(op);
                false
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => true,
        };
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        let changed: Vec<(String, String, Shared)> = dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, v)| v)
            .collect();
        if !changed.is_empty() || !ops.is_empty() {
            let mut waiting = Vec::new();
            let mut shared = Vec::new();
            match store(&mut conn, changed, &mut ops, &mut waiting, &mut shared) {
                Ok(n) => {
                    metrics.add("veneer_profile_rows_stored_total", &[], n);
                    if let Some(share) = share.get()
                        && !shared.is_empty()
                    {
                        share.changed(shared);
                    }
                }
                Err(e) => {
                    metrics.inc("veneer_profile_write_errors_total", &[]);
                    tracing::error!(error = %e, "profile batch could not be stored");
                }
            }
            for done in waiting {
                let _ = done.send(());
            }
        }
        if gone {
            return;
        }
    }
}

/// Stores the changed profiles (each as it is now; an empty one is deleted), then the queued
/// deletions, in one transaction.
fn store(
    conn: &mut Connection,
    changed: Vec<(String, String, Shared)>,
    ops: &mut Vec<Op>,
    waiting: &mut Vec<std::sync::mpsc::Sender<()>>,
    outgoing: &mut Vec<Change>,
) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let mut n = 0;
    let now = jiff::Timestamp::now().as_second();
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO profiles (tenant, subject, body, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (tenant, subject) DO UPDATE SET body = ?3, updated_at = ?4",
        )?;
        let mut delete =
            tx.prepare_cached("DELETE FROM profiles WHERE tenant = ?1 AND subject = ?2")?;
        for (tenant, subject, shared) in changed {
            // Serialized under the profile's lock, so a request's change is stored whole.
            let body = {
                let p = shared.lock().unwrap_or_else(PoisonError::into_inner);
                if p.erased {
                    continue;
                }
                (!p.is_empty()).then(|| serde_json::to_string(&*p).unwrap_or_default())
            };
            match &body {
                Some(body) => {
                    put.execute(params![tenant, subject, body, now])?;
                    n += 1;
                }
                None => {
                    delete.execute(params![tenant, subject])?;
                }
            }
            outgoing.push((tenant, subject, body));
        }
        for op in ops.drain(..) {
            match op {
                Op::Delete { tenant, subjects } => {
                    for s in subjects {
                        delete.execute(params![tenant, s])?;
                        outgoing.push((tenant.clone(), s, None));
                    }
                }
                Op::Remote {
                    tenant,
                    subject,
                    body,
                } => match body {
                    Some(body) => {
                        put.execute(params![tenant, subject, body, now])?;
                    }
                    None => {
                        delete.execute(params![tenant, subject])?;
                    }
                },
                Op::Purge(tenant) => {
                    tx.execute("DELETE FROM profiles WHERE tenant = ?1", params![tenant])?;
                }
                Op::Flush(done) => waiting.push(done),
            }
        }
    }
    tx.commit()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: f64 = 3600.0;

    #[test]
    fn affinity_halves_every_half_life() {
        let mut p = Profile::default();
        p.viewed("boots", 0, HOUR);
        p.viewed("boots", 0, HOUR);
        let at = |p: &Profile, now| p.affinity_at(now, HOUR)[0].1;
        assert!((at(&p, 0) - 2.0).abs() < 1e-9);
        assert!((at(&p, 3600) - 1.0).abs() < 1e-9);
        assert!((at(&p, 7200) - 0.5).abs() < 1e-9);
        // A view an hour later adds to the decayed score.
        p.viewed("boots", 3600, HOUR);
        assert!((at(&p, 3600) - 2.0).abs() < 1e-9);
        // Long forgotten: gone.
        assert!(p.affinity_at(3600 + 20 * 3600, HOUR).is_empty());
    }

    #[test]
    fn cart_and_purchase() {
        let boots = Item {
            sku: "b1".into(),
            category: Some("boots".into()),
            price: 100.0,
            quantity: 1,
        };
        let mut p = Profile::default();
        p.cart_add(std::slice::from_ref(&boots), 10);
        p.cart_add(std::slice::from_ref(&boots), 20);
        assert_eq!(p.cart.items[0].quantity, 2);
        assert!(!p.abandoned(20 + 59, 60));
        assert!(p.abandoned(20 + 60, 60));
        p.purchase(&[], None, 100);
        assert!(p.cart.items.is_empty() && !p.abandoned(1000, 60));
        assert_eq!(p.purchases.count, 1);
        assert!((p.purchases.value - 200.0).abs() < 1e-9);
        assert_eq!(p.purchases.categories, vec!["boots".to_owned()]);
    }

    #[test]
    fn import_lines_are_checked() {
        assert!(parse_line(r#"{"customer": "c1", "attributes": {"tier": "gold"}}"#).is_ok());
        let e = parse_line(r#"{"customer": "c1", "attributes": {"tier": "gold"}"#)
            .expect_err("truncated");
        assert!(e.contains("expected"), "{e}");
        assert!(parse_line(r#"{"customer": "", "attributes": {}}"#).is_err());
        assert!(parse_line(r#"{"customer": "c1", "attributes": {"a.b": 1}}"#).is_err());
        assert!(parse_line(r#"{"customer": "c1", "attrs": {}}"#).is_err());
    }
}
