//! Downloading inbound media before delivery (`[media]`), so the bot never races WeChat's
//! 3-day media expiry, and optionally converting voice notes into a playable format.
//!
//! Files go to `<download_dir>/<open_kfid>/<msgid>/<server file name>` through the client's
//! `download_to_dir` (temporary file, renamed when complete; an error body is never saved), and
//! with `media.object_store` also to `s3://<bucket>/<prefix>/<open_kfid>/<msgid>/<file name>`
//! (without a `download_dir`, the local copy is staged in a temporary directory and removed).
//! The outcome — path, object URL, content type, or the error — is a JSON *media record* stored
//! with the message and delivered beside it (`media` in the webhook body). A failed download,
//! upload or conversion is recorded, never fatal: the message is delivered anyway.
//!
//! ```json
//! {"msgid":"…","msgtype":"voice","media_id":"…","path":"/srv/media/wk…/…/语音.amr",
//!  "file_name":"语音.amr","content_type":"audio/amr","size":3206,
//!  "converted":{"format":"wav","path":"/srv/media/wk…/…/语音.wav","content_type":"audio/wav","size":64044}}
//! {"msgid":"…","msgtype":"file","media_id":"…","url":"s3://kf-media/wk…/…/报价单.pdf",
//!  "key":"wk…/…/报价单.pdf","file_name":"报价单.pdf","content_type":"application/pdf","size":950}
//! {"msgid":"…","msgtype":"image","media_id":"…","error":{"kind":"media_id_invalid","errcode":40007,"message":"…"}}
//! ```
//!
//! With `[responder.transcription]`, a voice note is converted (to `wav` unless
//! `media.voice_convert_to` says otherwise) and the conversion transcribed before any upload:
//! the record gains `"transcript": "…"`, or `"transcript_error": {"kind", "message"}` (kind
//! `not_converted` when the conversion failed, else the transcriber's: `timeout`, `connect`,
//! `http_<status>`, `invalid_response`, `file`).
//!
//! An upload failure (after the S3 client's own retries) is `error` of kind `upload_failed`
//! when no local copy is kept, and `upload_error` beside `path` when one is — in the record of
//! the file concerned: the original's, or its conversion's (`converted`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::{Path as ObjectPath, PathPart};
use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload, RetryConfig};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use wechat_kf::client::{Client, ErrCode};
use wechat_kf::message::{Message, MessageContent};
use wechat_kf::voice::{Converter, VoiceError};
use wechat_kf::{MsgId, OpenKfId};

use crate::config::{MediaConfig, Secret, VoiceTarget};
use crate::error::Error;
use crate::error::safe_error;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::transcribe::Transcriber;

/// A media message to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    pub(crate) msgid: MsgId,
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

/// An S3-compatible bucket that downloaded media is uploaded to (`media.object_store`).
pub(crate) struct Bucket {
    store: Box<dyn ObjectStore>,
    name: String,
    prefix: Vec<String>,
}

