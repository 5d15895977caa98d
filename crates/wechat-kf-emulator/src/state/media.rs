//! Temporary media: uploaded bytes kept 3 days, bounded in total size.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::clock::{DAY, Millis};
use crate::errors::{self, ApiError, ApiResult};
use crate::ids;

/// media_id lifetime.
pub const MEDIA_TTL: Millis = 3 * DAY;

/// The four temporary media types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    /// JPG/PNG.
    Image,
    /// AMR.
    Voice,
    /// MP4.
    Video,
    /// Anything.
    File,
}

impl MediaType {
    /// Parses the `type` query parameter / msgtype.
    pub fn parse(s: &str) -> Option<MediaType> {
        match s {
            "image" => Some(MediaType::Image),
            "voice" => Some(MediaType::Voice),
            "video" => Some(MediaType::Video),
            "file" => Some(MediaType::File),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::Image => "image",
            MediaType::Voice => "voice",
            MediaType::Video => "video",
            MediaType::File => "file",
        }
    }
}

/// One stored file.
#[derive(Debug, Clone)]
pub struct Media {
    /// Its type.
    pub kind: MediaType,
    /// The file name given at upload.
    pub filename: String,
    /// The Content-Type served by `media/get`.
    pub content_type: String,
    /// The bytes.
    pub data: Bytes,
    /// Upload time.
    pub created_at: Millis,
}

/// All media, oldest first for eviction.
#[derive(Debug, Default)]
pub struct MediaStore {
    by_id: HashMap<String, Media>,
    order: VecDeque<String>,
    total_bytes: usize,
}

impl MediaStore {
    /// Stores a file and returns its new media_id.
    pub fn insert(&mut self, media: Media, now: Millis, max_bytes: usize) -> String {
        self.prune(now);
        let id = ids::media_id();
        self.total_bytes += media.data.len();
        self.by_id.insert(id.clone(), media);
        self.order.push_back(id.clone());
        while self.total_bytes > max_bytes && self.order.len() > 1 {
            self.evict_oldest();
        }
        id
    }

    fn evict_oldest(&mut self) {
        if let Some(old) = self.order.pop_front() {
            if let Some(m) = self.by_id.remove(&old) {
                self.total_bytes -= m.data.len();
            }
        }
    }

    fn prune(&mut self, now: Millis) {
        while let Some(id) = self.order.front() {
            match self.by_id.get(id) {
                Some(m) if now - m.created_at < MEDIA_TTL => break,
                _ => self.evict_oldest(),
            }
        }
    }

    /// A valid, unexpired media (40007 otherwise).
    pub fn get(&self, id: &str, now: Millis) -> ApiResult<&Media> {
        match self.by_id.get(id) {
            Some(m) if now - m.created_at < MEDIA_TTL => Ok(m),
            _ => Err(ApiError::new(errors::INVALID_MEDIA_ID, "invalid media_id")),
        }
    }

    /// Checks a media_id used in a message: present (41006), valid (40007), of the expected type.
    pub fn check(&self, id: &str, kind: MediaType, now: Millis) -> ApiResult<()> {
        if id.is_empty() {
            return Err(ApiError::new(errors::MISSING_MEDIA_ID, "media_id missing"));
        }
        let media = self.get(id, now)?;
        if media.kind != kind {
            return Err(ApiError::new(
                errors::INVALID_MEDIA_ID,
                format!(
                    "invalid media_id: it is a {} media, not {}",
                    media.kind.as_str(),
                    kind.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// Number of stored files.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

const MB: usize = 1024 * 1024;

/// Largest media of a type that `sync_msg` delivers (official doc 94670); larger media arrive as
/// [`oversize_notice`].
pub fn sync_limit(kind: MediaType) -> usize {
    match kind {
        MediaType::Image | MediaType::Voice => 2 * MB,
        MediaType::Video => 10 * MB,
        MediaType::File => 20 * MB,
    }
}

/// The `text.content` of the notice that replaces media above [`sync_limit`] in `sync_msg`
/// (the real wording is unpublished; this one is the emulator's choice).
pub fn oversize_notice(kind: MediaType) -> &'static str {
    match kind {
        MediaType::Image => "[图片] 超过 2 MB，无法通过接口接收",
        MediaType::Voice => "[语音] 超过 2 MB，无法通过接口接收",
        MediaType::Video => "[视频] 超过 10 MB，无法通过接口接收",
        MediaType::File => "[文件] 超过 20 MB，无法通过接口接收",
    }
}

/// Content-Type for stored bytes of a type (sniffed for images).
pub fn content_type_for(kind: MediaType, data: &[u8], declared: Option<&str>) -> String {
    match kind {
        MediaType::Image if data.starts_with(b"\x89PNG") => "image/png".into(),
        MediaType::Image => "image/jpeg".into(),
        MediaType::Voice => "audio/amr".into(),
        MediaType::Video => "video/mp4".into(),
        MediaType::File => declared
            .filter(|d| !d.is_empty())
            .unwrap_or("application/octet-stream")
            .into(),
    }
}

/// Whether the bytes look like the format the type requires (JPG/PNG, AMR, MP4).
pub fn format_ok(kind: MediaType, data: &[u8]) -> bool {
    match kind {
        MediaType::Image => {
            data.starts_with(&[0xFF, 0xD8, 0xFF]) || data.starts_with(b"\x89PNG\r\n\x1a\n")
        }
        // AMR-NB file magic (RFC 4867 §5): "#!AMR\n"; AMR-WB ("#!AMR-WB\n") is not AMR.
        MediaType::Voice => data.starts_with(b"#!AMR\n"),
        MediaType::Video => data.len() >= 8 && &data[4..8] == b"ftyp",
        MediaType::File => true,
    }
}

/// The file of a customer media message injected without a media_id: real, decodable media
/// (see [`fixtures`](crate::fixtures)).
pub fn placeholder(kind: MediaType) -> (&'static str, Vec<u8>) {
    use crate::fixtures;
    match kind {
        MediaType::Image => ("image.png", fixtures::IMAGE_PNG.to_vec()),
        MediaType::Voice => ("voice.amr", fixtures::VOICE_AMR.to_vec()),
        MediaType::Video => ("video.mp4", fixtures::VIDEO_MP4.to_vec()),
        MediaType::File => ("file.txt", fixtures::FILE_TXT.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_pass_the_format_checks_of_their_type() {
        for kind in [
            MediaType::Image,
            MediaType::Voice,
            MediaType::Video,
            MediaType::File,
        ] {
            let (_, data) = placeholder(kind);
            assert!(format_ok(kind, &data), "{kind:?}");
            assert!(data.len() < sync_limit(kind));
        }
        assert!(crate::fixtures::VOICE_SILK.starts_with(b"\x02#!SILK_V3"));
    }
}
