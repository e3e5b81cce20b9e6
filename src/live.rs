//! A value that a config reload can swap while requests keep reading the old one.

use std::sync::{Arc, RwLock};

pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    pub fn new(v: T) -> Self {
        Live(RwLock::new(Arc::new(v)))
    }

    /// The current value; cheap (a read lock and a reference count), never held across awaits.
    pub fn get(&self) -> Arc<T> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn set(&self, v: T) {
        match self.0.write() {
            Ok(mut g) => *g = Arc::new(v),
            Err(p) => *p.into_inner() = Arc::new(v),
        }
    }
}