impl Bucket {
    /// The bucket of `s3://<bucket>[/<prefix>]` with the client `options` (and the `AWS_*`
    /// environment). Connects to nothing: a wrong setting is reported by the first upload.
    pub(crate) fn open(url: &str, options: &BTreeMap<String, Secret>) -> Result<Bucket, Error> {
        let config = |message: String| Error::Config(format!("media.object_store: {message}"));
        let rest = url
            .strip_prefix("s3://")
            .or_else(|| url.strip_prefix("s3a://"))
            .ok_or_else(|| {
                config(format!(
                    "{url:?} is not s3://<bucket>[/<prefix>] (S3 or an S3-compatible store, \
                     whose endpoint goes in [media.object_store_options])"
                ))
            })?;
        let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid_name {
            return Err(config(format!("{name:?} is not a bucket name")));
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(name)
            // A stalled store delays the account's delivery, so give up sooner than the
            // default (10 retries over 3 minutes); the media stays fetchable from WeChat.
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            });
        for (key, value) in options {
            let key: AmazonS3ConfigKey = key.parse().map_err(|_| {
                config(format!(
                    "[media.object_store_options] {key:?} is not an S3 option (endpoint, \
                     region, access_key_id, secret_access_key, allow_http, ...)"
                ))
            })?;
            builder = builder.with_config(key, value.expose());
        }
        // The builder's error text names the setting, never a credential's value.
        let store = builder.build().map_err(|e| config(e.to_string()))?;
        let prefix = prefix
            .split('/')
            .filter(|p| !p.is_empty())
            .map(|p| {
                PathPart::parse(p)
                    .map(|p| p.as_ref().to_owned())
                    .map_err(|_| config(format!("the prefix part {p:?} is not a key segment")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Bucket {
            store: Box::new(store),
            name: name.to_owned(),
            prefix,
        })
    }

    /// Uploads a local file under `<prefix>/<open_kfid>/<msgid>/<file name>`; `(url, key)`.
    async fn upload(
        &self,
        open_kfid: &OpenKfId,
        msgid: &MsgId,
        file: &Path,
        content_type: Option<&str>,
    ) -> Result<(String, String), String> {
        let parts: Vec<String> = self
            .prefix
            .iter()
            .cloned()
            .chain([
                path_component(open_kfid.as_str()),
                path_component(msgid.as_str()),
                key_segment(file.file_name().map(|n| n.to_string_lossy())),
            ])
            .collect();
        // Every part is a valid segment (checked or made so), so parsing keeps them as they
        // are; building from parts would percent-encode every non-ASCII character.
        let key = ObjectPath::parse(parts.join("/")).map_err(|e| e.to_string())?;
        // Files are at most media.max_bytes (32 MiB by default): one PUT, no multipart.
        let bytes = tokio::fs::read(file).await.map_err(|e| e.to_string())?;
        let mut attributes = Attributes::new();
        if let Some(content_type) = content_type {
            attributes.insert(Attribute::ContentType, content_type.to_owned().into());
        }
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&key, PutPayload::from(bytes), options)
            .await
            .map_err(|e| e.to_string())?;
        Ok((format!("s3://{}/{key}", self.name), key.to_string()))
    }
}

/// Downloads media into the configured directory and bucket.
pub(crate) struct MediaFetcher {
    client: Client,
    config: MediaConfig,
    dir: PathBuf,
    /// Whether files stay in `dir` (`media.download_dir`) or are only staged there.
    keep_local: bool,
    bucket: Option<Bucket>,
    /// Downloads in flight at once (`media.concurrency`), over all accounts and customers.
    permits: tokio::sync::Semaphore,
    /// The staging directory, removed when the fetcher is dropped.
    _staging: Option<Staging>,
    /// Transcribes converted voice notes (`[responder.transcription]`).
    transcriber: Option<Arc<Transcriber>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MediaFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaFetcher")
            .field("dir", &self.dir)
            .field("bucket", &self.bucket.as_ref().map(|b| &b.name))
            .finish_non_exhaustive()
    }
}

impl MediaFetcher {
    /// The fetcher of a configuration, or `None` when downloads are off. Creates the directory.
    /// With a `transcriber`, voice notes are converted (to `wav` when `voice_convert_to` is
    /// unset: transcription endpoints read no AMR or SILK) and transcribed.
    pub(crate) async fn new(
        client: Client,
        config: &MediaConfig,
        transcriber: Option<Arc<Transcriber>>,
        metrics: Arc<Metrics>,
    ) -> Result<Option<MediaFetcher>, Error> {
        if config.voice_max_duration.is_zero() || config.voice_max_bytes == 0 {
            return Err(Error::Config(
                "media.voice_max_duration and media.voice_max_bytes must be positive".into(),
            ));
        }
        let bucket = match &config.object_store {
            Some(url) => Some(Bucket::open(url, &config.object_store_options)?),
            None => None,
        };
        let (dir, staging) = match (&config.download_dir, &bucket) {
            (Some(dir), _) => {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| Error::io(format!("media.download_dir {}", dir.display()), e))?;
                (dir.clone(), None)
            }
            (None, Some(_)) => {
                let base = std::env::temp_dir();
                let staging = tokio::task::spawn_blocking(move || Staging::create(&base))
                    .await
                    .map_err(|e| Error::io("a staging directory for media uploads", e.into()))?
                    .map_err(|e| Error::io("a staging directory for media uploads", e))?;
                (staging.dir.clone(), Some(staging))
            }
            (None, None) => return Ok(None),
        };
        // Paths handed to the bot are absolute.
        let dir = tokio::fs::canonicalize(&dir)
            .await
            .map_err(|e| Error::io(format!("media.download_dir {}", dir.display()), e))?;
        let mut config = config.clone();
        if transcriber.is_some() && config.voice_convert_to.is_none() {
            config.voice_convert_to = Some(VoiceTarget::Wav);
        }
        Ok(Some(MediaFetcher {
            client,
            permits: tokio::sync::Semaphore::new(config.concurrency.max(1)),
            config,
            dir,
            keep_local: staging.is_none(),
            bucket,
            _staging: staging,
            transcriber,
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
            msgid: message.msgid().clone(),
            msgtype,
            media_id,
        })
    }

