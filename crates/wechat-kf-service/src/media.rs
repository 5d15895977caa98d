//! Downloading inbound media before delivery (`[media]`), so the bot never races WeChat's
//! 3-day media expiry, and optionally converting voice notes into a playable format.
//!
//! Files go to `<download_dir>/<open_kfid>/<msgid>/<server file name>` through the client's
//! `download_to_dir` (temporary file, renamed when complete; an error body is never saved). The
//! outcome — path, content type, or the error — is a JSON *media record* stored with the
//! message and delivered beside it (`media` in the webhook body). A failed download or
//! conversion is recorded, never fatal: the message is delivered anyway.
//!
//! ```json
//! {"msgid":"…","msgtype":"voice","media_id":"…","path":"/srv/media/wk…/…/语音.amr",
//!  "file_name":"语音.amr","content_type":"audio/amr","size":3206,
//!  "converted":{"format":"wav","path":"/srv/media/wk…/…/语音.wav","content_type":"audio/wav","size":64044}}
//! {"msgid":"…","msgtype":"image","media_id":"…","error":{"kind":"media_id_invalid","errcode":40007,"message":"…"}}
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use wechat_kf::client::{Client, ErrCode};
use wechat_kf::voice::{Converter, VoiceError};
use wechat_kf::{Message, MessageContent};

use crate::Error;
use crate::config::{MediaConfig, VoiceTarget};
use crate::metrics::Metrics;
use crate::reply::safe_error;

/// A media message to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    pub(crate) msgid: String,
    pub(crate) msgtype: &'static str,
    pub(crate) media_id: String,
}

/// The media id of an image, voice, video or file message.
pub(crate) fn media_of(message: &Message) -> Option<(&'static str, String)> {
    let (msgtype, id) = match message.content() {
        MessageContent::Image(p) => ("image", &p.media_id),
        MessageContent::Voice(p) => ("voice", &p.media_id),
        MessageContent::Video(p) => ("video", &p.media_id),
        MessageContent::File(p) => ("file", &p.media_id),
        _ => return None,
    };
    Some((msgtype, id.as_str().to_owned()))
}

/// Downloads media into the configured directory.
pub(crate) struct MediaFetcher {
    client: Client,
    config: MediaConfig,
    dir: PathBuf,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MediaFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaFetcher")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl MediaFetcher {
    /// The fetcher of a configuration, or `None` when downloads are off. Creates the directory.
    pub(crate) async fn new(
        client: Client,
        config: &MediaConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Option<MediaFetcher>, Error> {
        let Some(dir) = &config.download_dir else {
            return Ok(None);
        };
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| Error::io(format!("media.download_dir {}", dir.display()), e))?;
        // Paths handed to the bot are absolute.
        let dir = tokio::fs::canonicalize(dir)
            .await
            .map_err(|e| Error::io(format!("media.download_dir {}", dir.display()), e))?;
        Ok(Some(MediaFetcher {
            client,
            config: config.clone(),
            dir,
            metrics,
        }))
    }

    /// The message types downloaded.
    pub(crate) fn msgtypes(&self) -> Vec<String> {
        self.config
            .kinds
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect()
    }

    /// The job for a message, when it is a media message of a configured kind.
    pub(crate) fn job(&self, message: &Message) -> Option<Job> {
        let (msgtype, media_id) = media_of(message)?;
        if !self.config.wants(msgtype) || media_id.is_empty() {
            return None;
        }
        Some(Job {
            msgid: message.msgid().as_str().to_owned(),
            msgtype,
            media_id,
        })
    }

    /// Downloads several media files (bounded concurrency); returns `(seq, record JSON)`.
    pub(crate) async fn fetch_all(
        &self,
        open_kfid: &str,
        jobs: Vec<(i64, Job)>,
    ) -> Vec<(i64, String)> {
        futures::stream::iter(jobs)
            .map(|(seq, job)| async move { (seq, self.fetch(open_kfid, &job).await.to_string()) })
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await
    }

