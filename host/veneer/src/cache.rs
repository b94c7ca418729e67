//! An in-memory HTTP cache of origin responses, per tenant, under a byte budget (RFC 9111 as a
//! shared cache). It sits before the plugins: one cached page serves every segment, and each
//! visitor's response is still personalized from it. What is stored is the origin's response
//! alone; responses that set cookies, are `private` or `no-store`, or vary on `*` are not.
//!
//! Freshness comes from `s-maxage`, then `max-age`, then `Expires` − `Date`, minus the `Age` the
//! response arrived with. A stale entry within `stale-while-revalidate` is served while one
//! background request revalidates it; past that it is revalidated before it is served, with
//! `If-None-Match`/`If-Modified-Since`. Requests for a key being fetched wait for that fetch
//! instead of all going to the origin (coalescing).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// Statuses a shared cache may store when the response says how long (RFC 9110 §15.1 lists
/// these as heuristically cacheable; this cache only stores them with explicit freshness).
const STORABLE: [u16; 8] = [200, 203, 204, 300, 301, 308, 404, 410];

/// The largest delta-seconds value kept (RFC 9111 §1.2.2).
const MAX_DELTA: u64 = 1 << 31;

/// Cache-Control directives, as far as this cache reads them.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Directives {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (for a response: store, but revalidate before each use).
    pub no_cache: bool,
    /// `private`.
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `max-age`.
    pub max_age: Option<u64>,
    /// `s-maxage`.
    pub s_maxage: Option<u64>,
    /// `stale-while-revalidate`.
    pub stale_while_revalidate: Option<u64>,
    /// `must-revalidate` / `proxy-revalidate`: never served stale.
    pub must_revalidate: bool,
}

/// Reads every Cache-Control line of `headers`.
pub fn directives(headers: &HeaderMap) -> Directives {
    let mut d = Directives::default();
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for part in value.split(',') {
            let (name, arg) = match part.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (part.trim(), None),
            };
            // Delta-seconds past 2^31 mean 2^31 (RFC 9111 §1.2.2): no overflow downstream.
            let seconds = || {
                arg.and_then(|a| a.parse::<u64>().ok())
                    .map(|n| n.min(MAX_DELTA))
            };
            match name.to_ascii_lowercase().as_str() {
                "no-store" => d.no_store = true,
                "no-cache" => d.no_cache = true,
                "private" => d.private = true,
                "public" => d.public = true,
                "max-age" => d.max_age = seconds().or(Some(0)),
                "s-maxage" => d.s_maxage = seconds().or(Some(0)),
                "stale-while-revalidate" => d.stale_while_revalidate = seconds(),
                "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                _ => {}
            }
        }
    }
    d
}

fn http_date(headers: &HeaderMap, name: HeaderName) -> Option<jiff::Timestamp> {
    let text = headers.get(name)?.to_str().ok()?;
    jiff::fmt::rfc2822::parse(text).ok().map(|z| z.timestamp())
}

/// How long a response may be served, if a shared cache may store it at all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Freshness {
    /// Freshness lifetime from the response's own clock.
    pub lifetime: Duration,
    /// How long past that it may be served while it is revalidated.
    pub stale_while_revalidate: Duration,
    /// Revalidate before every use (`no-cache`).
    pub always_revalidate: bool,
}

