//! Token buckets keyed by client address or account, for `/token` and failed sign-ins.
//!
//! Each process keeps its own buckets. With `redis` configured, replicas share the counts
//! instead (fixed windows of one bucket refill time, so N replicas allow what one would); when
//! Redis does not answer within a few milliseconds' budget the local bucket decides, so Redis
//! being down never blocks a sign-in.
//!
//! Why not `governor` (issue #17; checked against governor 0.10's keyed limiter API): its
//! keyed `RateLimiter` only decides by consuming (`check_key`, `check_key_n`,
//! `check_key_any_n` all test *and update*) and exposes no bucket level, so the failed-sign-in
//! limiter's [`Limiter::check`] (is a token left, without taking it) and
//! [`Limiter::untouched`] (is the bucket full) have no counterpart. Its keyed state is an
//! unbounded `DashMap`/`HashMap` trimmed only when the owner calls `retain_recent()`, while
//! these buckets live in a moka cache capped at 100 000 keys with a 10-minute idle expiry, so a
//! flood of unique client addresses cannot grow memory between sweeps. The Redis-shared mode
//! (fixed windows in a Lua script) is outside governor's scope either way. Emulating the
//! missing parts would need a custom `StateStore`, more code than the bucket below.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct Limiter {
    rate: f64,
    burst: f64,
    buckets: moka::sync::Cache<String, Arc<Mutex<Bucket>>>,
    shared: Option<(Arc<Shared>, &'static str)>,
}

/// Counters in Redis shared by every replica.
pub struct Shared {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    script: redis::Script,
    warned: std::sync::atomic::AtomicBool,
}

const REDIS_BUDGET: Duration = Duration::from_millis(250);

impl Shared {
    /// Connects (and checks the server answers) within a few seconds.
    pub async fn connect(url: &str, prefix: &str) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis.url: {e}"))?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(3))
            .set_response_timeout(REDIS_BUDGET)
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            redis::aio::ConnectionManager::new_with_config(client, cfg),
        )
        .await
        .map_err(|_| format!("redis.url: {url} did not answer within 5 s"))?
        .map_err(|e| format!("redis.url: cannot connect to {url}: {e}"))?;
        Ok(Arc::new(Shared {
            conn,
            prefix: prefix.to_owned(),
            // add `n` to the window's counter (creating it with its expiry) and return it
            script: redis::Script::new(
                "local v = redis.call('INCRBY', KEYS[1], ARGV[1]) \
                 if tonumber(v) == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end \
                 return v",
            ),
            warned: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Adds `n` (0 to read) to `key`'s counter in the current window; `None` when Redis failed.
    async fn add(&self, scope: &str, key: &str, n: u64, window: u64) -> Option<(u64, u64)> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let slot = now / window;
        let k = format!("{}{scope}:{key}:{slot}", self.prefix);
        let mut conn = self.conn.clone();
        let mut inv = self.script.key(k);
        inv.arg(n).arg(window * 2);
        let r: Result<Result<u64, redis::RedisError>, _> =
            tokio::time::timeout(REDIS_BUDGET, inv.invoke_async(&mut conn)).await;
        match r {
            Ok(Ok(v)) => {
                self.warned.store(false, std::sync::atomic::Ordering::Relaxed);
                Some((v, (slot + 1) * window - now))
            }
            other => {
                if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no answer in time".into(),
                    };
                    tracing::warn!(error = %why, "redis unavailable; rate limits fall back to this replica's own counts");
                }
                None
            }
        }
    }
}

