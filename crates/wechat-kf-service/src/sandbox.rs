//! Sandbox mode: without WeChat credentials the service starts the emulator in-process, talks to
//! it, points its callbacks at itself and creates a demo account, so the whole loop (customer →
//! callback → pull → bot → reply) runs with one command.

use wechat_kf::OpenKfId;
use wechat_kf_emulator::{Emulator, RunningEmulator};

use crate::config::Config;
use crate::error::Error;

/// The demo customer used in the printed instructions.
pub const DEMO_CUSTOMER: &str = "wmDemoCustomer";

/// The demo account's servicer (the console's sandbox hands sessions to it).
pub const DEMO_SERVICER: &str = "demo_servicer";

/// What a sandbox user needs to know.
#[derive(Debug, Clone)]
pub struct SandboxInfo {
    /// The emulator's base URL (`/emulator/*` control API, `/cgi-bin/*` WeChat API).
    pub emulator_url: String,
    /// The emulator's corp id, for the operator commands (`token`, `sync`, `send`, ...).
    pub corp_id: String,
    /// The emulator's generated secret (it guards only this process's emulator), for the
    /// operator commands.
    pub secret: String,
    /// The demo account.
    pub open_kfid: OpenKfId,
    /// The service's base URL (filled in once it listens).
    pub service_url: String,
    /// The reply API's bearer token (generated unless configured; `None` when configured, so
    /// it is never printed).
    pub generated_api_token: Option<String>,
    /// The console's login token (generated unless configured; `None` when configured, so it
    /// is never printed).
    pub generated_console_token: Option<String>,
    /// Whether `--echo` is on.
    pub echo: bool,
    /// Whether messages go to a webhook (else stdout).
    pub webhook: bool,
    /// The built-in agent answering (`openai`, `dify`), if one does.
    pub responder: Option<&'static str>,
}

impl SandboxInfo {
    /// The console's URL to open: with the generated token after `#` (a fragment never
    /// reaches the server, nor its logs; the login page reads it), or the bare login page
    /// when the token was configured.
    pub fn console_url(&self) -> String {
        match &self.generated_console_token {
            Some(token) => format!("{}/console/login#token={token}", self.service_url),
            None => format!("{}/console/login", self.service_url),
        }
    }

    /// The instructions printed at start (to stderr: stdout carries JSON Lines).
    pub fn instructions(&self) -> String {
        let emu = &self.emulator_url;
        let kf = &self.open_kfid;
        let token = self
            .generated_api_token
            .as_deref()
            .unwrap_or("$WECHAT_KF_API_TOKEN");
        let sink = match self.responder {
            Some(kind) => format!("the {kind} responder"),
            None if self.webhook => "your webhook".to_owned(),
            None => "stdout (JSON Lines)".to_owned(),
        };
        let echo = if self.responder.is_some() {
            "It answers every customer message it may.\n"
        } else if self.echo {
            "--echo is on: every customer text is answered with an echo.\n"
        } else {
            "Add --echo to answer every customer text with an echo.\n"
        };
        format!(
            "\nwechat-kf serve: sandbox mode (no WeChat credentials configured)\n\
             Open the console in a browser and chat as a customer:\n\
             \x20 {console}\n\
             \x20 emulator:  {emu}   (GET {emu}/emulator/state lists the demo account)\n\
             \x20 account:   {kf}\n\
             \x20 service:   {svc}   (callbacks at /callback, reply API at /v1/messages)\n\
             \x20 messages go to {sink}. {echo}\n\
             Send a customer message:\n\
             \x20 curl -s {emu}/emulator/customer/send -H 'content-type: application/json' \\\n\
             \x20   -d '{{\"open_kfid\":\"{kf}\",\"external_userid\":\"{DEMO_CUSTOMER}\",\"msgtype\":\"text\",\"text\":{{\"content\":\"hello\"}}}}'\n\
             See what was sent back to the customer:\n\
             \x20 curl -s '{emu}/emulator/outbox?open_kfid={kf}'\n\
             Reply through the reply API:\n\
             \x20 curl -s {svc}/v1/messages -H 'authorization: Bearer {token}' -H 'content-type: application/json' \\\n\
             \x20   -d '{{\"touser\":\"{DEMO_CUSTOMER}\",\"open_kfid\":\"{kf}\",\"msgtype\":\"text\",\"text\":{{\"content\":\"hi\"}}}}'\n\
             Point the operator commands (wechat-kf token, sync, send, ...) at the emulator:\n\
             \x20 export WECHAT_KF_BASE_URL={emu} WECHAT_KF_CORP_ID={corp} WECHAT_KF_SECRET={secret}\n",
            svc = self.service_url,
            console = self.console_url(),
            corp = self.corp_id,
            secret = self.secret,
        )
    }
}