/// Whether a response to a request may be stored, and for how long. `personal`: the request
/// carried credentials (Authorization, cookies), so the answer is the visitor's own unless it
/// says `public` or `s-maxage`.
pub fn storable(status: StatusCode, headers: &HeaderMap, personal: bool) -> Option<Freshness> {
    if !STORABLE.contains(&status.as_u16())
        || headers.contains_key(header::SET_COOKIE)
        || headers.contains_key(header::CONTENT_RANGE)
        // What the origin says about one visitor must never be replayed to another.
        || headers.contains_key(crate::profile::IDENTIFY_HEADER)
        || headers.contains_key(crate::profile::EVENT_HEADER)
        || headers.get_all(header::VARY).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|n| n.trim() == "*"))
        })
    {
        return None;
    }
    let d = directives(headers);
    if d.no_store || d.private {
        return None;
    }
    if personal && !(d.public || d.s_maxage.is_some()) {
        return None;
    }
    let validators =
        headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    let lifetime = match (
        d.s_maxage.or(d.max_age),
        http_date(headers, header::EXPIRES),
    ) {
        (Some(secs), _) => Duration::from_secs(secs),
        (None, Some(expires)) => {
            let date = http_date(headers, header::DATE).unwrap_or_else(jiff::Timestamp::now);
            Duration::try_from(expires.duration_since(date)).unwrap_or_default()
        }
        // `Expires` present but unreadable means already expired (RFC 9111 §5.3).
        (None, None) if headers.contains_key(header::EXPIRES) => Duration::ZERO,
        (None, None) => return None,
    };
    if lifetime.is_zero() && !validators {
        return None;
    }
    Some(Freshness {
        lifetime,
        stale_while_revalidate: if d.must_revalidate {
            Duration::ZERO
        } else {
            Duration::from_secs(d.stale_while_revalidate.unwrap_or(0))
        },
        always_revalidate: d.no_cache,
    })
}

/// One stored response.
pub struct Entry {
    /// Unique among every entry this process made: output cached for a body names the body by
    /// it (an address could be reused by another body after an eviction).
    pub id: u64,
    /// Status.
    pub status: StatusCode,
    /// Headers as the origin sent them (hop-by-hop removed).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    stored: Instant,
    initial_age: Duration,
    freshness: Freshness,
    /// The request headers named by `Vary`, as the origin saw them.
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
    last_used: AtomicU64,
}

impl Entry {
    /// A stored response, `vary` taken from `request` (the headers the origin saw).
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        freshness: Freshness,
        request: &HeaderMap,
    ) -> Entry {
        let initial_age = headers
            .get(header::AGE)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map_or(Duration::ZERO, |n| Duration::from_secs(n.min(MAX_DELTA)));
        let vary = vary_names(&headers)
            .into_iter()
            .map(|n| {
                let v = request.get(&n).cloned();
                (n, v)
            })
            .collect();
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Entry {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            status,
            headers,
            body,
            stored: Instant::now(),
            initial_age,
            freshness,
            vary,
            last_used: AtomicU64::new(0),
        }
    }

    /// The response's current age.
    pub fn age(&self) -> Duration {
        self.initial_age.saturating_add(self.stored.elapsed())
    }

    /// `If-None-Match` / `If-Modified-Since` for revalidating this entry.
    pub fn validators(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        if let Some(etag) = self.headers.get(header::ETAG) {
            out.push((header::IF_NONE_MATCH, etag.clone()));
        }
        if let Some(lm) = self.headers.get(header::LAST_MODIFIED) {
            out.push((header::IF_MODIFIED_SINCE, lm.clone()));
        }
        out
    }

    /// The entry refreshed by a `304 Not Modified` (hop-by-hop headers already removed): its
    /// headers updated, its clock restarted.
    pub fn refreshed(&self, not_modified: &HeaderMap, request: &HeaderMap) -> Option<Entry> {
        let mut headers = self.headers.clone();
        for name in not_modified.keys() {
            if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
                continue;
            }
            headers.remove(name);
            for value in not_modified.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let freshness = storable(self.status, &headers, false)?;
        let mut fresh = Entry::new(self.status, headers, self.body.clone(), freshness, request);
        // The same body: copies rewritten from it stay good.
        fresh.id = self.id;
        Some(fresh)
    }

    fn size(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 32)
                .sum::<usize>()
            + 256
    }

    fn matches(&self, request: &HeaderMap) -> bool {
        self.vary.iter().all(|(name, value)| {
            request.get(name) == value.as_ref() && request.get_all(name).iter().count() <= 1
        })
    }
}

fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect()
}

/// What a lookup found.
pub enum Lookup {
    /// Fresh: serve it.
    Fresh(Arc<Entry>),
    /// Stale but within `stale-while-revalidate`: serve it and revalidate in the background.
    StaleWhileRevalidate(Arc<Entry>),
    /// Stale: revalidate before serving.
    Stale(Arc<Entry>),
    /// Nothing stored for this request.
    Miss,
}

