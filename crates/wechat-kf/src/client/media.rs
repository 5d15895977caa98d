//! Temporary media: `media/upload`, `media/uploadimg`, `media/get` (official docs 90253, 90256, 90254).
//!
//! Uploads are `multipart/form-data` with one part named `media` whose Content-Disposition
//! carries `filename` and `filelength` (official doc 90253); the body is written by hand because
//! common multipart writers cannot add `filelength`. Downloads tell a file from an error the way
//! WeChat marks them: a file comes with `Content-Disposition: attachment; filename=…` and is
//! then a file whatever it contains (a customer's `.json` or a text reading
//! `{"errcode":40014}`); only a response without it is read as an error envelope
//! (`{"errcode":40007,…}`, also mirrored in `Error-Code` / `Error-Msg` headers).

use std::fmt;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use reqwest::header::{
    CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderMap,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::execute::{Call, CallBody, Expect, Received, check_envelope};
pub use super::multipart::MediaUpload;
use super::multipart::MultipartBody;
use super::{Client, ErrCode, Error};
use crate::MediaId;

/// Largest media body [`Media::download`] buffers in memory.
const MAX_IN_MEMORY_DOWNLOAD: usize = 64 * 1024 * 1024;

/// Media endpoints; see [`Client::media`].
#[derive(Debug, Clone, Copy)]
pub struct Media<'c> {
    client: &'c Client,
    /// Largest file a download accepts; see [`Media::max_bytes`].
    max_bytes: Option<u64>,
}

/// The `type` of a temporary media upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// JPG/PNG, ≤ 10 MB (2 MB in older docs).
    Image,
    /// AMR, ≤ 2 MB, ≤ 60 s.
    Voice,
    /// MP4, ≤ 10 MB.
    Video,
    /// Any file, ≤ 20 MB.
    File,
}

impl MediaKind {
    /// Every kind.
    pub const ALL: [MediaKind; 4] = [
        MediaKind::Image,
        MediaKind::Voice,
        MediaKind::Video,
        MediaKind::File,
    ];

    /// The `type` query value (also the msgtype of such a message).
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Voice => "voice",
            MediaKind::Video => "video",
            MediaKind::File => "file",
        }
    }

    /// The documented maximum size in bytes.
    pub fn max_size(self) -> u64 {
        const MB: u64 = 1024 * 1024;
        match self {
            MediaKind::Image => 10 * MB,
            MediaKind::Voice => 2 * MB,
            MediaKind::Video => 10 * MB,
            MediaKind::File => 20 * MB,
        }
    }
}

impl std::str::FromStr for MediaKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "image" => Ok(MediaKind::Image),
            "voice" => Ok(MediaKind::Voice),
            "video" => Ok(MediaKind::Video),
            "file" => Ok(MediaKind::File),
            other => Err(format!(
                "unknown media type {other:?} (image, voice, video, file)"
            )),
        }
    }
}

impl fmt::Display for MediaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Response of `media/upload`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct UploadedMedia {
    /// The media type.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The media id, valid 3 days.
    pub media_id: MediaId,
    /// Upload time: a unix timestamp **as a string** on the wire.
    #[serde(default, deserialize_with = "string_or_number")]
    pub created_at: String,
}

impl UploadedMedia {
    /// `created_at` as unix seconds, when it is a number.
    pub fn created_at_secs(&self) -> Option<u64> {
        self.created_at.trim().parse().ok()
    }
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        S(String),
        N(u64),
    }
    Ok(match Option::<Value>::deserialize(deserializer)? {
        Some(Value::S(s)) => s,
        Some(Value::N(n)) => n.to_string(),
        None => String::new(),
    })
}

/// What the server said about a downloaded file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaInfo {
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// The file name from `Content-Disposition` (`filename*=UTF-8''…` preferred over
    /// `filename=`), exactly as the server sent it. Use [`safe_filename`](Self::safe_filename)
    /// before putting it on a file system.
    pub filename: Option<String>,
    /// `Content-Length`.
    pub content_length: Option<u64>,
    /// `Content-Range`, for range downloads.
    pub content_range: Option<String>,
}