    /// Downloads one file (and converts a voice note); the media record.
    pub(crate) async fn fetch(&self, open_kfid: &OpenKfId, job: &Job) -> Value {
        // Never closed, so acquiring cannot fail.
        let _permit = self.permits.acquire().await;
        let mut record = Map::new();
        record.insert("msgid".into(), json!(job.msgid));
        record.insert("msgtype".into(), json!(job.msgtype));
        record.insert("media_id".into(), json!(job.media_id));
        let dir = self
            .dir
            .join(path_component(open_kfid.as_str()))
            .join(path_component(job.msgid.as_str()));
        // Leftovers of an interrupted attempt (this directory belongs to this message only).
        let _ = tokio::fs::remove_dir_all(&dir).await;
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            self.metrics.media_download(job.msgtype, "failed");
            record.insert("error".into(), error_json("io", None, &e.to_string()));
            return Value::Object(record);
        }
        // The cap is enforced while the bytes arrive: a declared length over it is refused
        // unread, a body crossing it is cut off, ranged or not; nothing over it is written.
        let download = self
            .client
            .media()
            .max_bytes(self.config.max_bytes)
            .download_to_dir(job.media_id.as_str(), &dir);
        // The customer's later messages wait for this one: give up in bounded time (dropping
        // the download removes its partial file).
        let Ok(downloaded) = tokio::time::timeout(DOWNLOAD_DEADLINE, download).await else {
            self.metrics.media_download(job.msgtype, "failed");
            let _ = tokio::fs::remove_dir_all(&dir).await;
            record.insert(
                "error".into(),
                error_json(
                    "timeout",
                    None,
                    &format!(
                        "the download took longer than {} s (retries included)",
                        DOWNLOAD_DEADLINE.as_secs()
                    ),
                ),
            );
            return Value::Object(record);
        };
        let (path, info) = match downloaded {
            Ok(done) => done,
            Err(wechat_kf::client::Error::TooLarge { declared, .. }) => {
                self.metrics.media_download(job.msgtype, "too_large");
                let _ = tokio::fs::remove_dir_all(&dir).await;
                if let Some(size) = declared {
                    record.insert("size".into(), json!(size));
                }
                let size = declared.map_or_else(|| "over".to_owned(), |d| format!("{d} bytes,"));
                record.insert(
                    "error".into(),
                    error_json(
                        "too_large",
                        None,
                        &format!("{size} media.max_bytes allows {}", self.config.max_bytes),
                    ),
                );
                return Value::Object(record);
            }
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
                    open_kfid = open_kfid.as_str(),
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
        if !self.keep_local {
            // Customer data, only for the service's own upload.
            private_file(&path).await;
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
                // Before the upload, which removes a staged file.
                if let Some(transcriber) = &self.transcriber {
                    self.transcribe(transcriber, &converted, &mut record).await;
                }
                record.insert("converted".into(), converted);
            }
        }
        if let Some(bucket) = &self.bucket {
            self.upload_all(bucket, open_kfid, job, &mut record).await;
        }
        if !self.keep_local {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        Value::Object(record)
    }