/// Whether the caller fetches a key or waits for someone else's fetch.
pub enum Fill {
    /// Fetch it; others wait until this is dropped.
    Leader(FillGuard),
    /// Someone is fetching it: wait on this (created before the fetch can end, so the
    /// wake-up cannot be missed), then look again.
    Follower(tokio::sync::futures::OwnedNotified),
}

/// Held while one request fetches a key; wakes the waiters when dropped.
pub struct FillGuard {
    cache: Arc<Cache>,
    key: String,
    done: Arc<tokio::sync::Notify>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.cache
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
        self.done.notify_waiters();
    }
}

#[derive(Default)]
struct Stored {
    by_key: HashMap<String, Vec<Arc<Entry>>>,
    bytes: usize,
}

/// One tenant's cache.
pub struct Cache {
    /// Byte budget.
    pub max_bytes: usize,
    /// Largest response stored.
    pub max_object_bytes: usize,
    stored: Mutex<Stored>,
    /// Rewritten bodies (see [`Cache::output`]), in a budget of their own, a quarter of
    /// `max_bytes` beside it: copies never evict the origin's pages they were made from.
    outputs: Mutex<Stored>,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    clock: AtomicU64,
    /// Output keys made once and not kept yet (see [`Cache::store_output`]).
    seen_once: Mutex<std::collections::HashSet<String>>,
}

/// How many output keys seen once are remembered.
const SEEN_ONCE_KEYS: usize = 4096;

impl Cache {
    /// A cache of at most `max_bytes`, storing responses up to `max_object_bytes`.
    pub fn new(max_bytes: usize, max_object_bytes: usize) -> Cache {
        Cache {
            max_bytes,
            max_object_bytes,
            stored: Mutex::new(Stored::default()),
            outputs: Mutex::new(Stored::default()),
            inflight: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            seen_once: Mutex::new(std::collections::HashSet::new()),
        }
    }

