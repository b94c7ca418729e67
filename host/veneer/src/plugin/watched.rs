//! WASI's clocks and random numbers for a plugin that declares itself deterministic, noting
//! when it reads them: what it answers after such a read is not a function of what its kept
//! answers are keyed by (see `proxy::memo`), so that request's answers are not kept.
//!
//! Not watched: `wasi:random/insecure-seed`, which Rust's `HashMap` reads (for wasm32-wasip2)
//! when an instance makes its first map, to resist hash flooding: watching it would keep no
//! answer of most plugins, and a plugin whose answer follows a `HashMap`'s iteration order
//! breaks its promise (the guide says to use `BTreeMap` or sort). Nor a timer's pollable
//! (`subscribe-duration`), which `std::thread::sleep` uses: it tells whether time passed, not
//! what time it is.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime_wasi::{HostMonotonicClock, HostWallClock, Rng, WasiCtxBuilder};

/// Gives `builder` clocks and random generators that set `read` when the plugin reads them.
pub(super) fn watch(builder: &mut WasiCtxBuilder, read: &Arc<AtomicBool>) {
    builder
        .wall_clock(Wall {
            read: read.clone(),
            inner: wasmtime_wasi::clocks::wall_clock(),
        })
        .monotonic_clock(Monotonic {
            read: read.clone(),
            inner: wasmtime_wasi::clocks::monotonic_clock(),
        })
        .secure_random(Random {
            read: read.clone(),
            inner: None,
        })
        .insecure_random(Random {
            read: read.clone(),
            inner: None,
        });
}

struct Wall {
    read: Arc<AtomicBool>,
    inner: Box<dyn HostWallClock + Send>,
}

impl HostWallClock for Wall {
    fn resolution(&self) -> Duration {
        self.inner.resolution()
    }
    fn now(&self) -> Duration {
        self.read.store(true, Ordering::Relaxed);
        self.inner.now()
    }
}

struct Monotonic {
    read: Arc<AtomicBool>,
    inner: Box<dyn HostMonotonicClock + Send>,
}

impl HostMonotonicClock for Monotonic {
    fn resolution(&self) -> u64 {
        self.inner.resolution()
    }
    fn now(&self) -> u64 {
        self.read.store(true, Ordering::Relaxed);
        self.inner.now()
    }
}

/// A generator seeded at its first use: most plugins never ask for random numbers.
struct Random {
    read: Arc<AtomicBool>,
    inner: Option<Box<dyn Rng + Send>>,
}

impl Random {
    fn rng(&mut self) -> &mut (dyn Rng + Send) {
        self.read.store(true, Ordering::Relaxed);
        self.inner
            .get_or_insert_with(wasmtime_wasi::thread_rng)
            .as_mut()
    }
}

impl rand_core::TryRng for Random {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.rng().next_u32())
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.rng().next_u64())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.rng().fill_bytes(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_a_clock_or_a_generator_is_noted_and_its_resolution_is_not() {
        let read = Arc::new(AtomicBool::new(false));
        let wall = Wall {
            read: read.clone(),
            inner: wasmtime_wasi::clocks::wall_clock(),
        };
        let _ = wall.resolution();
        assert!(!read.load(Ordering::Relaxed));
        assert!(wall.now() > Duration::from_secs(1_700_000_000));
        assert!(read.swap(false, Ordering::Relaxed));
        let mono = Monotonic {
            read: read.clone(),
            inner: wasmtime_wasi::clocks::monotonic_clock(),
        };
        let _ = mono.resolution();
        assert!(!read.load(Ordering::Relaxed));
        let _ = mono.now();
        assert!(read.swap(false, Ordering::Relaxed));
        let mut random = Random {
            read: read.clone(),
            inner: None,
        };
        let (a, b) = (random.next_u64(), random.next_u64());
        assert!(read.load(Ordering::Relaxed));
        assert_ne!(a, b, "a generator, not a constant");
    }
}
