//! `media/upload`, `media/uploadimg` and `media/get` (official docs 90253, 90256, 90254).

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::json;

use crate::Emulator;
use crate::clock::DAY;
use crate::errors::{self, ApiError, ApiResult, ok};
use crate::ids;
use crate::state::media::{self, Media, MediaType};

const MB: usize = 1024 * 1024;
/// Largest piece `media/get` serves at once.
const MAX_GET_CHUNK: usize = 20 * MB;

struct Upload {
    filename: String,
    content_type: Option<String>,
    data: Bytes,
}

async fn read_media_part(req: Request) -> ApiResult<Upload> {
    let empty = || {
        ApiError::new(
            errors::EMPTY_MEDIA,
            "empty media data: a multipart part named media is required",
        )
    };
    let mut multipart = Multipart::from_request(req, &())
        .await
        .map_err(|_| empty())?;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => return Err(empty()),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(
                    errors::MEDIA_TOO_LARGE,
                    "media file too large",
                ));
            }
            Err(_) => return Err(empty()),
        };
        if field.name() != Some("media") {
            continue;
        }
        let filename = field.file_name().unwrap_or("media").to_string();
        let content_type = field.content_type().map(str::to_string);
        let data = field.bytes().await.map_err(|_| empty())?;
        return Ok(Upload {
            filename,
            content_type,
            data,
        });
    }
}

fn check_size(kind: MediaType, len: usize, image_max: usize) -> ApiResult<()> {
    if len == 0 {
        return Err(ApiError::new(errors::EMPTY_MEDIA, "empty media data"));
    }
    if len <= 5 {
        return Err(ApiError::new(
            errors::INVALID_FILE_SIZE,
            "invalid file size: at least 6 bytes",
        ));
    }
    let (max, code) = match kind {
        MediaType::Image => (image_max, errors::INVALID_IMAGE_SIZE),
        MediaType::Voice => (2 * MB, errors::MEDIA_TOO_LARGE),
        MediaType::Video => (10 * MB, errors::INVALID_VIDEO_SIZE),
        MediaType::File => (20 * MB, errors::MEDIA_TOO_LARGE),
    };
    if len > max {
        return Err(ApiError::new(code, "media file too large"));
    }
    Ok(())
}

fn check_format(kind: MediaType, data: &[u8]) -> ApiResult<()> {
    if media::format_ok(kind, data) {
        return Ok(());
    }
    Err(match kind {
        MediaType::Voice => ApiError::new(errors::VOICE_NOT_AMR, "voice file must be amr format"),
        _ => ApiError::new(errors::INVALID_MEDIA_FILE_TYPE, "invalid file type"),
    })
}

/// `media/upload?type=` (temporary, 3 days) or, with `permanent_image`, `media/uploadimg`.
pub(super) async fn upload(
    emu: &Emulator,
    query: &HashMap<String, String>,
    req: Request,
    permanent_image: bool,
) -> ApiResult<Response> {
    let kind = if permanent_image {
        MediaType::Image
    } else {
        query
            .get("type")
            .and_then(|t| MediaType::parse(t))
            .ok_or_else(|| ApiError::new(errors::INVALID_MEDIA_TYPE, "invalid media type"))?
    };
    let upload = read_media_part(req).await?;
    let image_max = if permanent_image {
        2 * MB
    } else {
        emu.config().image_max_bytes
    };
    check_size(kind, upload.data.len(), image_max)?;
    if emu.config().check_media_format {
        check_format(kind, &upload.data)?;
    }
    if permanent_image {
        let (per_day, per_month) = (
            emu.config().uploadimg_per_day,
            emu.config().uploadimg_per_month,
        );
        let within_quota = emu.with_state(|s, now| {
            let (day, month) = &mut s.uploadimg_quota;
            // Checked on a copy first, so that a refusal by one window does not use the other.
            let (mut d, mut m) = (day.clone(), month.clone());
            let ok = d.take(now, DAY, per_day) && m.take(now, 30 * DAY, per_month);
            if ok {
                (*day, *month) = (d, m);
            }
            ok
        });
        if !within_quota {
            // The documents give the quota but not its errcode; the frequency code is the
            // nearest documented one (docs/vendor-notes.md).
            return Err(ApiError::new(
                errors::FREQUENCY_LIMITED,
                "uploadimg quota exceeded (1000 per day, 3000 per month)",
            ));
        }
        let url = format!(
            "http://p.qpic.cn/pic_wework/{}/{}/0",
            ids::digits(10),
            ids::alnum(40)
        );
        return Ok(ok(json!({"url": url})));
    }
    let content_type = media::content_type_for(kind, &upload.data, upload.content_type.as_deref());
    let (media_id, created) = emu.with_state(|s, now| {
        let media = Media {
            kind,
            filename: upload.filename,
            content_type,
            data: upload.data,
            created_at: now,
        };
        let max = s.max_media_bytes;
        (s.media.insert(media, now, max), now / 1000)
    });
    Ok(ok(
        json!({"type": kind.as_str(), "media_id": media_id, "created_at": created.to_string()}),
    ))
}