impl MediaInfo {
    fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name| {
            headers.get(name).map(|v: &reqwest::header::HeaderValue| {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            })
        };
        Self {
            content_type: text(CONTENT_TYPE),
            filename: text(CONTENT_DISPOSITION).and_then(|v| parse_content_disposition(&v)),
            content_length: text(CONTENT_LENGTH).and_then(|v| v.trim().parse().ok()),
            content_range: text(CONTENT_RANGE),
        }
    }

    /// The server's file name reduced to one harmless path component: only what follows the
    /// last `/` or `\`, without control characters, not `.` or `..`, at most 200 bytes (the
    /// extension kept); `None` when nothing usable is left. A hostile name such as
    /// `../../etc/passwd` becomes `passwd`, inside the directory it is saved to.
    pub fn safe_filename(&self) -> Option<String> {
        let name = self.filename.as_deref()?;
        let last = name.rsplit(['/', '\\']).next().unwrap_or("");
        let cleaned: String = last
            .chars()
            .filter(|c| !c.is_control())
            .map(|c| {
                // Characters Windows refuses in file names.
                if cfg!(windows) && matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let cleaned = cleaned.trim();
        if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
            None
        } else {
            Some(shorten_filename(cleaned, MAX_FILENAME_BYTES))
        }
    }
}

/// Longest file name [`MediaInfo::safe_filename`] returns, in bytes (file systems allow 255).
const MAX_FILENAME_BYTES: usize = 200;

/// Cuts `name` to at most `max` bytes at a character boundary, keeping a short extension.
fn shorten_filename(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let (stem, extension) = match name.rfind('.') {
        Some(dot) if dot > 0 && name.len() - dot <= 16 => name.split_at(dot),
        _ => (name, ""),
    };
    let mut end = max.saturating_sub(extension.len()).min(stem.len());
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{extension}", &stem[..end])
}

/// Extracts the file name from a Content-Disposition value, preferring the RFC 5987/6266
/// `filename*=charset'lang'pct-encoded` form.
pub(crate) fn parse_content_disposition(value: &str) -> Option<String> {
    let mut plain = None;
    let mut extended = None;
    for param in split_params(value) {
        let Some((key, raw)) = param.split_once('=') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        let raw = raw.trim();
        if key == "filename*" {
            let unquoted = raw.trim_matches('"');
            let mut parts = unquoted.splitn(3, '\'');
            let charset = parts.next().unwrap_or("");
            let _language = parts.next();
            if let Some(encoded) = parts.next() {
                let bytes: Vec<u8> = percent_encoding::percent_decode_str(encoded).collect();
                let decoded = if charset.eq_ignore_ascii_case("utf-8") {
                    String::from_utf8_lossy(&bytes).into_owned()
                } else {
                    // ISO-8859-1: each byte is one code point.
                    bytes.iter().map(|&b| b as char).collect()
                };
                extended = Some(decoded);
            }
        } else if key == "filename" {
            let name = if let Some(inner) = raw.strip_prefix('"') {
                let inner = inner.strip_suffix('"').unwrap_or(inner);
                inner.replace("\\\"", "\"").replace("\\\\", "\\")
            } else {
                raw.to_owned()
            };
            plain = Some(decode_percent_encoded_utf8(name));
        }
    }
    extended.or(plain).filter(|n| !n.is_empty())
}

/// Some servers percent-encode a UTF-8 name inside the plain `filename="…"` (Java's
/// `URLEncoder` style, minus the `+`). Decode it when the result is valid UTF-8 that is not plain
/// ASCII; otherwise keep the name as sent (`100%25.txt` stays as it is, so does `a%ZZ`).
fn decode_percent_encoded_utf8(name: String) -> String {
    if !name.contains('%') {
        return name;
    }
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(&name).collect();
    match String::from_utf8(bytes) {
        Ok(decoded) if !decoded.is_ascii() => decoded,
        _ => name,
    }
}

/// Splits header parameters on `;` outside quotes.
fn split_params(value: &str) -> Vec<&str> {
    let mut params = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                params.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    params.push(&value[start..]);
    params
}

/// A file downloaded into memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadedMedia {
    /// Headers of interest.
    pub info: MediaInfo,
    /// The content.
    pub bytes: Bytes,
}

/// A download in progress: headers already checked, body still streaming.
pub struct MediaDownload {
    /// Headers of interest.
    pub info: MediaInfo,
    /// The body. Errors mid-stream are transport errors and are not retried.
    pub stream: BoxStream<'static, Result<Bytes, Error>>,
}