    /// Uploads the downloaded file and its conversion, adding `url` and `key` to their records
    /// (and dropping `path` when the local copy is not kept). A failure is recorded in the
    /// record it concerns: the original's, or `converted`.
    async fn upload_all(
        &self,
        bucket: &Bucket,
        open_kfid: &OpenKfId,
        job: &Job,
        record: &mut Map<String, Value>,
    ) {
        let mut ok = self.upload_recorded(bucket, open_kfid, job, record).await;
        if let Some(Value::Object(converted)) = record.get_mut("converted") {
            ok &= self
                .upload_recorded(bucket, open_kfid, job, converted)
                .await;
        }
        self.metrics
            .media_upload(job.msgtype, if ok { "ok" } else { "failed" });
        if !ok {
            tracing::warn!(
                open_kfid = open_kfid.as_str(),
                bucket = %bucket.name,
                "media upload failed; delivering without it"
            );
        }
    }

    /// Uploads one record's file and records a failure in it (`error` when no local copy is
    /// kept, else `upload_error`); whether it did not fail.
    async fn upload_recorded(
        &self,
        bucket: &Bucket,
        open_kfid: &OpenKfId,
        job: &Job,
        record: &mut Map<String, Value>,
    ) -> bool {
        let Some(message) = self.upload_one(bucket, open_kfid, job, record).await else {
            return true;
        };
        let error = error_json("upload_failed", None, &message);
        let field = if self.keep_local {
            "upload_error"
        } else {
            "error"
        };
        record.insert(field.into(), error);
        false
    }

    /// Uploads the file at a record's `path` (if any); the error text when that fails.
    async fn upload_one(
        &self,
        bucket: &Bucket,
        open_kfid: &OpenKfId,
        job: &Job,
        record: &mut Map<String, Value>,
    ) -> Option<String> {
        let path = PathBuf::from(record.get("path")?.as_str()?);
        let content_type = record.get("content_type").and_then(Value::as_str);
        let uploaded = bucket
            .upload(open_kfid, &job.msgid, &path, content_type)
            .await;
        if !self.keep_local {
            record.remove("path");
        }
        match uploaded {
            Ok((url, key)) => {
                record.insert("url".into(), json!(url));
                record.insert("key".into(), json!(key));
                None
            }
            Err(message) => Some(message),
        }
    }

    /// Transcribes the file of a `converted` record into `transcript`, or records why not in
    /// `transcript_error`. The transcript is customer data: never logged.
    async fn transcribe(
        &self,
        transcriber: &Transcriber,
        converted: &Value,
        record: &mut Map<String, Value>,
    ) {
        let field = |name: &str| converted.get(name).and_then(Value::as_str);
        let (Some(path), Some(format), Some(content_type)) =
            (field("path"), field("format"), field("content_type"))
        else {
            self.metrics.transcription("not_converted", None);
            let why = converted
                .pointer("/error/kind")
                .and_then(Value::as_str)
                .unwrap_or("failed");
            record.insert(
                "transcript_error".into(),
                error_json(
                    "not_converted",
                    None,
                    &format!("the voice note was not converted ({why}), so not transcribed"),
                ),
            );
            return;
        };
        let started = Instant::now();
        // A neutral name: the endpoint reads the format from the extension, and the server's
        // file name is nothing it needs.
        let sent_as = format!("voice.{format}");
        let result = transcriber
            .transcribe(Path::new(path), &sent_as, content_type)
            .await;
        let took = Some(started.elapsed());
        match result {
            Ok(text) => {
                self.metrics.transcription("ok", took);
                record.insert("transcript".into(), json!(text));
            }
            Err(e) => {
                let kind = e.kind();
                self.metrics.transcription(&kind, took);
                // The error's text holds no content (see TranscribeError).
                tracing::warn!(
                    kind = %kind,
                    error = %e,
                    "voice transcription failed; delivering without a transcript"
                );
                record.insert(
                    "transcript_error".into(),
                    error_json(&kind, None, &e.to_string()),
                );
            }
        }
    }

