//! Token buckets keyed by client address or account, for `/token` and failed sign-ins.

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
        }
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
        f.spend("x");
        f.spend("x");
        assert!(f.check("x").is_err());
    }
}