impl Limiter {
    /// `rate` per second, bursts up to `burst`. A rate of 0 disables the limiter.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            buckets: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            shared: None,
        }
    }

    /// Counts in Redis (under `scope`) instead of locally, so replicas share the limit.
    pub fn shared(mut self, s: Arc<Shared>, scope: &'static str) -> Self {
        self.shared = Some((s, scope));
        self
    }

    /// Window and allowance of the shared counters: one bucket refill time, one burst.
    fn window(&self) -> u64 {
        ((self.burst / self.rate).ceil() as u64).max(1)
    }

    /// [`Self::take`], shared between replicas when Redis is configured.
    pub async fn take_async(&self, key: &str) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        if let Some((s, scope)) = &self.shared {
            if let Some((n, left)) = s.add(scope, key, 1, self.window()).await {
                return if n as f64 <= self.burst {
                    Ok(())
                } else {
                    Err(Duration::from_secs(left.max(1)))
                };
            }
        }
        self.take(key)
    }

    /// [`Self::check`], shared between replicas when Redis is configured.
    pub async fn check_async(&self, key: &str) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        if let Some((s, scope)) = &self.shared {
            if let Some((n, left)) = s.add(scope, key, 0, self.window()).await {
                return if (n as f64) < self.burst {
                    Ok(())
                } else {
                    Err(Duration::from_secs(left.max(1)))
                };
            }
        }
        self.check(key)
    }

    /// [`Self::spend`], shared between replicas when Redis is configured (the local bucket is
    /// charged too, so a Redis outage starts from what this replica saw).
    pub async fn spend_async(&self, key: &str) {
        if !self.enabled() {
            return;
        }
        if let Some((s, scope)) = &self.shared {
            let _ = s.add(scope, key, 1, self.window()).await;
        }
        self.spend(key);
    }

    /// Whether `key` has spent nothing lately (its bucket is full), shared between replicas
    /// when Redis is configured.
    pub async fn untouched_async(&self, key: &str) -> bool {
        if !self.enabled() {
            return true;
        }
        if let Some((s, scope)) = &self.shared {
            if let Some((n, _)) = s.add(scope, key, 0, self.window()).await {
                return n == 0;
            }
        }
        self.untouched(key)
    }

    /// Whether `key` has spent nothing lately: its bucket is full (or was never used).
    pub fn untouched(&self, key: &str) -> bool {
        if !self.enabled() || !self.buckets.contains_key(key) {
            return true;
        }
        self.with(key, |b| b.tokens >= self.burst)
    }

    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    fn with<T>(&self, key: &str, f: impl FnOnce(&mut Bucket) -> T) -> T {
        let b = self.buckets.get_with(key.to_owned(), || {
            Arc::new(Mutex::new(Bucket {
                tokens: self.burst,
                at: Instant::now(),
            }))
        });
        let mut g = b.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        g.tokens = (g.tokens + now.duration_since(g.at).as_secs_f64() * self.rate).min(self.burst);
        g.at = now;
        f(&mut g)
    }

    fn retry_after(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - tokens) / self.rate).max(0.0)).max(Duration::from_secs(1))
    }

    /// Takes one token; `Err(retry_after)` when the bucket is empty.
    pub fn take(&self, key: &str) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        self.with(key, |b| {
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                Ok(())
            } else {
                Err(self.retry_after(b.tokens))
            }
        })
    }

    /// Whether a token is available, without taking it.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        self.with(key, |b| {
            if b.tokens >= 1.0 {
                Ok(())
            } else {
                Err(self.retry_after(b.tokens))
            }
        })
    }

    /// Takes a token if there is one (recording an event such as a failure).
    pub fn spend(&self, key: &str) {
        if self.enabled() {
            self.with(key, |b| b.tokens = (b.tokens - 1.0).max(0.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket() {
        let l = Limiter::new(1.0, 3.0);
        assert!(l.take("a").is_ok());
        assert!(l.take("a").is_ok());
        assert!(l.take("a").is_ok());
        let r = l.take("a").unwrap_err();
        assert!(r >= Duration::from_secs(1));
        assert!(l.take("b").is_ok(), "keys are independent");
        let off = Limiter::new(0.0, 0.0);
        for _ in 0..100 {
            assert!(off.take("a").is_ok());
        }
        let f = Limiter::new(0.1, 2.0);
        assert!(f.check("x").is_ok());
        assert!(f.untouched("x"));
        f.spend("x");
        assert!(!f.untouched("x"));
        f.spend("x");
        assert!(f.check("x").is_err());
        assert!(f.untouched("y"), "a key never used is untouched");
    }
}
