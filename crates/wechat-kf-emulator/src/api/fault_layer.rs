//! The middleware on `/cgi-bin/`: counts every call and applies the injected faults
//! ([`crate::faults`]) before the API handler sees the request.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::known_path;
use crate::Emulator;
use crate::errors::ApiError;
use crate::faults::{FaultKind, take};
use crate::server::ConnHandle;

/// Marker put into a request's extensions when an `empty_page` fault applies.
#[derive(Debug, Clone, Copy)]
pub struct EmptyPageFault;

/// Middleware on /cgi-bin/: counts calls and applies faults before the API sees the request.
pub(crate) async fn middleware(
    State(emu): State<Emulator>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(path) = req
        .uri()
        .path()
        .strip_prefix("/cgi-bin/")
        .map(str::to_string)
    else {
        return next.run(req).await;
    };
    let counted = known_path(&path).unwrap_or("(unknown)");
    let fault = emu.with_state(|s, now| {
        *s.counters.calls.entry(counted.to_string()).or_default() += 1;
        take(&mut s.faults, &path, now)
    });
    match fault {
        None => next.run(req).await,
        Some(FaultKind::Delay(ms)) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            next.run(req).await
        }
        Some(FaultKind::HttpStatus(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, "emulated fault").into_response()
        }
        Some(FaultKind::Errcode(code, msg)) => {
            let msg = msg.unwrap_or_else(|| "emulated fault".to_string());
            ApiError::new(code, msg).into_response()
        }
        Some(FaultKind::Drop) => match req.extensions().get::<ConnectInfo<ConnHandle>>() {
            Some(ConnectInfo(handle)) => {
                handle.kill();
                // The write of this response fails, so the client sees a closed connection.
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
            // In-process (`router().oneshot`) there is no connection to drop.
            None => (StatusCode::BAD_GATEWAY, "emulated connection drop").into_response(),
        },
        Some(FaultKind::EmptyPage) => {
            req.extensions_mut().insert(EmptyPageFault);
            next.run(req).await
        }
        Some(FaultKind::InvalidateTokens) => {
            emu.with_state(|s, _| s.access_tokens.revoke(None));
            next.run(req).await
        }
        Some(FaultKind::MediaBusy) => ApiError::new(
            crate::errors::CONCURRENCY_LIMITED,
            "api concurrent out of limit: the same media_id is being downloaded",
        )
        .into_response(),
    }
}