    /// Converts a downloaded voice note next to it; the `converted` record.
    async fn convert(&self, source: &Path, target: VoiceTarget) -> Value {
        let mut out = Map::new();
        out.insert("format".into(), json!(target.extension()));
        let mut converter = Converter::new()
            .max_duration(self.config.voice_max_duration)
            .max_output_bytes(self.config.voice_max_bytes);
        if let Some(ffmpeg) = &self.config.ffmpeg {
            converter = converter.ffmpeg(ffmpeg);
        }
        let result = match tokio::fs::read(source).await {
            Ok(bytes) => converter.convert(&bytes, target).await,
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
                    VoiceError::TooLong(_) => "too_long",
                    VoiceError::OutputTooLarge(_) => "too_large",
                    VoiceError::Io(_) => "io",
                    _ => "failed",
                };
                self.metrics.voice_conversion(target.extension(), kind);
                tracing::warn!(
                    kind,
                    format = target.extension(),
                    "voice conversion failed; delivering the original"
                );
                out.insert("error".into(), error_json(kind, None, &e.to_string()));
                return Value::Object(out);
            }
        };
        let ext = target.extension();
        let stem = source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "voice".into());
        let dir = source.parent().unwrap_or(Path::new("."));
        let names = std::iter::once(format!("{stem}.{ext}")).chain((0..100).map(|n| match n {
            0 => format!("{stem}-converted.{ext}"),
            n => format!("{stem}-converted ({n}).{ext}"),
        }));
        let written = write_new(dir, names, &bytes, !self.keep_local).await;
        let (path, name) = match written {
            Ok(done) => done,
            Err(e) => {
                self.metrics.voice_conversion(target.extension(), "io");
                out.insert("error".into(), error_json("io", None, &e.to_string()));
                return Value::Object(out);
            }
        };
        self.metrics.voice_conversion(target.extension(), "ok");
        out.insert("path".into(), json!(path.to_string_lossy()));
        out.insert("file_name".into(), json!(name));
        out.insert("content_type".into(), json!(target.mime_type()));
        out.insert("size".into(), json!(bytes.len()));
        Value::Object(out)
    }
}

/// Writes `bytes` under the first of `names` that is free in `dir`, never replacing a file: the
/// bytes are staged beside `dir` (in the account's directory, where every other name is a
/// message directory, `[0-9A-Za-z_-]` or a hash, so a server-given file name can never be the
/// staging name), then hard-linked to each candidate until the file system accepts one. The
/// file system itself decides what "taken" means, so on a case-insensitive one `note.WAV`
/// blocks `note.wav`. Returns the path and the name used.
async fn write_new(
    dir: &Path,
    names: impl Iterator<Item = String>,
    bytes: &[u8],
    private: bool,
) -> std::io::Result<(PathBuf, String)> {
    let parent = dir.parent().unwrap_or(dir);
    let staged = parent.join(format!(
        ".wechat-kf-convert-{:016x}.part",
        rand::random::<u64>()
    ));
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        options.mode(0o600);
    }
    let result = async {
        let mut file = options.open(&staged).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, bytes).await?;
        file.sync_all().await?;
        drop(file);
        for name in names {
            let candidate = dir.join(&name);
            match tokio::fs::hard_link(&staged, &candidate).await {
                Ok(()) => return Ok((candidate, name)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    // No hard links on this file system: check, then rename.
                    if tokio::fs::symlink_metadata(&candidate).await.is_ok() {
                        continue;
                    }
                    tracing::debug!(error = %e, "no hard link; renaming the converted file");
                    tokio::fs::rename(&staged, &candidate).await?;
                    return Ok((candidate, name));
                }
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "no free name for the converted file",
        ))
    }
    .await;
    let _ = tokio::fs::remove_file(&staged).await;
    result
}

/// Makes a staged file readable by the service's user only (best effort: its directory is
/// already private).
async fn private_file(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).await;
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Name prefix of staging directories under the system's temporary directory.
const STAGING_PREFIX: &str = "wechat-kf-media-";

/// Where media are staged for an upload when no `download_dir` is kept: a directory of its own
/// under `$TMPDIR`, mode 0700, held by an exclusive lock on `.lock` inside it for as long as the
/// service runs, removed when dropped. At creation, staging directories of this user that no
/// running service holds (left by a crash, with their partial files) are removed.
struct Staging {
    dir: PathBuf,
    _lock: std::fs::File,
}

