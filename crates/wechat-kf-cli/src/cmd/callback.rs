//! `wechat-kf callback`: verify-url, decrypt and encrypt for people debugging their callback setup.
//!
//! Every subcommand takes the callback configuration as `--token`, `--aes-key` and `--corp-id`,
//! or the variables `serve` reads (`WECHAT_KF_CALLBACK_TOKEN`, `WECHAT_KF_ENCODING_AES_KEY`,
//! `WECHAT_KF_CORP_ID`; the deprecated `WECHAT_KF_TOKEN` and `WECHAT_KF_AES_KEY` still work), or
//! the `[wechat]` section of its file (`--config`). A missing setting exits with status 2, a
//! crypto failure with status 1 and one line naming the failed check and its official code, e.g.
//! `wechat-kf: signature mismatch (-40001)`.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use wechat_kf::crypto::{CallbackCrypto, CryptoError, random_nonce, url_decode};
use wechat_kf_service::config::{Overrides, WechatConfig};

/// Callback debugging subcommands.
#[derive(Debug, Subcommand)]
pub enum CallbackCommand {
    /// Verify a GET URL check and print the echo plaintext the server must answer with.
    VerifyUrl(VerifyUrlArgs),
    /// Verify and decrypt a POST body; print the inner XML (or, with --event, the parsed event).
    Decrypt(DecryptArgs),
    /// Encrypt and sign a plaintext into the reply XML (Encrypt, MsgSignature, TimeStamp, Nonce).
    Encrypt(EncryptArgs),
}

/// The `--help` heading of the callback settings.
const SETTINGS: &str = "Callback settings";

/// The callback configuration of the KF admin console: flags, then the environment, then the
/// `[wechat]` section of `--config` (listed apart from each command's own options in `--help`).
#[derive(Debug, Args)]
pub struct Credentials {
    /// Callback Token [env: WECHAT_KF_CALLBACK_TOKEN].
    #[arg(long, help_heading = SETTINGS)]
    token: Option<String>,
    /// EncodingAESKey, 43 characters [env: WECHAT_KF_ENCODING_AES_KEY].
    #[arg(long = "aes-key", help_heading = SETTINGS)]
    aes_key: Option<String>,
    /// CorpID, the receive_id checked after decryption [env: WECHAT_KF_CORP_ID].
    #[arg(long = "corp-id", help_heading = SETTINGS)]
    corp_id: Option<String>,
    /// The TOML file `serve` reads [env: WECHAT_KF_CONFIG].
    #[arg(long, env = "WECHAT_KF_CONFIG", hide_env = true, help_heading = SETTINGS)]
    config: Option<PathBuf>,
}

/// A failure: the line printed and the exit code (2: a setting is missing or unreadable, 1:
/// anything else).
struct Failure(u8, String);

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure(1, message)
    }
}

impl Credentials {
    /// The crypto of the layered settings.
    fn crypto(&self) -> Result<CallbackCrypto, Failure> {
        let flags = Overrides::default()
            .set("--token", "wechat.callback_token", self.token.as_ref())
            .set(
                "--aes-key",
                "wechat.encoding_aes_key",
                self.aes_key.as_ref(),
            )
            .set("--corp-id", "wechat.corp_id", self.corp_id.as_ref());
        let setting = |message: String| Failure(2, message);
        let wechat = WechatConfig::load(self.config.as_deref(), flags)
            .map_err(|e| setting(e.to_string()))?;
        let missing = |what: &str, flag: &str, var: &str, key: &str| {
            setting(format!(
                "no {what}: use {flag}, {var} or wechat.{key} in --config"
            ))
        };
        let token = wechat.callback_token.ok_or_else(|| {
            missing(
                "callback token",
                "--token",
                "WECHAT_KF_CALLBACK_TOKEN",
                "callback_token",
            )
        })?;
        let aes_key = wechat.encoding_aes_key.ok_or_else(|| {
            missing(
                "EncodingAESKey",
                "--aes-key",
                "WECHAT_KF_ENCODING_AES_KEY",
                "encoding_aes_key",
            )
        })?;
        if wechat.corp_id.is_empty() {
            return Err(missing(
                "corp id",
                "--corp-id",
                "WECHAT_KF_CORP_ID",
                "corp_id",
            ));
        }
        CallbackCrypto::new(token.expose(), aes_key.expose(), &wechat.corp_id)
            .map_err(crypto_failure)
    }
}

/// The query parameters WeChat signs a callback with.
#[derive(Debug, Args)]
struct SignedQuery {
    /// The `msg_signature` query parameter.
    #[arg(long = "msg-signature")]
    msg_signature: String,
    /// The `timestamp` query parameter.
    #[arg(long)]
    timestamp: String,
    /// The `nonce` query parameter.
    #[arg(long)]
    nonce: String,
}

/// Arguments of `callback verify-url`.
#[derive(Debug, Args)]
pub struct VerifyUrlArgs {
    #[command(flatten)]
    credentials: Credentials,
    #[command(flatten)]
    signed: SignedQuery,
    /// The `echostr` query parameter, decoded or as sent: it is URL-decoded only if it contains
    /// `%` (a `+` is kept as `+`).
    #[arg(long)]
    echostr: String,
}

