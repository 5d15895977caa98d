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
/// one `open_kfid` and few customers, so most ids cost no allocation at all.
#[derive(Default)]
pub(crate) struct Interner {
    recent: Vec<Arc<str>>,
}

impl Interner {
    /// How many distinct recent ids are remembered (searched linearly; small on purpose).
    const CAPACITY: usize = 8;

    pub(crate) fn intern(&mut self, id: &str) -> Arc<str> {
        if let Some(found) = self.recent.iter().find(|known| ***known == *id) {
            return Arc::clone(found);
        }
        let fresh: Arc<str> = Arc::from(id);
        if self.recent.len() == Self::CAPACITY {
            self.recent.remove(0);
        }
        self.recent.push(Arc::clone(&fresh));
        fresh
    }
}