    fn stored(&self) -> std::sync::MutexGuard<'_, Stored> {
        self.stored.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.stored().bytes
    }

    /// The entry for `key` matching `request`'s varying headers. `no_cache`: the request
    /// asked for revalidation.
    pub fn lookup(&self, key: &str, request: &HeaderMap, no_cache: bool) -> Lookup {
        self.lookup_in(&self.stored, key, request, no_cache)
    }

    fn lookup_in(
        &self,
        store: &Mutex<Stored>,
        key: &str,
        request: &HeaderMap,
        no_cache: bool,
    ) -> Lookup {
        let entry = {
            let stored = store.lock().unwrap_or_else(PoisonError::into_inner);
            stored
                .by_key
                .get(key)
                .and_then(|variants| variants.iter().find(|e| e.matches(request)).cloned())
        };
        let Some(entry) = entry else {
            return Lookup::Miss;
        };
        entry.last_used.store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let f = entry.freshness;
        let age = entry.age();
        if no_cache || f.always_revalidate {
            Lookup::Stale(entry)
        } else if age < f.lifetime {
            Lookup::Fresh(entry)
        } else if age < f.lifetime.saturating_add(f.stale_while_revalidate) {
            Lookup::StaleWhileRevalidate(entry)
        } else {
            Lookup::Stale(entry)
        }
    }

    /// Stores `entry` under `key` (replacing the variant with the same varying headers),
    /// evicting the least recently used entries past the budget. Returns whether it was kept.
    pub fn store(&self, key: &str, entry: Entry) -> bool {
        self.store_in(&self.stored, self.max_bytes, key, entry)
    }

    fn store_in(&self, store: &Mutex<Stored>, budget: usize, key: &str, entry: Entry) -> bool {
        let size = entry.size();
        if size > self.max_object_bytes + 64 * 1024 || size > budget {
            return false;
        }
        entry.last_used.store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let mut stored = store.lock().unwrap_or_else(PoisonError::into_inner);
        let variants = stored.by_key.entry(key.to_owned()).or_default();
        let mut freed = 0;
        variants.retain(|e| {
            let same = e.vary == entry.vary;
            if same {
                freed += e.size();
            }
            !same
        });
        variants.push(Arc::new(entry));
        stored.bytes = stored.bytes - freed + size;
        while stored.bytes > budget {
            // Least recently used first; a scan, since eviction only runs when full.
            let victim = stored
                .by_key
                .iter()
                .flat_map(|(k, vs)| vs.iter().map(move |e| (k, e)))
                .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
                .map(|(k, e)| (k.clone(), Arc::as_ptr(e)));
            let Some((k, ptr)) = victim else { break };
            let mut removed = 0;
            if let Some(vs) = stored.by_key.get_mut(&k) {
                vs.retain(|e| {
                    let hit = Arc::as_ptr(e) == ptr;
                    if hit {
                        removed = e.size();
                    }
                    !hit
                });
                if vs.is_empty() {
                    stored.by_key.remove(&k);
                }
            }
            stored.bytes -= removed;
        }
        true
    }

    /// Bytes held in rewritten copies.
    pub fn output_bytes(&self) -> usize {
        self.outputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
    }

    /// What to do about the rewrite digested as `key`: its kept copy, or whether to keep this
    /// one. A copy is kept the second time the same rewrite is asked for, so rewrites only one
    /// visitor gets (a greeting by name) are neither copied nor kept; the keys seen once are
    /// bounded by being forgotten all at once when too many.
    pub fn output(&self, key: &str) -> Output {
        if let Lookup::Fresh(e) = self.lookup_in(&self.outputs, key, &HeaderMap::new(), false) {
            return Output::Hit(e.body.clone());
        }
        let mut seen = self
            .seen_once
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if seen.remove(key) {
            return Output::Keep;
        }
        if seen.len() >= SEEN_ONCE_KEYS {
            seen.clear();
        }
        seen.insert(key.to_owned());
        Output::Skip
    }

    /// Keeps a rewritten body under `key` (a digest of everything that made it) in the
    /// copies' budget, least recently used evicted first. It never goes stale: the key names
    /// the cached body it was made from, so a new origin response makes a new key and this one
    /// is left to be evicted.
    pub fn store_output(&self, key: &str, body: Bytes) -> bool {
        let forever = Freshness {
            lifetime: Duration::from_secs(365 * 24 * 3600),
            stale_while_revalidate: Duration::ZERO,
            always_revalidate: false,
        };
        let entry = Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            body,
            forever,
            &HeaderMap::new(),
        );
        self.store_in(&self.outputs, self.max_bytes / 4, key, entry)
    }

    /// Becomes the one fetching `key`, or learns who is.
    pub fn begin_fill(self: &Arc<Self>, key: &str) -> Fill {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(done) = inflight.get(key) {
            return Fill::Follower(done.clone().notified_owned());
        }
        let done = Arc::new(tokio::sync::Notify::new());
        inflight.insert(key.to_owned(), done.clone());
        Fill::Leader(FillGuard {
            cache: self.clone(),
            key: key.to_owned(),
            done,
        })
    }
}

/// What [`Cache::output`] says about a rewrite.
pub enum Output {
    /// The kept copy.
    Hit(Bytes),
    /// Asked for before: keep this one.
    Keep,
    /// Not kept.
    Skip,
}