/// `Content-Disposition` with an ASCII fallback and, for other names, RFC 5987 `filename*`.
pub(crate) fn content_disposition(filename: &str) -> String {
    let fallback: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if filename.is_ascii()
        && !filename.contains(['"', '\\'])
        && !filename.chars().any(|c| c.is_ascii_control())
    {
        format!("attachment; filename=\"{filename}\"")
    } else {
        let encoded = utf8_percent_encode(filename, NON_ALPHANUMERIC);
        format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
    }
}

/// Parses a single `bytes=a-b` / `bytes=a-` / `bytes=-n` range. `Err` = unsatisfiable.
fn parse_range(value: &str, total: usize) -> Option<Result<(usize, usize), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // several ranges: serve the whole file (allowed by RFC 9110)
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: usize = b.parse().ok()?;
        if n == 0 || total == 0 {
            return Some(Err(()));
        }
        (total.saturating_sub(n), total - 1)
    } else {
        let start: usize = a.parse().ok()?;
        let end: usize = if b.is_empty() {
            total.saturating_sub(1)
        } else {
            b.parse().ok()?
        };
        if start >= total || end < start {
            return Some(Err(()));
        }
        (start, end.min(total - 1))
    };
    Some(Ok(range))
}

/// One `media/get` download in flight: counted per media_id until the response body has been
/// handed to the connection (or dropped), so that concurrent downloads of one id can answer 45033.
struct DownloadGuard {
    emu: Emulator,
    media_id: String,
}

impl Drop for DownloadGuard {
    fn drop(&mut self) {
        let id = std::mem::take(&mut self.media_id);
        self.emu.with_state(|s, _| {
            if let Some(n) = s.media_downloads.get_mut(&id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    s.media_downloads.remove(&id);
                }
            }
        });
    }
}

/// A one-chunk response body that keeps its [`DownloadGuard`] alive until it is dropped.
struct GuardedBytes {
    data: Option<Bytes>,
    _guard: Option<DownloadGuard>,
}

impl futures::Stream for GuardedBytes {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.data.take().map(Ok))
    }
}

/// A response with `data` as its body (explicit Content-Length) and the guard inside it.
fn guarded(status: StatusCode, data: Bytes, guard: Option<DownloadGuard>) -> Response {
    let len = data.len();
    let body = Body::from_stream(GuardedBytes {
        data: Some(data),
        _guard: guard,
    });
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// `media/get?media_id=`: bytes with headers, Range support, JSON errors; more than
/// `Config::media_get_concurrency_per_id` downloads of one id in flight → 45033.
pub(super) fn get(
    emu: &Emulator,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let id = query
        .get("media_id")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::new(errors::MISSING_MEDIA_ID, "media_id missing"))?;
    let limit = emu.config().media_get_concurrency_per_id;
    let media = emu.with_state(|s, now| {
        let media = s.media.get(id, now)?.clone();
        if limit > 0 {
            let in_flight = s.media_downloads.entry(id.clone()).or_default();
            if *in_flight >= limit {
                return Err(ApiError::new(
                    errors::CONCURRENCY_LIMITED,
                    "api concurrent out of limit: the same media_id is being downloaded",
                ));
            }
            *in_flight += 1;
        }
        Ok(media)
    })?;
    // Created right after counting, so every return below releases the slot again.
    let guard = (limit > 0).then(|| DownloadGuard {
        emu: emu.clone(),
        media_id: id.clone(),
    });
    let total = media.data.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_range(v, total));
    let mut response = match range {
        Some(Err(())) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
        Some(Ok((start, end))) => {
            if end - start + 1 > MAX_GET_CHUNK {
                return Err(ApiError::new(
                    errors::MEDIA_NEEDS_RANGE,
                    "range larger than 20 MB",
                ));
            }
            let mut r = guarded(
                StatusCode::PARTIAL_CONTENT,
                media.data.slice(start..end + 1),
                guard,
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{total}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
        None => {
            if total > MAX_GET_CHUNK {
                return Err(ApiError::new(
                    errors::MEDIA_NEEDS_RANGE,
                    "file larger than 20 MB: use Range",
                ));
            }
            guarded(StatusCode::OK, media.data.clone(), guard)
        }
    };
    let h = response.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&media.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&media.filename)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_file_names_get_an_rfc5987_parameter() {
        assert_eq!(
            content_disposition("a.txt"),
            "attachment; filename=\"a.txt\""
        );
        assert_eq!(
            content_disposition("报告.pdf"),
            "attachment; filename=\"__.pdf\"; filename*=UTF-8''%E6%8A%A5%E5%91%8A%2Epdf"
        );
    }

    #[test]
    fn ranges_are_parsed_like_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=95-200", 100), Some(Ok((95, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