impl fmt::Debug for MediaDownload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaDownload")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct UploadImgResponse {
    url: String,
}

impl<'c> Media<'c> {
    pub(crate) fn new(client: &'c Client) -> Self {
        Self {
            client,
            max_bytes: None,
        }
    }

    /// Downloads of larger files fail with [`Error::TooLarge`] before anything over the limit
    /// is written: a declared `Content-Length` (or `Content-Range` total) over it is refused
    /// without reading the body, and a body that runs past it (chunked, lying, or fetched in
    /// ranges) is stopped the moment it crosses it. No limit by default (except the 64 MiB of
    /// the in-memory [`download`](Self::download)).
    pub fn max_bytes(mut self, limit: u64) -> Self {
        self.max_bytes = Some(limit);
        self
    }

    /// `POST media/upload?type=…`: a temporary media id (valid 3 days). Files must be larger than
    /// 5 bytes and within the type's limit ([`MediaKind::max_size`]).
    pub async fn upload(
        self,
        kind: MediaKind,
        upload: MediaUpload,
    ) -> Result<UploadedMedia, Error> {
        let length = upload.length().await?;
        check_size(length, kind.max_size())?;
        check_filename(&upload.filename)?;
        let call = self
            .multipart_call("media/upload", upload)
            .query("type", kind.as_str());
        self.client.execute_json(call).await
    }

    /// `POST media/uploadimg`: a permanent image URL (5 B–2 MB; 1000 per day). Not needed for
    /// KF messages.
    pub async fn upload_image(self, upload: MediaUpload) -> Result<String, Error> {
        let length = upload.length().await?;
        check_size(length, 2 * 1024 * 1024)?;
        check_filename(&upload.filename)?;
        let call = self.multipart_call("media/uploadimg", upload);
        let response: UploadImgResponse = self.client.execute_json(call).await?;
        Ok(response.url)
    }

    fn multipart_call(&self, endpoint: &'static str, upload: MediaUpload) -> Call {
        let mut call = Call::get(endpoint);
        call.method = reqwest::Method::POST;
        call.body = CallBody::Multipart(MultipartBody::new(upload));
        call.timeout = Some(self.client.inner.media_timeout);
        call
    }

    /// `GET media/get` as a stream. A response without `Content-Disposition` carrying an error
    /// envelope becomes an [`Error::Api`]; one with it is the file, whatever its bytes.
    pub async fn download_stream(
        self,
        media_id: impl Into<MediaId>,
    ) -> Result<MediaDownload, Error> {
        self.download_inner(media_id.into(), None).await
    }

    /// `GET media/get` with `Range: bytes=start-end` (inclusive; ≤ 20 MB per range), for files
    /// over 20 MB (830002 otherwise).
    pub async fn download_range_stream(
        self,
        media_id: impl Into<MediaId>,
        start: u64,
        end: u64,
    ) -> Result<MediaDownload, Error> {
        if end < start {
            return Err(Error::validation("range", "end before start"));
        }
        self.download_inner(media_id.into(), Some((start, end)))
            .await
    }

