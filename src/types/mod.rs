//! The ground floor: the values every room speaks of (repository names, tags, digests,
//! references, upload ids, token scopes and their actions, byte streams). This module imports
//! nothing of the project; everything else may import it.

pub mod names;
pub mod scope;

use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

pub use names::{Algorithm, Digest, Hasher, Reference, RepoName, Tag, UploadId, MAX_NAME_LEN};
pub use scope::{Action, Actions, Resource, Scope};

/// A body read or written piece by piece; never a whole blob in memory.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;
