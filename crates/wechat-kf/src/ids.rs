//! Newtypes for the identifiers that travel through the kf API.
//!
//! They are plain strings on the wire; the types keep a customer id from being passed where an
//! account id is expected. None of them is secret, so their `Debug` shows the value.
//!
//! Each id is an immutable shared string (`Arc<str>`): cloning one is a reference-count bump, and
//! a page of messages for one account shares a single allocation of its `open_kfid`.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a string as this id.
            pub fn new(id: impl AsRef<str>) -> Self {
                Self(Arc::from(id.as_ref()))
            }

            /// The id as sent on the wire.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Copies the id into a `String`.
            pub fn into_string(self) -> String {
                String::from(&*self.0)
            }

            pub(crate) fn from_shared(id: Arc<str>) -> Self {
                Self(id)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new("")
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                crate::ids::SharedStr::deserialize(deserializer).map(|s| Self::from_shared(s.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(Arc::from(id))
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self::new(id)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.into_string()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                *self.0 == *other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                *self.0 == **other
            }
        }
    };
}

string_id!(
    /// A message id (`msgid`): unique per account; also the caller-chosen id of `send_msg`.
    MsgId
);
string_id!(
    /// A customer service account id (`open_kfid`, looks like `wkAJ2GCAAA…`).
    OpenKfId
);
string_id!(
    /// A WeChat customer's id (`external_userid`, looks like `wmAJ2GCAAA…`).
    ExternalUserId
);
string_id!(
    /// A WeCom member's id (`userid`): servicers and shared business cards.
    UserId
);
string_id!(
    /// A temporary media id (`media_id`), valid for 3 days after upload.
    MediaId
);

/// A string deserialized straight into an `Arc<str>` (borrowing from the input when it can, so
/// there is one allocation, not two).
pub(crate) struct SharedStr(pub(crate) Arc<str>);

impl<'de> Deserialize<'de> for SharedStr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = SharedStr;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SharedStr, E> {
                Ok(SharedStr(Arc::from(v)))
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}

/// Reuses the `Arc<str>` of ids seen recently while decoding one page: an account's pull has
/// one `open_kfid` and a limited set of customers and servicers, so most ids cost no allocation.
///
/// A direct-mapped cache: each id has one slot, chosen by a cheap hash; a colliding id simply
/// replaces the slot's occupant (a miss costs one allocation, as without the cache), so no input
/// can make a lookup slower than one hash and one comparison.
#[derive(Default)]
pub(crate) struct Interner {
    slots: Vec<Option<Arc<str>>>,
}

impl Interner {
    /// Slots per page (a power of two): a page of 1000 items from ~100 customers mostly hits.
    const SLOTS: usize = 256;

    pub(crate) fn intern(&mut self, id: &str) -> Arc<str> {
        if self.slots.is_empty() {
            self.slots.resize(Self::SLOTS, None);
        }
        let slot = &mut self.slots[Self::slot(id)];
        match slot {
            Some(known) if **known == *id => return Arc::clone(known),
            _ => {}
        }
        let fresh: Arc<str> = Arc::from(id);
        *slot = Some(Arc::clone(&fresh));
        fresh
    }

    /// FxHash-style mixing of the id's 8-byte words; the top bits pick the slot.
    fn slot(id: &str) -> usize {
        let mut hash = id.len() as u64;
        let mut chunks = id.as_bytes().chunks_exact(8);
        let mix =
            |hash: u64, word: u64| (hash.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            hash = mix(hash, u64::from_le_bytes(word));
        }
        let mut word = [0u8; 8];
        word[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        hash = mix(hash, u64::from_le_bytes(word));
        (hash >> (64 - Self::SLOTS.trailing_zeros())) as usize
    }
}

#[cfg(test)]
mod interner_tests {
    use super::*;

    #[test]
    fn interned_ids_share_memory_and_every_id_comes_back_equal() {
        let mut interner = Interner::default();
        let ids: Vec<String> = (0..2000)
            .map(|i| format!("wmAJ2GCAAAme1XQRC-{i}"))
            .collect();
        // 100 customers in 256 slots: most come back as the same allocation the second time.
        let first: Vec<Arc<str>> = ids[..100].iter().map(|id| interner.intern(id)).collect();
        let shared = ids[..100]
            .iter()
            .zip(&first)
            .filter(|(id, a)| Arc::ptr_eq(a, &interner.intern(id)))
            .count();
        assert!(shared > 50, "{shared} of 100 shared");
        let first = interner.intern("wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw");
        let again = interner.intern("wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw");
        assert!(Arc::ptr_eq(&first, &again));
        // Far more ids than slots: collisions evict, results stay exact.
        for id in &ids {
            assert_eq!(&*interner.intern(id), id.as_str());
        }
        assert_eq!(&*interner.intern(""), "");
    }
}