    /// `GET media/get` into memory (at most 64 MiB).
    pub async fn download(self, media_id: impl Into<MediaId>) -> Result<DownloadedMedia, Error> {
        let limit = self
            .max_bytes
            .unwrap_or(u64::MAX)
            .min(MAX_IN_MEMORY_DOWNLOAD as u64);
        let MediaDownload { info, mut stream } = self.download_stream(media_id).await?;
        check_declared(info.content_length, limit)?;
        let mut buffer = BytesMut::with_capacity(
            info.content_length
                .unwrap_or(0)
                .min(MAX_IN_MEMORY_DOWNLOAD as u64) as usize,
        );
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if (buffer.len() + chunk.len()) as u64 > limit {
                return Err(too_large(limit, None));
            }
            buffer.extend_from_slice(&chunk);
        }
        check_length(info.content_length, buffer.len() as u64)?;
        Ok(DownloadedMedia {
            info,
            bytes: buffer.freeze(),
        })
    }

    /// `GET media/get` streamed into `writer` (a file, a socket, an upload to object storage,
    /// anything `AsyncWrite`), then flushed. Files over 20 MB, which the server only serves in
    /// ranges (830002), are fetched in ranges transparently; the returned `content_length` is
    /// then the whole size.
    ///
    /// A JSON error body is an error, never written. On an error after the first bytes the
    /// writer holds part of the file: discard it ([`download_to_file`](Self::download_to_file)
    /// does that for you).
    pub async fn download_to_writer<W>(
        self,
        media_id: impl Into<MediaId>,
        writer: &mut W,
    ) -> Result<MediaInfo, Error>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let info = self.copy_into(media_id.into(), writer).await?;
        writer
            .flush()
            .await
            .map_err(|e| Error::io("writing the media", e))?;
        Ok(info)
    }

    /// `GET media/get` into the file `path`, replacing it. The body goes to a hidden temporary
    /// file in the same directory, synced and renamed over `path` only when complete: a failed
    /// or cancelled download leaves neither a partial file nor a changed `path`.
    pub async fn download_to_file(
        self,
        media_id: impl Into<MediaId>,
        path: impl AsRef<Path>,
    ) -> Result<MediaInfo, Error> {
        let path = path.as_ref();
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let mut staged = Staged::create(dir).await?;
        let info = self.copy_into(media_id.into(), staged.file()?).await?;
        staged.persist_replacing(path).await?;
        Ok(info)
    }

    /// `GET media/get` into the directory `dir`, under the server's file name
    /// ([`MediaInfo::safe_filename`]: no directories, so a hostile name cannot escape `dir`) or
    /// the media id when the server sent none. An existing file is never overwritten: the name
    /// gets ` (1)`, ` (2)`, … before its extension. Written like
    /// [`download_to_file`](Self::download_to_file) (temporary file, rename when complete).
    /// Returns the path written and the headers.
    pub async fn download_to_dir(
        self,
        media_id: impl Into<MediaId>,
        dir: impl AsRef<Path>,
    ) -> Result<(PathBuf, MediaInfo), Error> {
        let media_id = media_id.into();
        let dir = dir.as_ref();
        let fallback: String = media_id
            .as_str()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            .take(64)
            .collect();
        let mut staged = Staged::create(dir).await?;
        let info = self.copy_into(media_id, staged.file()?).await?;
        let name = info.safe_filename().unwrap_or_else(|| {
            if fallback.is_empty() {
                "media".into()
            } else {
                fallback
            }
        });
        let path = staged.persist_new(dir, &name).await?;
        Ok((path, info))
    }

    /// Streams the media into `writer`; falls back to ranges on 830002.
    async fn copy_into<W>(&self, media_id: MediaId, writer: &mut W) -> Result<MediaInfo, Error>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        match self.download_inner(media_id.clone(), None).await {
            Ok(download) => {
                let limit = self.max_bytes.unwrap_or(u64::MAX);
                check_declared(download.info.content_length, limit)?;
                let written = write_chunks(download.stream, writer, limit).await?;
                check_length(download.info.content_length, written)?;
                Ok(download.info)
            }
            Err(error) if error.errcode() == Some(ErrCode::MediaNeedsRange) => {
                self.copy_ranges(media_id, writer).await
            }
            Err(error) => Err(error),
        }
    }

    /// Fetches the media in consecutive ranges of [`RANGE_CHUNK`] bytes.
    async fn copy_ranges<W>(&self, media_id: MediaId, writer: &mut W) -> Result<MediaInfo, Error>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut start = 0u64;
        let mut first: Option<MediaInfo> = None;
        for _ in 0..MAX_RANGES {
            let end = start + RANGE_CHUNK - 1;
            let download = self
                .download_inner(media_id.clone(), Some((start, end)))
                .await?;
            let range = download
                .info
                .content_range
                .as_deref()
                .and_then(parse_content_range);
            let length = download.info.content_length;
            let limit = self.max_bytes.unwrap_or(u64::MAX);
            // The whole file's declared size, then this range's, each against what is left.
            check_declared(range.and_then(|(_, _, total)| total), limit)?;
            check_declared(length.map(|l| start.saturating_add(l)), limit)?;
            let info = first.get_or_insert_with(|| download.info.clone());
            let written =
                write_chunks(download.stream, writer, limit.saturating_sub(start)).await?;
            check_length(length, written)?;
            let Some((from, to, total)) = range else {
                // The server ignored the Range header and sent the whole file.
                if start != 0 {
                    return Err(range_error(
                        "a range request was answered without Content-Range",
                    ));
                }
                info.content_length = Some(written);
                info.content_range = None;
                return Ok(info.clone());
            };
            if from != start || to < from || written != to - from + 1 {
                return Err(range_error("the server sent another range than requested"));
            }
            start = to + 1;
            let done = match total {
                Some(total) => start >= total,
                None => written < RANGE_CHUNK,
            };
            if done {
                info.content_length = Some(start);
                info.content_range = None;
                return Ok(info.clone());
            }
        }
        Err(range_error("more ranges than any media file needs"))
    }

    async fn download_inner(
        &self,
        media_id: MediaId,
        range: Option<(u64, u64)>,
    ) -> Result<MediaDownload, Error> {
        const ENDPOINT: &str = "media/get";
        if media_id.as_str().is_empty() {
            return Err(Error::validation("media_id", "must not be empty"));
        }
        let mut call = Call::get(ENDPOINT).query("media_id", media_id.into_string());
        call.timeout = Some(self.client.inner.media_timeout);
        if let Some((start, end)) = range {
            let value = format!("bytes={start}-{end}");
            if let Ok(value) = value.parse() {
                call.headers.insert(reqwest::header::RANGE, value);
            }
        }
        let (first, response) = self
            .client
            .execute(&call, Expect::Media, |received| match received {
                Received::Media { first, response } => Ok((first, response)),
                Received::Json(body) => {
                    check_envelope(ENDPOINT, &body)?;
                    Err(Error::Decode {
                        endpoint: ENDPOINT,
                        message: "expected media, got a JSON body without an error code".into(),
                        body: super::error::excerpt(&body),
                    })
                }
            })
            .await?;
        let info = MediaInfo::from_headers(response.headers());
        let rest = response
            .bytes_stream()
            .map_err(|e| Error::transport(ENDPOINT, e));
        let stream = stream::iter(first.map(Ok)).chain(rest).boxed();
        Ok(MediaDownload { info, stream })
    }
}