impl Staging {
    fn create(base: &Path) -> std::io::Result<Staging> {
        let dir = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .tempdir_in(base)?
            .keep();
        let staging = Staging::lock(dir.clone()).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        remove_stale_staging(base, &staging.dir);
        Ok(staging)
    }

    fn lock(dir: PathBuf) -> std::io::Result<Staging> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(".lock"))?;
        fs4::FileExt::try_lock(&lock).map_err(|e| match e {
            fs4::TryLockError::Error(e) => e,
            fs4::TryLockError::WouldBlock => std::io::Error::other("the new staging lock is held"),
        })?;
        Ok(Staging { dir, _lock: lock })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the staging directories in `base` that belong to this user and that no running
/// service holds; `ours` is kept. A directory without a lock file counts as abandoned only once
/// it is a minute old (another service may be between creating and locking it).
fn remove_stale_staging(base: &Path, ours: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    #[cfg(unix)]
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(ours).map(|m| m.uid()).ok()
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours_or_foreign = path == ours
            || !entry
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX);
        if ours_or_foreign {
            continue;
        }
        // Never follow a link, never touch another user's directory.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            if Some(meta.uid()) != owner {
                continue;
            }
        }
        let abandoned = match std::fs::OpenOptions::new()
            .write(true)
            .open(path.join(".lock"))
        {
            Ok(lock) => fs4::FileExt::try_lock(&lock).is_ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60)),
            Err(_) => false,
        };
        if abandoned && std::fs::remove_dir_all(&path).is_ok() {
            tracing::info!(dir = %path.display(), "removed a stale media staging directory");
        }
    }
}

/// Longest time one download may take, retries included (the client allows 300 s per attempt).
const DOWNLOAD_DEADLINE: Duration = Duration::from_secs(300);

/// A media or staging directory younger than this is never removed by the housekeeping (a
/// download may be writing it).
const SWEEP_MIN_AGE: Duration = Duration::from_secs(3600);

impl MediaFetcher {
    /// Every 10 minutes (the first time 30 s after the start): with `retention`, removes the
    /// directories of messages whose rows the retention purged (and staging files a crash left
    /// beside them), then measures what `download_dir` holds for `wechat_kf_media_dir_bytes`.
    /// Nothing to do when files are only staged for an object store.
    pub(crate) async fn housekeeping(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        retention: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        if !self.keep_local {
            return;
        }
        let mut wait = Duration::from_secs(30);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            wait = Duration::from_secs(600);
            let kept = if retention.is_zero() {
                None
            } else {
                match kept_dirs(&*store).await {
                    Ok(kept) => Some(kept),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list stored messages; media kept");
                        None
                    }
                }
            };
            let dir = self.dir.clone();
            let swept =
                tokio::task::spawn_blocking(move || sweep(&dir, kept.as_ref(), SWEEP_MIN_AGE))
                    .await;
            if let Ok(swept) = swept {
                self.metrics.set_media_dir_bytes(swept.bytes);
                if swept.removed > 0 {
                    tracing::info!(
                        messages = swept.removed,
                        "removed the media of messages past the retention"
                    );
                }
            }
        }
    }
}

/// For each account directory name, the message directory names that still have a row.
async fn kept_dirs(store: &dyn Store) -> Result<HashMap<String, HashSet<String>>, Error> {
    let mut kept = HashMap::new();
    for account in store.accounts().await? {
        let messages = store.messages(account.open_kfid.clone()).await?;
        kept.insert(
            path_component(account.open_kfid.as_str()),
            messages
                .iter()
                .map(|(msgid, _)| path_component(msgid.as_str()))
                .collect(),
        );
    }
    Ok(kept)
}

/// What a [`sweep`] did.
#[derive(Debug, PartialEq, Eq)]
struct Swept {
    /// Message directories removed.
    removed: u64,
    /// Bytes left under the directory.
    bytes: u64,
}