    /// Downloads one file (and converts a voice note); the media record.
    pub(crate) async fn fetch(&self, open_kfid: &str, job: &Job) -> Value {
        let mut record = Map::new();
        record.insert("msgid".into(), json!(job.msgid));
        record.insert("msgtype".into(), json!(job.msgtype));
        record.insert("media_id".into(), json!(job.media_id));
        let dir = self
            .dir
            .join(path_component(open_kfid))
            .join(path_component(&job.msgid));
        // Leftovers of an interrupted attempt (this directory belongs to this message only).
        let _ = tokio::fs::remove_dir_all(&dir).await;
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            self.metrics.media_download(job.msgtype, "failed");
            record.insert("error".into(), error_json("io", None, &e.to_string()));
            return Value::Object(record);
        }
        let downloaded = self
            .client
            .media()
            .download_to_dir(job.media_id.as_str(), &dir)
            .await;
        let (path, info) = match downloaded {
            Ok(done) => done,
            Err(e) => {
                self.metrics.media_download(job.msgtype, "failed");
                let (kind, errcode) = match e.errcode() {
                    Some(ErrCode::InvalidMediaId) => ("media_id_invalid", Some(40007)),
                    Some(ErrCode::ConcurrencyLimit) => ("busy", Some(45033)),
                    Some(code) => ("wechat", Some(code.code())),
                    None if matches!(e, wechat_kf::client::Error::Io { .. }) => ("io", None),
                    None => ("network", None),
                };
                tracing::warn!(
                    open_kfid,
                    kind,
                    errcode,
                    "media download failed; delivering without the file"
                );
                record.insert("error".into(), error_json(kind, errcode, &safe_error(&e)));
                let _ = tokio::fs::remove_dir(&dir).await;
                return Value::Object(record);
            }
        };
        let size = tokio::fs::metadata(&path)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if size > self.config.max_bytes {
            self.metrics.media_download(job.msgtype, "too_large");
            let _ = tokio::fs::remove_file(&path).await;
            let _ = tokio::fs::remove_dir(&dir).await;
            record.insert("size".into(), json!(size));
            record.insert(
                "error".into(),
                error_json(
                    "too_large",
                    None,
                    &format!(
                        "{size} bytes; media.max_bytes allows {}",
                        self.config.max_bytes
                    ),
                ),
            );
            return Value::Object(record);
        }
        self.metrics.media_download(job.msgtype, "ok");
        record.insert("path".into(), json!(path.to_string_lossy()));
        if let Some(name) = path.file_name() {
            record.insert("file_name".into(), json!(name.to_string_lossy()));
        }
        if let Some(content_type) = &info.content_type {
            record.insert("content_type".into(), json!(content_type));
        }
        record.insert("size".into(), json!(size));
        if job.msgtype == "voice" {
            if let Some(target) = self.config.voice_convert_to {
                let converted = self.convert(&path, target).await;
                record.insert("converted".into(), converted);
            }
        }
        Value::Object(record)
    }

    /// Converts a downloaded voice note next to it; the `converted` record.
    async fn convert(&self, source: &Path, target: VoiceTarget) -> Value {
        let mut out = Map::new();
        out.insert("format".into(), json!(target.as_str()));
        let mut converter = Converter::new();
        if let Some(ffmpeg) = &self.config.ffmpeg {
            converter = converter.ffmpeg(ffmpeg);
        }
        let result = match tokio::fs::read(source).await {
            Ok(bytes) => converter.convert(&bytes, target.target()).await,
            Err(e) => Err(VoiceError::Io(e)),
        };
        let bytes = match result {
            Ok(bytes) => bytes,
            Err(e) => {
                let kind = match &e {
                    VoiceError::UnknownFormat => "unknown_format",
                    VoiceError::ConverterUnavailable { .. } => "converter_unavailable",
                    VoiceError::ConversionFailed { .. } => "conversion_failed",
                    VoiceError::Timeout(_) => "timeout",
                    VoiceError::Io(_) => "io",
                    _ => "failed",
                };
                self.metrics.voice_conversion(target.as_str(), kind);
                tracing::warn!(
                    kind,
                    format = target.as_str(),
                    "voice conversion failed; delivering the original"
                );
                out.insert("error".into(), error_json(kind, None, &e.to_string()));
                return Value::Object(out);
            }
        };
        let ext = target.target().extension();
        let stem = source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "voice".into());
        let mut name = format!("{stem}.{ext}");
        if source
            .file_name()
            .is_some_and(|n| n.to_string_lossy() == name)
        {
            name = format!("{stem}-converted.{ext}");
        }
        let dir = source.parent().unwrap_or(Path::new("."));
        let path = dir.join(&name);
        let staged = dir.join(".wechat-kf-convert.part");
        let written = async {
            tokio::fs::write(&staged, &bytes).await?;
            tokio::fs::rename(&staged, &path).await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&staged).await;
            self.metrics.voice_conversion(target.as_str(), "io");
            out.insert("error".into(), error_json("io", None, &e.to_string()));
            return Value::Object(out);
        }
        self.metrics.voice_conversion(target.as_str(), "ok");
        out.insert("path".into(), json!(path.to_string_lossy()));
        out.insert("file_name".into(), json!(name));
        out.insert("content_type".into(), json!(target.target().mime_type()));
        out.insert("size".into(), json!(bytes.len()));
        Value::Object(out)
    }
}

fn error_json(kind: &str, errcode: Option<i64>, message: &str) -> Value {
    let mut out = Map::new();
    out.insert("kind".into(), json!(kind));
    if let Some(code) = errcode {
        out.insert("errcode".into(), json!(code));
    }
    out.insert("message".into(), json!(message));
    Value::Object(out)
}

/// An id as one directory name: `[0-9A-Za-z_-]`, at most 64 bytes; anything else (or nothing)
/// becomes a hash, so two ids never share a directory and none escapes the media directory.
pub(crate) fn path_component(id: &str) -> String {
    let safe = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if safe {
        id.to_owned()
    } else {
        format!("h{}", &hex::encode(Sha256::digest(id.as_bytes()))[..32])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_harmless_directory_names() {
        assert_eq!(path_component("wkAbc_1-2"), "wkAbc_1-2");
        for hostile in ["..", "../etc", "a/b", "", "语音", &"x".repeat(65)] {
            let name = path_component(hostile);
            assert!(
                name.starts_with('h') && name.len() == 33,
                "{hostile:?} → {name}"
            );
        }
        assert_ne!(path_component("a/b"), path_component("a\\b"));
    }

    #[test]
    fn only_media_messages_have_a_media_id() {
        let voice = Message::from_json(
            r#"{"msgid":"m1","open_kfid":"wk","external_userid":"wm","send_time":1,"origin":3,"msgtype":"voice","voice":{"media_id":"MV"}}"#,
        )
        .unwrap();
        assert_eq!(media_of(&voice), Some(("voice", "MV".to_owned())));
        let text = Message::from_json(
            r#"{"msgid":"m2","open_kfid":"wk","external_userid":"wm","send_time":1,"origin":3,"msgtype":"text","text":{"content":"x"}}"#,
        )
        .unwrap();
        assert_eq!(media_of(&text), None);
    }
}