fn check_size(length: u64, max: u64) -> Result<(), Error> {
    if length <= 5 {
        return Err(Error::validation(
            "media",
            format!("{length} bytes; files must be larger than 5 bytes"),
        ));
    }
    if length > max {
        return Err(Error::validation(
            "media",
            format!("{length} bytes; at most {max} are allowed for this type"),
        ));
    }
    Ok(())
}

fn check_filename(name: &str) -> Result<(), Error> {
    if name.trim().is_empty() {
        return Err(Error::validation("filename", "must not be empty"));
    }
    Ok(())
}

/// Largest range requested when a file is too large for one `media/get` (830002 above 20 MB).
const RANGE_CHUNK: u64 = 16 * 1024 * 1024;

/// Ranges fetched at most for one file (1 GiB; media files are at most 20 MB today).
const MAX_RANGES: usize = 64;

fn range_error(message: &str) -> Error {
    Error::Decode {
        endpoint: "media/get",
        message: message.to_owned(),
        body: String::new(),
    }
}

/// Parses `bytes a-b/total` (total may be `*`).
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (from, to) = range.trim().split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((from.trim().parse().ok()?, to.trim().parse().ok()?, total))
}

/// A body shorter (or longer) than its `Content-Length` is an error, never a saved file.
fn check_length(expected: Option<u64>, written: u64) -> Result<(), Error> {
    match expected {
        Some(expected) if expected != written => Err(Error::Decode {
            endpoint: "media/get",
            message: format!("the body had {written} bytes, Content-Length said {expected}"),
            body: String::new(),
        }),
        _ => Ok(()),
    }
}

/// The error of a file over `limit` bytes.
fn too_large(limit: u64, declared: Option<u64>) -> Error {
    Error::TooLarge {
        endpoint: "media/get",
        limit,
        declared,
    }
}

/// Refuses a declared size over `limit` before the body is read.
fn check_declared(declared: Option<u64>, limit: u64) -> Result<(), Error> {
    match declared {
        Some(size) if size > limit => Err(too_large(limit, Some(size))),
        _ => Ok(()),
    }
}