/// Walks `<dir>/<account>/<message>/`: with `kept`, removes each message directory that has no
/// row any more and staging files left beside them, once older than `min_age`; adds up the
/// rest. Never follows a link.
fn sweep(dir: &Path, kept: Option<&HashMap<String, HashSet<String>>>, min_age: Duration) -> Swept {
    let old = |meta: &std::fs::Metadata| {
        meta.modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= min_age)
    };
    let mut swept = Swept {
        removed: 0,
        bytes: 0,
    };
    let Ok(accounts) = std::fs::read_dir(dir) else {
        return swept;
    };
    for account in accounts.flatten() {
        let account_name = account.file_name().to_string_lossy().into_owned();
        let Ok(meta) = std::fs::symlink_metadata(account.path()) else {
            continue;
        };
        if !meta.is_dir() {
            swept.bytes += meta.len();
            continue;
        }
        let Ok(messages) = std::fs::read_dir(account.path()) else {
            continue;
        };
        let rows = kept.map(|kept| kept.get(&account_name));
        for message in messages.flatten() {
            let path = message.path();
            let name = message.file_name().to_string_lossy().into_owned();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let gone = match rows {
                None => false,
                Some(rows) => !rows.is_some_and(|rows| rows.contains(&name)),
            };
            if meta.is_dir() && gone && old(&meta) && std::fs::remove_dir_all(&path).is_ok() {
                swept.removed += 1;
                continue;
            }
            let leftover = name.starts_with(".wechat-kf-convert-") && name.ends_with(".part");
            if meta.is_file() && leftover && old(&meta) && std::fs::remove_file(&path).is_ok() {
                continue;
            }
            swept.bytes += if meta.is_dir() {
                size_of_dir(&path)
            } else {
                meta.len()
            };
        }
    }
    swept
}