/// The embedded emulator and the credentials the service uses with it.
pub(crate) struct Sandbox {
    pub(crate) running: RunningEmulator,
    pub(crate) corp_id: String,
    pub(crate) secret: String,
    pub(crate) callback_token: String,
    pub(crate) encoding_aes_key: String,
    pub(crate) emulator_url: String,
    pub(crate) open_kfid: OpenKfId,
    pub(crate) api_token: String,
    pub(crate) console_token: String,
    pub(crate) info: SandboxInfo,
    /// Where media is downloaded when nothing is configured (removed when the sandbox stops),
    /// so that the console shows the images a customer sends.
    pub(crate) media_dir: Option<tempfile::TempDir>,
}

impl Sandbox {
    /// Starts the emulator and creates the demo account.
    pub(crate) async fn start(config: &Config) -> Result<Sandbox, Error> {
        // The demo account with one servicer, so the console's sandbox can hand a session to a
        // human (the emulator's client hooks need a servicer of the account).
        let emulator_config = wechat_kf_emulator::Config::from_toml_seed(&format!(
            "[[accounts]]\nname = \"Demo\"\nservicers = [{{ userid = \"{DEMO_SERVICER}\" }}]\n"
        ))
        .map_err(|e| Error::Config(format!("the sandbox's emulator seed: {e}")))?;
        let corp_id = emulator_config.corp_id.clone();
        let secret = emulator_config.secret.clone();
        let callback_token = emulator_config.callback_token.clone();
        let encoding_aes_key = emulator_config.encoding_aes_key.clone();
        let running = Emulator::start(emulator_config, config.sandbox.emulator_listen)
            .await
            .map_err(|e| {
                Error::io(
                    format!(
                        "cannot start the emulator on {}",
                        config.sandbox.emulator_listen
                    ),
                    e,
                )
            })?;
        let open_kfid = running
            .emulator()
            .state_snapshot()
            .pointer("/accounts/0/open_kfid")
            .and_then(serde_json::Value::as_str)
            .map(OpenKfId::from)
            .ok_or_else(|| Error::Config("the sandbox's emulator has no demo account".into()))?;
        let emulator_url = running.base_url();
        let generated = config.api.token.is_none();
        let api_token = match &config.api.token {
            Some(token) => token.expose().to_owned(),
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        let console_generated = config.console.token.is_none();
        let console_token = match &config.console.token {
            Some(token) => token.expose().to_owned(),
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        let info = SandboxInfo {
            emulator_url: emulator_url.clone(),
            corp_id: corp_id.clone(),
            secret: secret.clone(),
            open_kfid: open_kfid.clone(),
            service_url: String::new(),
            generated_api_token: generated.then(|| api_token.clone()),
            generated_console_token: console_generated.then(|| console_token.clone()),
            echo: config.sandbox.echo,
            webhook: config.webhook.url.is_some(),
            responder: Some(config.responder.effective_kind(config.sandbox.echo))
                .filter(|k| k.is_agent())
                .map(|k| k.as_str()),
        };
        tracing::info!(emulator = %emulator_url, open_kfid = open_kfid.as_str(), "sandbox: emulator started");
        let media_dir =
            if config.media.download_dir.is_none() && config.media.object_store.is_none() {
                Some(
                    tempfile::Builder::new()
                        .prefix("wechat-kf-sandbox-media-")
                        .tempdir()
                        .map_err(|e| Error::io("the sandbox's media directory", e))?,
                )
            } else {
                None
            };
        Ok(Sandbox {
            running,
            corp_id,
            secret,
            callback_token,
            encoding_aes_key,
            emulator_url,
            open_kfid,
            api_token,
            console_token,
            info,
            media_dir,
        })
    }
}
