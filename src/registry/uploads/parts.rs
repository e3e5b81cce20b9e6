//! Uploads on object stores (and LFS), which cannot append: one object per chunk,
//! `part-<offset>` with its sha256 beside it, joined into the blob at the end.

use super::*;

impl Registry {
    /// Stores one chunk as `part-<offset>` with its sha256 beside it; returns its size.
    pub(super) async fn write_part(
        &self,
        name: &RepoName,
        id: &UploadId,
        offset: u64,
        first: Option<Bytes>,
        body: &mut BodyReader,
    ) -> Result<u64, ApiError> {
        let next = match first {
            Some(c) => Some(c),
            None => body.chunk().await.map_err(body_error)?,
        };
        if next.is_none() {
            return Ok(0);
        }
        let key = layout::upload_part(name, id, offset);
        let mut w = self.store.writer(&key).await?;
        let mut h = Sha256::new();
        if let Err(e) = pump(&mut w, next, body, |c| h.update(c)).await {
            w.abort().await;
            return Err(e);
        }
        let size = w.written();
        w.commit().await?;
        let hex = hex::encode(h.finalize());
        // the chunk itself is durable; its hash is a shortcut (a missing one means hashing the
        // chunk again at the end), so it need not wait for the disk
        self.store
            .put_unsynced(&format!("{key}.sha256"), Bytes::from(hex))
            .await?;
        Ok(size)
    }

    /// Joins the parts into the blob. A single part whose recorded hash matches is moved into
    /// place without copying; otherwise the parts are streamed, hashed and written anew.
    pub(super) async fn assemble(
        &self,
        name: &RepoName,
        id: &UploadId,
        parts: &[Part],
        d: &Digest,
    ) -> Result<u64, ApiError> {
        let total = end_of(parts);
        let dest = layout::blob_data(d);
        // the recorded hash is a sha256: a shortcut only for a blob named by one
        let sha256 = d.algorithm() == Algorithm::Sha256;
        if let ([p], true) = (parts, sha256) {
            if let Some(hex) = &p.sha256 {
                if hex != d.hex() {
                    let got = Digest::parse(&format!("sha256:{hex}"));
                    return Err(match got {
                        Some(g) => digest_mismatch(d, &g),
                        None => ApiError::new(Code::DigestInvalid, "upload content does not match the digest"),
                    });
                }
                if !self.blob_stored(d).await? {
                    self.store
                        .rename(&layout::upload_part(name, id, p.offset), &dest)
                        .await?;
                }
                return Ok(total);
            }
        }
        let mut w = self.store.writer(&dest).await?;
        let mut h = Hasher::new(d.algorithm());
        for p in parts {
            let key = layout::upload_part(name, id, p.offset);
            let Some((_, mut s)) = self.store.get(&key, None).await? else {
                w.abort().await;
                return Err(ApiError::new(Code::BlobUploadInvalid, "an upload chunk has vanished"));
            };
            while let Some(c) = s.next().await {
                let c = match c {
                    Ok(c) => c,
                    Err(e) => {
                        w.abort().await;
                        return Err(e.into());
                    }
                };
                h.update(&c);
                if let Err(e) = w.write(c).await {
                    w.abort().await;
                    return Err(e.into());
                }
            }
        }
        if w.written() != total {
            w.abort().await;
            return Err(ApiError::new(
                Code::BlobUploadInvalid,
                "upload chunks changed while assembling",
            ));
        }
        self.verify_and_commit(w, h, d).await?;
        Ok(total)
    }

    /// The upload's parts in order, from its directory listing.
    pub(super) async fn parts(
        &self,
        name: &RepoName,
        id: &UploadId,
        entries: &[crate::storage::Entry],
    ) -> Result<Vec<Part>, ApiError> {
        let mut parts = Vec::new();
        for e in entries {
            let Some(off) = e.name.strip_prefix("part-") else {
                continue;
            };
            if off.contains('.') {
                continue;
            }
            let Ok(offset) = off.parse::<u64>() else { continue };
            let key = layout::upload_part(name, id, offset);
            let Some(meta) = self.store.stat(&key).await? else {
                continue;
            };
            let sha256 = if entries.iter().any(|x| x.name == format!("{}.sha256", e.name)) {
                self.store
                    .read(&format!("{key}.sha256"), 128)
                    .await?
                    .and_then(|b| String::from_utf8(b.to_vec()).ok())
                    // a sidecar a crash cut short is no shortcut: the chunk is hashed again
                    .filter(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()))
            } else {
                None
            };
            parts.push(Part {
                offset,
                size: meta.size,
                sha256,
            });
        }
        parts.sort_by_key(|p| p.offset);
        let mut at = 0;
        for p in &parts {
            if p.offset != at {
                return Err(ApiError::new(
                    Code::BlobUploadInvalid,
                    "upload chunks are not contiguous; cancel and restart the upload",
                ));
            }
            at += p.size;
        }
        Ok(parts)
    }
}

pub(super) fn end_of(parts: &[Part]) -> u64 {
    parts.last().map(|p| p.offset + p.size).unwrap_or(0)
}
