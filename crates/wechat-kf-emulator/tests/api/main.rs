//! Contract tests of the `/cgi-bin/` API and the control API, run in-process through
//! `Emulator::router()` with `tower::ServiceExt::oneshot`.

mod accounts;
mod control;
mod customer;
mod knowledge;
mod malformed;
mod media;
mod send;
mod sessions;
mod sync;
mod token;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use wechat_kf_emulator::{Config, Emulator};

/// One emulator, its router, and a valid access token.
pub(crate) struct App {
    pub(crate) emu: Emulator,
    router: Router,
    pub(crate) token: String,
}

/// A response: status, headers and body bytes.
pub(crate) struct Raw {
    pub(crate) status: StatusCode,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Raw {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

pub(crate) fn code(v: &Value) -> i64 {
    v["errcode"]
        .as_i64()
        .unwrap_or_else(|| panic!("no errcode in {v}"))
}

impl App {
    /// An app whose access token outlives any clock jump of a test.
    pub(crate) async fn new() -> App {
        let mut config = Config::generated();
        config.access_token_ttl = std::time::Duration::from_secs(400 * 86_400);
        App::with_config(config).await
    }

    pub(crate) async fn with_config(config: Config) -> App {
        let emu = Emulator::new(config);
        let router = emu.router();
        let mut app = App {
            emu,
            router,
            token: String::new(),
        };
        let c = app.emu.config().clone();
        let v = app
            .send(
                "GET",
                &format!(
                    "/cgi-bin/gettoken?corpid={}&corpsecret={}",
                    c.corp_id, c.secret
                ),
                None,
                &[],
            )
            .await
            .json();
        app.token = v["access_token"].as_str().unwrap().to_string();
        app
    }

    pub(crate) async fn send(
        &self,
        method: &str,
        uri: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Raw {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let response = self.router.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        assert!(status != StatusCode::INTERNAL_SERVER_ERROR, "500 for {uri}");
        Raw {
            status,
            headers,
            body,
        }
    }

    fn with_token(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("/cgi-bin/{path}{sep}access_token={}", self.token)
    }

    /// POST JSON to an API path with the access token; HTTP 200 is asserted.
    pub(crate) async fn api(&self, path: &str, body: Value) -> Value {
        self.api_raw(path, body.to_string().as_bytes()).await
    }

    pub(crate) async fn api_raw(&self, path: &str, body: &[u8]) -> Value {
        let raw = self
            .send("POST", &self.with_token(path), Some(body.to_vec()), &[])
            .await;
        assert_eq!(raw.status, StatusCode::OK, "{path}");
        raw.json()
    }

    /// GET an API path with the access token.
    pub(crate) async fn api_get(&self, path: &str) -> Value {
        let raw = self.send("GET", &self.with_token(path), None, &[]).await;
        assert_eq!(raw.status, StatusCode::OK, "{path}");
        raw.json()
    }

    /// A control-API call.
    pub(crate) async fn control(
        &self,
        method: &str,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let raw = self
            .send(method, path, Some(body.to_string().into_bytes()), &[])
            .await;
        (raw.status, raw.json())
    }

    pub(crate) async fn account(&self) -> String {
        let (status, v) = self
            .control("POST", "/emulator/accounts", json!({"name": "客服"}))
            .await;
        assert_eq!(status, StatusCode::OK);
        v["open_kfid"].as_str().unwrap().to_string()
    }

    pub(crate) fn say(&self, kf: &str, ext: &str, text: &str) -> String {
        self.emu
            .customer_send(json!({"open_kfid": kf, "external_userid": ext, "msgtype": "text", "text": {"content": text}}))
            .unwrap()
            .remove(0)
    }

    /// Adds a receiving servicer through the API.
    pub(crate) async fn servicer(&self, kf: &str, userid: &str) {
        let v = self
            .api(
                "kf/servicer/add",
                json!({"open_kfid": kf, "userid_list": [userid]}),
            )
            .await;
        assert_eq!(code(&v), 0);
    }

    /// Uploads a media file through the API and returns its media_id.
    pub(crate) async fn upload(&self, kind: &str, filename: &str, data: &[u8]) -> Value {
        let boundary = "XBOUNDARYX";
        let mut body = Vec::new();
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"{filename}\"; filelength={}\r\nContent-Type: application/octet-stream\r\n\r\n",
                data.len()
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let ct = format!("multipart/form-data; boundary={boundary}");
        let raw = self
            .send(
                "POST",
                &self.with_token(&format!("media/upload?type={kind}")),
                Some(body),
                &[("content-type", &ct)],
            )
            .await;
        raw.json()
    }

    pub(crate) async fn image(&self) -> String {
        let v = self
            .upload("image", "a.png", b"\x89PNG\r\n\x1a\nsome image bytes")
            .await;
        v["media_id"].as_str().unwrap().to_string()
    }

    /// Pulls every item of an account (token-less), following cursors.
    pub(crate) async fn pull_all(&self, kf: &str) -> Vec<Value> {
        let mut cursor = String::new();
        let mut out = Vec::new();
        loop {
            let v = self
                .api("kf/sync_msg", json!({"open_kfid": kf, "cursor": cursor}))
                .await;
            assert_eq!(code(&v), 0, "{v}");
            out.extend(v["msg_list"].as_array().unwrap().iter().cloned());
            cursor = v["next_cursor"].as_str().unwrap().to_string();
            if v["has_more"] == 0 {
                return out;
            }
        }
    }
}
