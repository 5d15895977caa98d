//! A file to upload and the `multipart/form-data` body it becomes: one part named `media` whose
//! Content-Disposition carries `filename` and `filelength` (official doc 90253). The body is
//! written by hand because common multipart writers cannot add `filelength`; it is rebuilt for
//! every attempt, so a retried upload re-reads its file.
//!
//! Its own module so that the one call path (`execute`) can send a multipart body without
//! depending on the media endpoints, which depend on it.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};

use super::Error;

type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

enum Source {
    Bytes(Bytes),
    File(PathBuf),
    /// A stream can be sent once; uploads from it are never retried.
    Stream {
        length: u64,
        stream: Mutex<Option<ByteStream>>,
    },
}

/// A file to upload: from memory, from a path, or from a stream of known length.
pub struct MediaUpload {
    pub(crate) filename: String,
    content_type: Option<String>,
    source: Source,
}

impl fmt::Debug for MediaUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Bytes(b) => format!("{} bytes in memory", b.len()),
            Source::File(p) => format!("file {}", p.display()),
            Source::Stream { length, .. } => format!("stream of {length} bytes"),
        };
        f.debug_struct("MediaUpload")
            .field("filename", &self.filename)
            .field("content_type", &self.content_type)
            .field("source", &source)
            .finish()
    }
}

impl MediaUpload {
    /// Uploads `data` under `filename` (the name the customer sees).
    pub fn bytes(filename: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            filename: filename.into(),
            content_type: None,
            source: Source::Bytes(data.into()),
        }
    }

    /// Uploads the file at `path`, named after its last path component. The file is re-read
    /// for each retry.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let filename = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".to_owned());
        Self {
            filename,
            content_type: None,
            source: Source::File(path),
        }
    }

    /// Uploads `length` bytes from `stream`. The stream is consumed by the first attempt, so
    /// a failed upload from a stream is not retried.
    pub fn stream(
        filename: impl Into<String>,
        length: u64,
        stream: impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    ) -> Self {
        Self {
            filename: filename.into(),
            content_type: None,
            source: Source::Stream {
                length,
                stream: Mutex::new(Some(stream.boxed())),
            },
        }
    }

    /// Overrides the file name.
    pub fn filename(mut self, filename: impl Into<String>) -> Self {
        self.filename = filename.into();
        self
    }

    /// Sets the part's Content-Type (default: guessed from the file name extension).
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    pub(crate) async fn length(&self) -> Result<u64, Error> {
        match &self.source {
            Source::Bytes(b) => Ok(b.len() as u64),
            Source::File(path) => tokio::fs::metadata(path)
                .await
                .map(|m| m.len())
                .map_err(|e| Error::io(path.display().to_string(), e)),
            Source::Stream { length, .. } => Ok(*length),
        }
    }
}

fn guess_content_type(filename: &str) -> &'static str {
    let extension = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "amr" => "audio/amr",
        "mp3" => "audio/mpeg",
        "mp4" => "video/mp4",
        "txt" => "text/plain",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// Quotes a file name for a Content-Disposition parameter: raw UTF-8 as browsers send it, with
/// `"`, `\` and line breaks percent-encoded so the header cannot be broken.
fn quote_filename(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '"' => out.push_str("%22"),
            '\\' => out.push_str("%5C"),
            '\r' => out.push_str("%0D"),
            '\n' => out.push_str("%0A"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A multipart body with one `media` part, rebuilt for every attempt.
pub(crate) struct MultipartBody {
    boundary: String,
    upload: MediaUpload,
}

impl MultipartBody {
    pub(crate) fn new(upload: MediaUpload) -> Self {
        let boundary = format!("----wechat-kf-{:016x}", rand::random::<u64>());
        Self { boundary, upload }
    }

    pub(crate) fn is_repeatable(&self) -> bool {
        !matches!(self.upload.source, Source::Stream { .. })
    }

    fn head(&self, length: u64) -> Bytes {
        let content_type = self
            .upload
            .content_type
            .clone()
            .unwrap_or_else(|| guess_content_type(&self.upload.filename).to_owned());
        Bytes::from(format!(
            "--{}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"{}\"; filelength={length}\r\nContent-Type: {content_type}\r\n\r\n",
            self.boundary,
            quote_filename(&self.upload.filename),
        ))
    }

    fn tail(&self) -> Bytes {
        Bytes::from(format!("\r\n--{}--\r\n", self.boundary))
    }

    /// The request's Content-Type, total length and body for one attempt.
    pub(crate) async fn to_body(
        &self,
        endpoint: &'static str,
    ) -> Result<(String, u64, reqwest::Body), Error> {
        let content_type = format!("multipart/form-data; boundary={}", self.boundary);
        let length = self.upload.length().await?;
        let head = self.head(length);
        let tail = self.tail();
        let total = head.len() as u64 + length + tail.len() as u64;
        let body = match &self.upload.source {
            Source::Bytes(data) => {
                let mut all = BytesMut::with_capacity(total as usize);
                all.extend_from_slice(&head);
                all.extend_from_slice(data);
                all.extend_from_slice(&tail);
                reqwest::Body::from(all.freeze())
            }
            Source::File(path) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| Error::io(path.display().to_string(), e))?;
                let chunks = file_chunks(file, length);
                let all = stream::once(async move { Ok(head) })
                    .chain(chunks)
                    .chain(stream::once(async move { Ok(tail) }));
                reqwest::Body::wrap_stream(all)
            }
            Source::Stream { stream, .. } => {
                let taken = stream.lock().unwrap_or_else(|e| e.into_inner()).take();
                let Some(data) = taken else {
                    return Err(Error::Config(format!(
                        "{endpoint}: an upload from a stream cannot be sent twice"
                    )));
                };
                let all = stream::once(async move { Ok(head) })
                    .chain(data)
                    .chain(stream::once(async move { Ok(tail) }));
                reqwest::Body::wrap_stream(all)
            }
        };
        Ok((content_type, total, body))
    }
}

/// Reads at most `length` bytes of `file` in 64 KiB chunks.
fn file_chunks(file: tokio::fs::File, length: u64) -> ByteStream {
    use tokio::io::AsyncReadExt;
    stream::try_unfold((file, length), |(mut file, remaining)| async move {
        if remaining == 0 {
            return Ok(None);
        }
        let want = remaining.min(64 * 1024) as usize;
        let mut buffer = BytesMut::with_capacity(want);
        let read = (&mut file).take(want as u64).read_buf(&mut buffer).await?;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while it was uploaded",
            ));
        }
        Ok(Some((buffer.freeze(), (file, remaining - read as u64))))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_media_part_carries_filename_and_filelength() {
        let body = MultipartBody::new(MediaUpload::bytes("wework.txt", &b"123456"[..]));
        let head = String::from_utf8(body.head(6).to_vec()).unwrap();
        assert!(head.contains(
            "Content-Disposition: form-data; name=\"media\"; filename=\"wework.txt\"; filelength=6\r\n"
        ));
        assert!(head.contains("Content-Type: text/plain\r\n"));
        let quoted = quote_filename("a\"b\r\n.txt");
        assert_eq!(quoted, "a%22b%0D%0A.txt");
    }
}