/// Writes every chunk of `stream` to `writer`, at most `limit` bytes: the chunk that would cross
/// it is not written and the stream is dropped (closing the connection). Returns the number of
/// bytes written.
async fn write_chunks<W>(
    mut stream: BoxStream<'static, Result<Bytes, Error>>,
    writer: &mut W,
    limit: u64,
) -> Result<u64, Error>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if written.saturating_add(chunk.len() as u64) > limit {
            return Err(too_large(limit, None));
        }
        writer
            .write_all(&chunk)
            .await
            .map_err(|e| Error::io("writing the media", e))?;
        written += chunk.len() as u64;
    }
    Ok(written)
}

/// A hidden temporary file beside the destination. Removed when dropped unless persisted, so
/// an error or a cancelled download never leaves it behind.
struct Staged {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    persisted: bool,
}

impl Staged {
    async fn create(dir: &Path) -> Result<Self, Error> {
        let mut last_error = None;
        for _ in 0..8 {
            let path = dir.join(format!(".wechat-kf-{:016x}.part", rand::random::<u64>()));
            // create_new: never reuse (or follow a symlink planted at) an existing path.
            match tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
            {
                Ok(file) => {
                    return Ok(Self {
                        path,
                        file: Some(file),
                        persisted: false,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(e),
                Err(e) => return Err(Error::io(dir.display().to_string(), e)),
            }
        }
        Err(Error::io(
            dir.display().to_string(),
            last_error.unwrap_or_else(|| std::io::Error::other("no free temporary name")),
        ))
    }

    fn file(&mut self) -> Result<&mut tokio::fs::File, Error> {
        let path = self.path.display().to_string();
        self.file
            .as_mut()
            .ok_or_else(|| Error::io(path, std::io::Error::other("the file is closed")))
    }

    /// Syncs and closes the temporary file.
    async fn finish(&mut self) -> Result<(), Error> {
        if let Some(mut file) = self.file.take() {
            let path = self.path.display().to_string();
            file.flush().await.map_err(|e| Error::io(&path, e))?;
            file.sync_all().await.map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// Renames the file to `path`, replacing what is there.
    async fn persist_replacing(mut self, path: &Path) -> Result<(), Error> {
        self.finish().await?;
        tokio::fs::rename(&self.path, path)
            .await
            .map_err(|e| Error::io(path.display().to_string(), e))?;
        self.persisted = true;
        Ok(())
    }

    /// Gives the file the first free name among `name`, `name (1)`, `name (2)`, … in `dir`.
    async fn persist_new(mut self, dir: &Path, name: &str) -> Result<PathBuf, Error> {
        self.finish().await?;
        for n in 0..1000 {
            let candidate = dir.join(numbered(name, n));
            // A hard link fails when the name is taken: an atomic "rename unless it exists".
            match tokio::fs::hard_link(&self.path, &candidate).await {
                Ok(()) => {
                    self.persisted = true;
                    let _ = tokio::fs::remove_file(&self.path).await;
                    return Ok(candidate);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(_) => {
                    // No hard links on this file system: check, then rename.
                    if tokio::fs::symlink_metadata(&candidate).await.is_ok() {
                        continue;
                    }
                    tokio::fs::rename(&self.path, &candidate)
                        .await
                        .map_err(|e| Error::io(candidate.display().to_string(), e))?;
                    self.persisted = true;
                    return Ok(candidate);
                }
            }
        }
        Err(Error::io(
            dir.join(name).display().to_string(),
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "no free file name (tried 1000)",
            ),
        ))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.persisted {
            self.file = None;
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `name` for 0, else `stem (n).ext`.
fn numbered(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5987_file_names_win_over_plain_ones() {
        assert_eq!(
            parse_content_disposition(
                "attachment; filename=\"fallback.jpg\"; filename*=UTF-8''%E4%BD%A0%E5%A5%BD.jpg"
            )
            .as_deref(),
            Some("你好.jpg")
        );
        assert_eq!(
            parse_content_disposition("attachment; filename=\"a; b.txt\"").as_deref(),
            Some("a; b.txt")
        );
        assert_eq!(
            parse_content_disposition("attachment; filename=plain.amr").as_deref(),
            Some("plain.amr")
        );
        assert_eq!(
            parse_content_disposition("attachment; filename*=iso-8859-1'en'%E9t%E9.txt").as_deref(),
            Some("été.txt")
        );
        assert_eq!(parse_content_disposition("attachment"), None);
    }

    #[test]
    fn safe_file_names_drop_directories() {
        let info = |name: &str| MediaInfo {
            filename: Some(name.into()),
            ..MediaInfo::default()
        };
        assert_eq!(
            info("../../etc/passwd").safe_filename().as_deref(),
            Some("passwd")
        );
        assert_eq!(
            info("a\\b\\c.jpg").safe_filename().as_deref(),
            Some("c.jpg")
        );
        assert_eq!(info("..").safe_filename(), None);
        assert_eq!(MediaInfo::default().safe_filename(), None);
    }

    #[test]
    fn raw_utf8_bytes_in_a_plain_file_name_are_read_as_utf8() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_DISPOSITION,
            reqwest::header::HeaderValue::from_bytes(
                "attachment; filename=\"语音.amr\"".as_bytes(),
            )
            .unwrap(),
        );
        let info = MediaInfo::from_headers(&headers);
        assert_eq!(info.filename.as_deref(), Some("语音.amr"));
        assert_eq!(info.safe_filename().as_deref(), Some("语音.amr"));
    }

    #[test]
    fn percent_encoded_utf8_in_a_plain_file_name_is_decoded_but_literal_percents_stay() {
        let name = |value: &str| parse_content_disposition(value);
        assert_eq!(
            name("attachment; filename=\"%E8%AF%AD%E9%9F%B3.amr\"").as_deref(),
            Some("语音.amr")
        );
        assert_eq!(
            name("attachment; filename=\"100%25.txt\"").as_deref(),
            Some("100%25.txt")
        );
        assert_eq!(
            name("attachment; filename=a%ZZ.txt").as_deref(),
            Some("a%ZZ.txt")
        );
        assert_eq!(
            name("attachment; filename=\"x.amr\"; filename*=UTF-8''%E8%AF%AD%E9%9F%B3.amr")
                .as_deref(),
            Some("语音.amr")
        );
    }

    #[test]
    fn over_long_file_names_are_cut_keeping_the_extension() {
        let info = MediaInfo {
            filename: Some(format!("{}.amr", "语".repeat(100))),
            ..MediaInfo::default()
        };
        let safe = info.safe_filename().unwrap();
        assert!(safe.len() <= MAX_FILENAME_BYTES, "{}", safe.len());
        assert!(safe.ends_with("语.amr"));
        assert_eq!(shorten_filename("short.txt", 200), "short.txt");
        assert_eq!(shorten_filename("abcdef", 3), "abc");
    }

    #[test]
    fn control_characters_and_empty_names_are_dropped() {
        let info = |name: &str| MediaInfo {
            filename: Some(name.into()),
            ..MediaInfo::default()
        };
        assert_eq!(
            info("a\0b\r\n.txt").safe_filename().as_deref(),
            Some("ab.txt")
        );
        assert_eq!(info("dir/").safe_filename(), None);
        assert_eq!(info("  ").safe_filename(), None);
        assert_eq!(info("x/.").safe_filename(), None);
    }

    #[test]
    fn taken_names_are_numbered_before_the_extension() {
        assert_eq!(numbered("语音.amr", 0), "语音.amr");
        assert_eq!(numbered("语音.amr", 2), "语音 (2).amr");
        assert_eq!(numbered("README", 1), "README (1)");
        assert_eq!(numbered(".bashrc", 1), ".bashrc (1)");
    }

    #[test]
    fn content_ranges_are_parsed_with_or_without_a_total() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((0, 9, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, 19, None)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert!(check_length(Some(3), 3).is_ok());
        assert!(check_length(Some(1000), 10).is_err());
        assert!(check_length(None, 10).is_ok());
    }

    #[test]
    fn created_at_is_read_as_string_or_number() {
        let a: UploadedMedia =
            serde_json::from_str(r#"{"type":"image","media_id":"m","created_at":"1380000000"}"#)
                .unwrap();
        let b: UploadedMedia =
            serde_json::from_str(r#"{"type":"image","media_id":"m","created_at":1380000000}"#)
                .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.created_at_secs(), Some(1_380_000_000));
    }
}
