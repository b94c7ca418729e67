//! Per-client limits, like nginx's `limit_conn` / `limit_req` and Envoy's local rate limit:
//! connections per client address, and a token bucket of requests per client address per
//! tenant. Both live in memory on one node; state for clients not seen for a minute is pruned,
//! so a scan over many addresses cannot grow it without bound.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Open connections per client address.
pub struct ConnectionLimiter {
    max: u32,
    open: Arc<DashMap<IpAddr, u32>>,
}

/// One admitted connection; the count goes down when it is dropped.
pub struct ConnectionGuard {
    ip: IpAddr,
    open: Arc<DashMap<IpAddr, u32>>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        // Remove the entry at zero so idle addresses cost nothing.
        self.open.remove_if_mut(&self.ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

/// The key a client address is limited under: IPv4 as it is, IPv6 by its /64 (one host
/// typically holds a whole /64 and could otherwise rotate through it).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

impl ConnectionLimiter {
    /// At most `max` connections per address (0: no limit).
    pub fn new(max: u32) -> Self {
        ConnectionLimiter {
            max,
            open: Arc::new(DashMap::new()),
        }
    }

    /// Admits one more connection from `ip`, or `None` when it already has `max`.
    pub fn admit(&self, ip: IpAddr) -> Option<ConnectionGuard> {
        let ip = client_key(ip);
        if self.max > 0 {
            let mut n = self.open.entry(ip).or_insert(0);
            if *n >= self.max {
                return None;
            }
            *n += 1;
        }
        Some(ConnectionGuard {
            ip,
            open: self.open.clone(),
        })
    }

    /// Addresses with open connections (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.open.len()
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket per key: per (tenant, client address) for requests, per (tenant, visitor)
/// for beacon events.
pub struct RateLimiter<K = (Arc<str>, IpAddr)> {
    buckets: DashMap<K, Bucket>,
    inserts: AtomicU64,
}

impl<K: std::hash::Hash + Eq> Default for RateLimiter<K> {
    fn default() -> Self {
        RateLimiter {
            buckets: DashMap::new(),
            inserts: AtomicU64::new(0),
        }
    }
}

/// Prune idle buckets after this many new ones.
const PRUNE_EVERY: u64 = 10_000;
/// A bucket idle this long is full again, so forgetting it changes nothing.
const IDLE: Duration = Duration::from_secs(60);

impl RateLimiter {
    /// Takes one token for `ip` at `tenant`, refilling `rate` per second up to `burst`.
    /// `Err(retry_after)` when the bucket is empty.
    pub fn take(
        &self,
        tenant: &Arc<str>,
        ip: IpAddr,
        rate: f64,
        burst: f64,
    ) -> Result<(), Duration> {
        self.take_key((tenant.clone(), client_key(ip)), rate, burst)
    }
}

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    /// Takes one token from `key`'s bucket, refilling `rate` per second up to `burst`.
    /// `Err(retry_after)` when the bucket is empty.
    pub fn take_key(&self, key: K, rate: f64, burst: f64) -> Result<(), Duration> {
        if rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut fresh = false;
        let result = {
            let mut bucket = self.buckets.entry(key).or_insert_with(|| {
                fresh = true;
                Bucket {
                    tokens: burst,
                    last: now,
                }
            });
            let elapsed = now.duration_since(bucket.last).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
            bucket.last = now;
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                Ok(())
            } else {
                Err(Duration::try_from_secs_f64((1.0 - bucket.tokens) / rate)
                    .unwrap_or(Duration::from_secs(3600)))
            }
        };
        if fresh && self.inserts.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.buckets
                .retain(|_, b| now.duration_since(b.last) < IDLE);
        }
        result
    }

    /// Buckets held (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// Bounds how many lines of one kind are logged per second, so a client flooding the host with
/// bad or over-limit requests cannot turn each one into a log line (the metrics still count
/// every one). What was left out is reported once the next second opens.
pub struct LogBudget {
    per_second: u64,
    window: AtomicU64,
    used: AtomicU64,
    skipped: AtomicU64,
}

impl LogBudget {
    /// At most `per_second` lines per second.
    pub fn new(per_second: u64) -> Self {
        LogBudget {
            per_second,
            window: AtomicU64::new(0),
            used: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now; `Some(n)` also when `n` lines were skipped in an
    /// earlier second and should be reported.
    pub fn admit(&self) -> (bool, Option<u64>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut skipped = None;
        let window = self.window.load(Ordering::Relaxed);
        if window != now
            && self
                .window
                .compare_exchange(window, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
            skipped = Some(self.skipped.swap(0, Ordering::Relaxed)).filter(|n| *n > 0);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < self.per_second {
            (true, skipped)
        } else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            (false, skipped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_per_address_and_released() {
        let limiter = ConnectionLimiter::new(2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let g1 = limiter.admit(a).expect("first");
        let _g2 = limiter.admit(a).expect("second");
        assert!(limiter.admit(a).is_none(), "third from the same address");
        assert!(
            limiter.admit(b).is_some(),
            "another address is not affected"
        );
        drop(g1);
        assert!(limiter.admit(a).is_some(), "a slot came free");
    }

    #[test]
    fn log_lines_are_bounded_per_second_and_the_rest_reported() {
        let budget = LogBudget::new(3);
        let admitted = (0..10).filter(|_| budget.admit().0).count();
        // Ten calls may straddle a second boundary; at most two windows' worth get through.
        assert!((3..=6).contains(&admitted), "{admitted}");
        std::thread::sleep(Duration::from_millis(1100));
        let (ok, skipped) = budget.admit();
        assert!(ok);
        assert!(skipped.is_some_and(|n| n >= 4), "{skipped:?}");
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let limiter = RateLimiter::default();
        let t: Arc<str> = Arc::from("shop");
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        for _ in 0..5 {
            assert!(limiter.take(&t, ip, 10.0, 5.0).is_ok());
        }
        let wait = limiter.take(&t, ip, 10.0, 5.0).expect_err("burst used up");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!(limiter.take(&t, other, 10.0, 5.0).is_ok());
        std::thread::sleep(Duration::from_millis(120));
        assert!(limiter.take(&t, ip, 10.0, 5.0).is_ok(), "refilled");
        assert!(limiter.take(&t, ip, 0.0, 0.0).is_ok(), "rate 0 is off");
    }
}
