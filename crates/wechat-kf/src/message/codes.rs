//! Integer-coded fields (origin, fail_type, status, ...) as enums that keep unknown values.
//!
//! WeChat adds codes over time (fail_type 11–13 arrived years after 0–10), so every enum has an
//! `Other(u32)` variant: a new code is never a decode error and re-encodes to the same number.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Declares an enum coded as a JSON integer, with an `Other(u32)` catch-all.
macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $code:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this version of the library does not know; the number is kept.
            Other(u32),
        }

        impl $name {
            /// The numeric code as sent on the wire.
            pub fn code(self) -> u32 {
                match self {
                    $( Self::$variant => $code, )+
                    Self::Other(code) => code,
                }
            }
        }

        impl From<u32> for $name {
            fn from(code: u32) -> Self {
                match code {
                    $( $code => Self::$variant, )+
                    other => Self::Other(other),
                }
            }
        }

        impl From<$name> for u32 {
            fn from(value: $name) -> u32 {
                value.code()
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_u32(self.code())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserialize_u32_lenient(deserializer).map(Self::from)
            }
        }
    };
}

code_enum! {
    /// Who produced a message (`origin`).
    Origin {
        /// 3: sent by the WeChat customer.
        Customer = 3,
        /// 4: an event pushed by the system (`msgtype` = `event`).
        System = 4,
        /// 5: sent by a servicer from the WeCom client (`servicer_userid` says who).
        Servicer = 5,
    }
}

code_enum! {
    /// Why an API-sent message was not delivered (`msg_send_fail.fail_type`).
    FailType {
        /// 0: unknown reason.
        Unknown = 0,
        /// 1: the customer service account was deleted.
        AccountDeleted = 1,
        /// 2: the application was disabled or closed.
        AppDisabled = 2,
        /// 4: the session expired (more than 48 hours since the customer's last message).
        SessionExpired = 4,
        /// 5: the session was closed.
        SessionClosed = 5,
        /// 6: more than 5 messages after one customer message.
        QuotaExceeded = 6,
        /// 7: no Channels (视频号) account bound (older list).
        ChannelsNotBound = 7,
        /// 8: the corp is not verified.
        CorpNotVerified = 8,
        /// 9: no Channels account bound and the corp not verified (older list).
        ChannelsNotBoundAndCorpNotVerified = 9,
        /// 10: the customer refuses messages (拒收).
        CustomerRefused = 10,
        /// 11: no member of the corp has logged into the WeCom app.
        NoMemberLoggedIn = 11,
        /// 12: the message type is forbidden by the KF component settings.
        MsgTypeForbidden = 12,
        /// 13: security restriction.
        SecurityRestriction = 13,
    }
}

code_enum! {
    /// A servicer's receiving status in `servicer_status_change` (1/2, unlike `servicer/list`'s 0/1).
    ServicerStatus {
        /// 1: receiving sessions (接待中).
        Receiving = 1,
        /// 2: stopped receiving (停止接待); see [`StopType`].
        Stopped = 2,
    }
}

code_enum! {
    /// How a servicer stopped receiving (`stop_type`, when the status is stopped).
    StopType {
        /// 0: stopped.
        Stopped = 0,
        /// 1: temporarily suspended (暂时挂起).
        Suspended = 1,
    }
}

code_enum! {
    /// What happened to a session in `session_status_change`.
    ChangeType {
        /// 1: a servicer picked the session from the queue (carries `msg_code`).
        PickedFromQueue = 1,
        /// 2: the session was transferred to another servicer.
        Transferred = 2,
        /// 3: the session was ended (carries `msg_code` for an ending message).
        Ended = 3,
        /// 4: a servicer re-joined an ended or transferred session by sending a message.
        Rejoined = 4,
    }
}

code_enum! {
    /// What a shared Channels (视频号) item is (`channels.sub_type`).
    ChannelsSubType {
        /// 1: a Channels post (动态).
        Post = 1,
        /// 2: a live stream (直播).
        Live = 2,
        /// 3: a Channels profile card (名片).
        ProfileCard = 3,
    }
}

code_enum! {
    /// Whether a servicer refuses a customer's messages (`reject_switch`).
    RejectSwitch {
        /// 0: the refusal was cancelled.
        Accepting = 0,
        /// 1: the servicer refuses this customer's messages.
        Rejecting = 1,
    }
}

/// Reads a `u32` given as a JSON number or as a string of digits.
///
/// Community schemas disagree on some numeric fields; accepting both costs nothing on the
/// number path.
fn deserialize_u32_lenient<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    struct U32Visitor;

    impl Visitor<'_> for U32Visitor {
        type Value = u32;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an unsigned 32-bit integer or a string of digits")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
            v.trim()
                .parse()
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }

    deserializer.deserialize_any(U32Visitor)
}

/// Serde helpers for fields whose JSON type differs between sources.
pub(crate) mod lenient {
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{self, Visitor};

    /// Reads an `f64` given as a JSON number or a numeric string (coordinates).
    pub fn f64_or_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        struct F64Visitor;

        impl Visitor<'_> for F64Visitor {
            type Value = f64;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a numeric string")
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
                Ok(v)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
                Ok(v as f64)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
                Ok(v as f64)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
                v.trim()
                    .parse()
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }

        deserializer.deserialize_any(F64Visitor)
    }

    /// Reads an optional text field that some sources send as a number (`sales_price`).
    pub fn opt_string_or_number<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<String>, D::Error> {
        struct TextVisitor;

        impl Visitor<'_> for TextVisitor {
            type Value = Option<String>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Some(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Some(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Some(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Some(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Some(v.to_string()))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
        }

        deserializer.deserialize_any(TextVisitor)
    }
}
