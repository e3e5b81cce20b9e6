//! In-memory backend, for tests and throw-away registries.

use super::{clamp_range, ByteStream, Entry, ObjMeta};
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

#[derive(Default, Clone)]
pub struct MemStore {
    objects: Arc<Mutex<BTreeMap<String, (Bytes, SystemTime)>>>,
}

impl MemStore {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, (Bytes, SystemTime)>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stat(&self, key: &str) -> Option<ObjMeta> {
        self.lock().get(key).map(|(b, t)| ObjMeta {
            size: b.len() as u64,
            modified: Some(*t),
        })
    }

    pub fn get(&self, key: &str, range: Option<(u64, u64)>) -> Option<(ObjMeta, ByteStream)> {
        let (b, t) = self.lock().get(key).cloned()?;
        let meta = ObjMeta {
            size: b.len() as u64,
            modified: Some(t),
        };
        let (s, e) = clamp_range(range, meta.size);
        let part = b.slice(s as usize..e as usize);
        let stream: ByteStream = Box::pin(futures_util::stream::iter((!part.is_empty()).then_some(Ok(part))));
        Some((meta, stream))
    }

    pub fn read(&self, key: &str, limit: u64) -> io::Result<Option<Bytes>> {
        match self.lock().get(key) {
            Some((b, _)) if b.len() as u64 > limit => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{key} is larger than {limit} bytes"),
            )),
            Some((b, _)) => Ok(Some(b.clone())),
            None => Ok(None),
        }
    }

    pub fn put(&self, key: &str, data: Bytes) {
        self.lock().insert(key.to_owned(), (data, SystemTime::now()));
    }

    pub fn touch(&self, key: &str) {
        if let Some(v) = self.lock().get_mut(key) {
            v.1 = SystemTime::now();
        }
    }

    pub fn writer(&self, key: &str) -> MemWriter {
        MemWriter {
            store: self.clone(),
            key: key.to_owned(),
            buf: BytesMut::new(),
        }
    }

    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut m = self.lock();
        let v = m
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{from} not found")))?;
        m.insert(to.to_owned(), v);
        Ok(())
    }

    pub fn delete(&self, key: &str) {
        self.lock().remove(key);
    }

    pub fn delete_all(&self, prefix: &str) {
        let p = format!("{prefix}/");
        self.lock().retain(|k, _| !k.starts_with(&p));
    }

    pub fn list(&self, prefix: &str) -> Vec<Entry> {
        let p = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let m = self.lock();
        let mut out: Vec<Entry> = Vec::new();
        for k in m.range(p.clone()..).map(|(k, _)| k).take_while(|k| k.starts_with(&p)) {
            let rest = &k[p.len()..];
            let (name, is_dir) = match rest.split_once('/') {
                Some((n, _)) => (n, true),
                None => (rest, false),
            };
            if out.last().map(|e| e.name.as_str()) != Some(name) {
                out.push(Entry {
                    name: name.to_owned(),
                    is_dir,
                });
            }
        }
        out
    }
}

pub struct MemWriter {
    store: MemStore,
    key: String,
    buf: BytesMut,
}

impl MemWriter {
    pub fn write(&mut self, data: Bytes) {
        self.buf.extend_from_slice(&data);
    }
    pub fn written(&self) -> u64 {
        self.buf.len() as u64
    }
    pub fn commit(self) {
        self.store.put(&self.key, self.buf.freeze());
    }
}
