//! How values are written: one deserializer per kind of value (durations, secrets, words), so
//! every setting of a kind reads the same way from the file, a variable or a flag.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{Deserialize, Deserializer, Error as _};

use super::{FirstStart, LogFormat, MediaKind, Secret, Synchronous, VoiceFormat, VoiceTarget};

/// A string value read with `parse`, whose error (never the value of a secret) becomes the
/// key's message.
fn parsed<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    parse(&String::deserialize(d)?).map_err(D::Error::custom)
}

/// One of a few words, in any case.
fn word<T: Copy>(value: &str, words: &[(&str, T)], expected: &str) -> Result<T, String> {
    let found = words
        .iter()
        .find(|(w, _)| w.eq_ignore_ascii_case(value.trim()));
    found
        .map(|&(_, v)| v)
        .ok_or_else(|| format!("{value:?}: expected {expected}"))
}

/// A duration: humantime (`"30s"`, `"5m"`, `"7days"`, `"1h 30m"`), or `"0"`.
pub(super) fn parse_duration(value: &str) -> Result<Duration, String> {
    if value.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(value)
        .map_err(|e| format!("{value:?} is not a duration like \"30s\": {e}"))
}

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parsed(d, parse_duration)
}

/// `joiner.window_ms`: a whole number of milliseconds.
pub(super) fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

/// A secret; an empty string is none.
pub(super) fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    non_empty(d)
}

/// `[media.object_store_options]`: every value may be a key.
pub(super) fn secrets<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Secret>, D::Error> {
    let map = BTreeMap::<String, String>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, Secret::new(v))).collect())
}

/// An optional string, path or secret; an empty string is none.
pub(super) fn non_empty<'de, D: Deserializer<'de>, T: From<String>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    let value = Option::<String>::deserialize(d)?;
    Ok(value.filter(|v| !v.is_empty()).map(T::from))
}

pub(super) fn addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parsed(d, |v| {
        v.parse()
            .map_err(|_| format!("{v:?} is not an address like 127.0.0.1:8080"))
    })
}

/// An optional address; an empty string is none.
pub(super) fn opt_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let value = Option::<String>::deserialize(d)?;
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{v:?} is not an address like 127.0.0.1:9090"))),
    }
}

pub(super) fn media_kinds<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<MediaKind>, D::Error> {
    let kinds = Vec::<String>::deserialize(d)?;
    kinds
        .iter()
        .map(|k| {
            k.parse()
                .map_err(|_| format!("{k:?} is not image, voice, video or file"))
        })
        .collect::<Result<_, _>>()
        .map_err(D::Error::custom)
}

pub(super) fn voice_format<'de, D: Deserializer<'de>>(d: D) -> Result<VoiceFormat, D::Error> {
    use VoiceFormat::{Amr, Silk};
    let words = [("amr", Amr), ("0", Amr), ("silk", Silk), ("1", Silk)];
    parsed(d, |v| word(v, &words, "amr or silk"))
}

pub(super) fn voice_target<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<VoiceTarget>, D::Error> {
    use VoiceTarget::{Mp3, OggOpus, Wav};
    let words = [
        ("wav", Some(Wav)),
        ("ogg", Some(OggOpus)),
        ("opus", Some(OggOpus)),
        ("mp3", Some(Mp3)),
        ("none", None),
        ("", None),
    ];
    parsed(d, |v| word(v, &words, "wav, ogg, mp3 or none"))
}

pub(super) fn synchronous<'de, D: Deserializer<'de>>(d: D) -> Result<Synchronous, D::Error> {
    let words = [("normal", Synchronous::Normal), ("full", Synchronous::Full)];
    parsed(d, |v| word(v, &words, "normal or full"))
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let words = [("text", LogFormat::Text), ("json", LogFormat::Json)];
        parsed(d, |v| word(v, &words, "text or json"))
    }
}

impl<'de> Deserialize<'de> for FirstStart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, FirstStart::parse)
    }
}