/// Bytes of the files under `dir` (links not followed).
fn size_of_dir(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match std::fs::symlink_metadata(entry.path()) {
            Ok(meta) if meta.is_dir() => size_of_dir(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
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

/// A file name as one object key segment, readable as it is (Chinese stays Chinese): only a
/// control character or a slash is replaced, and an empty or dot name becomes `media`.
fn key_segment(name: Option<std::borrow::Cow<'_, str>>) -> String {
    let name: String = name
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() || c == '/' { '_' } else { c })
        .collect();
    match name.as_str() {
        "" | "." | ".." => "media".into(),
        _ => name,
    }
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
    fn file_names_become_readable_object_key_segments() {
        for (name, segment) in [
            ("报价单（最终版）.pdf", "报价单（最终版）.pdf"),
            ("a b#{c}.txt", "a b#{c}.txt"),
            ("line\nbreak/slash", "line_break_slash"),
            ("..", "media"),
            ("", "media"),
        ] {
            let segment_made = key_segment(Some(name.into()));
            assert_eq!(segment_made, segment);
            assert!(PathPart::parse(&segment_made).is_ok(), "{segment_made}");
        }
    }

    #[test]
    fn the_object_store_url_is_checked_when_the_config_is() {
        let none = BTreeMap::new();
        let bucket = Bucket::open("s3://kf-media/a/b/", &none).unwrap();
        assert_eq!((bucket.name.as_str(), bucket.prefix.len()), ("kf-media", 2));
        for (url, says) in [
            ("gs://kf-media", "s3://<bucket>"),
            ("s3://", "not a bucket name"),
            ("s3://a b", "not a bucket name"),
            ("s3://kf/../x", "not a key segment"),
        ] {
            let error = Bucket::open(url, &none).err().unwrap().to_string();
            assert!(error.contains(says), "{url}: {error}");
        }
        let options = BTreeMap::from([("colour".to_owned(), Secret::new("blue"))]);
        let error = Bucket::open("s3://kf", &options).err().unwrap().to_string();
        assert!(error.contains("\"colour\" is not an S3 option"), "{error}");
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn staging_is_private_and_what_a_crash_left_is_removed_at_the_next_start() {
        let base = tempfile::tempdir().unwrap();
        // A crashed run's directory: its lock file is there, no process holds it; a partial
        // file inside.
        let crashed_dir = base.path().join(format!("{STAGING_PREFIX}crashed"));
        std::fs::create_dir(&crashed_dir).unwrap();
        std::fs::write(crashed_dir.join(".lock"), b"").unwrap();
        std::fs::write(crashed_dir.join(".wechat-kf-1.part"), b"partial").unwrap();
        // A running service's directory, and things that are not staging directories.
        let running = Staging::create(base.path()).unwrap();
        let unrelated = base.path().join("wechat-kf-media-link");
        std::os::unix::fs::symlink(base.path(), &unrelated).unwrap();
        std::fs::create_dir(base.path().join("other-app")).unwrap();

        let ours = Staging::create(base.path()).unwrap();
        assert_eq!(mode(&ours.dir), 0o700);
        assert!(
            ours.dir
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX)
        );
        assert!(
            running.dir.exists(),
            "a directory another service holds is kept"
        );
        assert!(
            unrelated.symlink_metadata().is_ok(),
            "links are never followed or removed"
        );
        assert!(base.path().join("other-app").exists());
        assert!(!crashed_dir.exists(), "the crashed run's staging is gone");
        drop(running);
        let dir = ours.dir.clone();
        drop(ours);
        assert!(!dir.exists(), "removed when the service stops");
    }

    #[tokio::test]
    async fn a_converted_file_never_replaces_a_file_of_the_message() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("msg");
        std::fs::create_dir(&dir).unwrap();
        // Server-given names: the one the conversion wants, and its first fallback.
        std::fs::write(dir.join("note.wav"), b"original").unwrap();
        std::fs::write(dir.join("note-converted.wav"), b"other").unwrap();
        let names = ["note.wav", "note-converted.wav", "note-converted (1).wav"]
            .map(String::from)
            .into_iter();
        let (path, name) = write_new(&dir, names, b"RIFF", true).await.unwrap();
        assert_eq!(name, "note-converted (1).wav");
        assert_eq!(std::fs::read(&path).unwrap(), b"RIFF");
        assert_eq!(std::fs::read(dir.join("note.wav")).unwrap(), b"original");
        assert_eq!(
            std::fs::read(dir.join("note-converted.wav")).unwrap(),
            b"other"
        );
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        // Nothing staged is left, in the message's directory or beside it.
        let mut left: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["msg"]);
    }

    #[test]
    fn the_media_of_purged_messages_go_and_the_rest_is_measured() {
        let root = tempfile::tempdir().unwrap();
        let write = |path: &str, bytes: usize| {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, vec![0u8; bytes]).unwrap();
        };
        write("wkA/m1/a.amr", 100);
        write("wkA/m1/a.wav", 1000);
        write("wkA/m2/b.pdf", 5000);
        write("wkA/.wechat-kf-convert-0123456789abcdef.part", 7);
        write("wkB/m3/c.png", 30);
        let kept = HashMap::from([("wkA".to_owned(), HashSet::from(["m1".to_owned()]))]);

        // Everything is measured; nothing is old enough to go.
        let swept = sweep(root.path(), None, Duration::from_secs(3600));
        assert_eq!(
            swept,
            Swept {
                removed: 0,
                bytes: 6137
            }
        );
        // Without a retention, only a staging file a crash left goes.
        let swept = sweep(root.path(), None, Duration::ZERO);
        assert_eq!(
            swept,
            Swept {
                removed: 0,
                bytes: 6130
            }
        );
        assert!(
            !root
                .path()
                .join("wkA/.wechat-kf-convert-0123456789abcdef.part")
                .exists()
        );
        // Too young to go.
        let swept = sweep(root.path(), Some(&kept), Duration::from_secs(3600));
        assert_eq!(swept.removed, 0);
        // m2 and m3 have no row (wkB no account) any more; m1 stays.
        let swept = sweep(root.path(), Some(&kept), Duration::ZERO);
        assert_eq!(
            swept,
            Swept {
                removed: 2,
                bytes: 1100
            }
        );
        assert!(root.path().join("wkA/m1/a.wav").exists());
        assert!(!root.path().join("wkA/m2").exists());
        assert!(!root.path().join("wkB/m3").exists());
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