/// Whether a request may use the cache: `None` to bypass it (not GET/HEAD, its own
/// conditionals or range, `no-store`); otherwise whether it asked for revalidation.
pub fn request_policy(method: &Method, headers: &HeaderMap) -> Option<bool> {
    if (method != Method::GET && method != Method::HEAD)
        || headers.contains_key(header::RANGE)
        || headers.contains_key(header::IF_NONE_MATCH)
        || headers.contains_key(header::IF_MODIFIED_SINCE)
    {
        return None;
    }
    let d = directives(headers);
    if d.no_store {
        return None;
    }
    let pragma = headers
        .get(header::PRAGMA)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("no-cache"));
    Some(d.no_cache || d.max_age == Some(0) || pragma)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::try_from(*n).expect("name"),
                HeaderValue::try_from(*v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn freshness_follows_the_response_headers() {
        let ok = StatusCode::OK;
        let f = |pairs| storable(ok, &headers(pairs), false);
        assert_eq!(
            f(&[("cache-control", "max-age=60")]).map(|f| f.lifetime),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            f(&[("cache-control", "max-age=60, s-maxage=5")]).map(|f| f.lifetime),
            Some(Duration::from_secs(5)),
            "s-maxage wins in a shared cache"
        );
        assert_eq!(
            f(&[
                ("date", "Wed, 25 Nov 2026 10:00:00 GMT"),
                ("expires", "Wed, 25 Nov 2026 10:02:00 GMT")
            ])
            .map(|f| f.lifetime),
            Some(Duration::from_secs(120))
        );
        assert_eq!(f(&[("cache-control", "no-store, max-age=60")]), None);
        assert_eq!(f(&[("cache-control", "private, max-age=60")]), None);
        assert_eq!(
            f(&[("cache-control", "max-age=60"), ("set-cookie", "a=b")]),
            None
        );
        assert_eq!(
            f(&[("cache-control", "max-age=60"), ("vary", "accept, *")]),
            None
        );
        assert_eq!(f(&[]), None, "no explicit freshness: not stored");
        assert_eq!(
            f(&[("cache-control", "max-age=0")]),
            None,
            "nothing to revalidate with"
        );
        assert!(
            f(&[
                ("cache-control", "no-cache"),
                ("etag", "\"1\""),
                ("expires", "0")
            ])
            .is_some_and(|f| f.always_revalidate)
        );
        assert_eq!(
            f(&[("cache-control", "max-age=1, stale-while-revalidate=30")])
                .map(|f| f.stale_while_revalidate),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            storable(
                StatusCode::OK,
                &headers(&[("cache-control", "max-age=60")]),
                true
            ),
            None,
            "authorized requests need public or s-maxage"
        );
        assert!(
            storable(
                StatusCode::OK,
                &headers(&[("cache-control", "public, max-age=60")]),
                true
            )
            .is_some()
        );
        assert_eq!(
            storable(
                StatusCode::PARTIAL_CONTENT,
                &headers(&[("cache-control", "max-age=60")]),
                false
            ),
            None
        );
    }

    #[test]
    fn variants_eviction_and_requests_that_bypass() {
        let cache = Cache::new(3000, 2000);
        let f = Freshness {
            lifetime: Duration::from_secs(60),
            stale_while_revalidate: Duration::ZERO,
            always_revalidate: false,
        };
        let resp = headers(&[("vary", "accept-language")]);
        let en = headers(&[("accept-language", "en")]);
        let nb = headers(&[("accept-language", "nb")]);
        cache.store(
            "k",
            Entry::new(StatusCode::OK, resp.clone(), Bytes::from("english"), f, &en),
        );
        assert!(matches!(cache.lookup("k", &en, false), Lookup::Fresh(e) if e.body == "english"));
        assert!(matches!(cache.lookup("k", &nb, false), Lookup::Miss));
        cache.store(
            "k",
            Entry::new(StatusCode::OK, resp, Bytes::from("norsk"), f, &nb),
        );
        assert!(matches!(cache.lookup("k", &nb, false), Lookup::Fresh(e) if e.body == "norsk"));
        assert!(
            matches!(cache.lookup("k", &en, true), Lookup::Stale(_)),
            "the request asked to revalidate"
        );
        // Over budget: the least recently used goes.
        let big = Bytes::from(vec![b'x'; 1500]);
        cache.store(
            "a",
            Entry::new(StatusCode::OK, HeaderMap::new(), big.clone(), f, &en),
        );
        let _ = cache.lookup("a", &en, false);
        cache.store(
            "b",
            Entry::new(StatusCode::OK, HeaderMap::new(), big, f, &en),
        );
        assert!(cache.bytes() <= 3000, "{}", cache.bytes());
        assert!(matches!(cache.lookup("b", &en, false), Lookup::Fresh(_)));
        assert!(!cache.store(
            "c",
            Entry::new(
                StatusCode::OK,
                HeaderMap::new(),
                Bytes::from(vec![0; 5000]),
                f,
                &en
            )
        ));
        assert_eq!(request_policy(&Method::POST, &HeaderMap::new()), None);
        assert_eq!(
            request_policy(&Method::GET, &headers(&[("range", "bytes=0-1")])),
            None
        );
        assert_eq!(
            request_policy(&Method::GET, &headers(&[("cache-control", "no-store")])),
            None
        );
        assert_eq!(
            request_policy(&Method::GET, &headers(&[("cache-control", "no-cache")])),
            Some(true)
        );
        assert_eq!(
            request_policy(&Method::HEAD, &HeaderMap::new()),
            Some(false)
        );
    }
}