/// Arguments of `callback decrypt`.
#[derive(Debug, Args)]
pub struct DecryptArgs {
    #[command(flatten)]
    credentials: Credentials,
    #[command(flatten)]
    signed: SignedQuery,
    /// Print the parsed callback event as JSON instead of the inner XML.
    #[arg(long)]
    event: bool,
    /// File with the POST body XML; `-` or absent reads stdin.
    body: Option<PathBuf>,
}

/// Arguments of `callback encrypt`.
#[derive(Debug, Args)]
pub struct EncryptArgs {
    #[command(flatten)]
    credentials: Credentials,
    /// TimeStamp of the reply (default: now).
    #[arg(long)]
    timestamp: Option<String>,
    /// Nonce of the reply (default: a random number).
    #[arg(long)]
    nonce: Option<String>,
    /// The 16-character random prefix, for reproducible output (default: random).
    #[arg(long)]
    random: Option<String>,
    /// The plaintext to encrypt; without it the plaintext is read, byte for byte, from FILE.
    #[arg(long, conflicts_with = "input")]
    message: Option<String>,
    /// File with the plaintext; `-` or absent reads stdin.
    input: Option<PathBuf>,
}

/// Runs a callback subcommand.
pub fn run(command: CallbackCommand) -> ExitCode {
    let result = match command {
        CallbackCommand::VerifyUrl(args) => verify_url(args),
        CallbackCommand::Decrypt(args) => decrypt(args),
        CallbackCommand::Encrypt(args) => encrypt(args),
    };
    match result {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(Failure(code, message)) => {
            super::fail(message);
            ExitCode::from(code)
        }
    }
}

/// A failure as the one line printed: the failed check, its official code and, where the
/// signature matched (so the Token is right), which other setting is probably wrong.
fn crypto_failure(e: CryptoError) -> Failure {
    let hint = match e {
        CryptoError::Padding | CryptoError::FrameLength | CryptoError::InvalidUtf8 => {
            ": the signature matched but the payload does not decrypt, so the EncodingAESKey \
             (--aes-key, WECHAT_KF_ENCODING_AES_KEY) is probably wrong"
        }
        CryptoError::ReceiveIdMismatch => {
            ": the payload decrypted but names another receiver, so the CorpID (--corp-id, \
             WECHAT_KF_CORP_ID) is probably wrong"
        }
        _ => "",
    };
    Failure(1, format!("{e} ({}){hint}", e.code()))
}

fn verify_url(args: VerifyUrlArgs) -> Result<String, Failure> {
    let crypto = args.credentials.crypto()?;
    // WeCom sends echostr percent-encoded; a value pasted from a decoded log has no `%`.
    let echostr = url_decode(&args.echostr);
    let q = &args.signed;
    crypto
        .verify_url(&q.msg_signature, &q.timestamp, &q.nonce, &echostr)
        .map_err(crypto_failure)
}

fn decrypt(args: DecryptArgs) -> Result<String, Failure> {
    let crypto = args.credentials.crypto()?;
    let body = read_input(args.body.as_ref())?;
    let q = &args.signed;
    if args.event {
        let event = crypto
            .decrypt_event(&q.msg_signature, &q.timestamp, &q.nonce, &body)
            .map_err(crypto_failure)?;
        serde_json::to_string_pretty(&event)
            .map_err(|e| Failure::from(format!("cannot print the event: {e}")))
    } else {
        crypto
            .decrypt_message(&q.msg_signature, &q.timestamp, &q.nonce, &body)
            .map_err(crypto_failure)
    }
}

fn encrypt(args: EncryptArgs) -> Result<String, Failure> {
    let crypto = args.credentials.crypto()?;
    let plaintext = match args.message {
        Some(message) => message,
        None => read_input(args.input.as_ref())?,
    };
    let timestamp = match args.timestamp {
        Some(timestamp) => timestamp,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs().to_string())
            .map_err(|_| "the system clock is before 1970".to_owned())?,
    };
    let nonce = args.nonce.unwrap_or_else(random_nonce);
    match args.random {
        Some(random) => {
            let random: &[u8; 16] = random
                .as_bytes()
                .try_into()
                .map_err(|_| Failure(2, "--random must be exactly 16 bytes".to_owned()))?;
            crypto.encrypt_with_random(&plaintext, random, &timestamp, &nonce)
        }
        None => crypto.encrypt_message(&plaintext, &timestamp, &nonce),
    }
    .map_err(crypto_failure)
}

/// Reads a file, or stdin for `-` or no path; an unreadable one is an input error (2).
fn read_input(path: Option<&PathBuf>) -> Result<String, Failure> {
    read_text(path).map_err(|message| Failure(2, message))
}

fn read_text(path: Option<&PathBuf>) -> Result<String, String> {
    match path {
        Some(path) if path.as_os_str() != "-" => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            Ok(text)
        }
    }
}
