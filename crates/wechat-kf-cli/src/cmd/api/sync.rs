//! `sync`: pulls an account's messages and prints each one exactly as received, one per line.

use std::io::{BufWriter, Write};
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use wechat_kf::client::messages::VoiceFormat;
use wechat_kf::client::puller::Puller;

use super::{CliError, CliResult, ConnArgs, DEFAULT_FOLLOW_INTERVAL};

/// `sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The account to pull.
    #[arg(long)]
    open_kfid: String,
    /// Continue after this cursor (default: from the oldest message of the last 3 days).
    #[arg(long)]
    cursor: Option<String>,
    /// The Token of the latest kf_msg_or_event callback (used while younger than 10 minutes).
    #[arg(long)]
    token: Option<String>,
    /// Page size, 1–1000.
    #[arg(long)]
    limit: Option<u32>,
    /// Format of voice media downloaded later.
    #[arg(long, value_enum)]
    voice_format: Option<VoiceFormatArg>,
    /// Keep polling after catching up, until interrupted.
    #[arg(long)]
    follow: bool,
    /// Seconds between polls with --follow.
    #[arg(long, default_value_t = DEFAULT_FOLLOW_INTERVAL.as_secs())]
    interval: u64,
}

/// `--voice-format` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum VoiceFormatArg {
    /// AMR (default).
    Amr,
    /// SILK.
    Silk,
}

/// Runs `sync`.
pub async fn run(args: SyncArgs) -> CliResult {
    let client = args.conn.client()?;
    let mut puller = Puller::new(client, args.open_kfid);
    if let Some(cursor) = args.cursor {
        puller = puller.start_cursor(cursor);
    }
    if let Some(token) = args.token {
        puller = puller.callback_token(token, SystemTime::now());
    }
    if let Some(limit) = args.limit {
        puller = puller.page_limit(limit);
    }
    if let Some(format) = args.voice_format {
        puller = puller.voice_format(match format {
            VoiceFormatArg::Amr => VoiceFormat::Amr,
            VoiceFormatArg::Silk => VoiceFormat::Silk,
        });
    }
    let interval = Duration::from_secs(args.interval.max(1));
    let (mut pages, mut total) = (0u64, 0u64);
    let mut token_rejected = false;
    let result = loop {
        let fetched = tokio::select! {
            fetched = puller.fetch() => fetched,
            _ = tokio::signal::ctrl_c() => break Ok(()),
        };
        let fetched = match fetched {
            Ok(batch) => Ok(batch),
            Err(error) => {
                // The library pulled again without a token WeChat refused; say so once.
                note_token_rejection(&puller, &mut token_rejected);
                Err(error)
            }
        };
        let batch = match fetched {
            Ok(batch) => batch,
            Err(error) if args.follow => {
                eprintln!("wechat-kf: {error} (retrying in {}s)", interval.as_secs());
                tokio::select! {
                    _ = tokio::time::sleep(interval) => continue,
                    _ = tokio::signal::ctrl_c() => break Ok(()),
                }
            }
            Err(error) => break Err(CliError::from(error)),
        };
        pages += 1;
        total += batch.messages.len() as u64;
        {
            let mut stdout = BufWriter::new(std::io::stdout().lock());
            for message in &batch.messages {
                writeln!(stdout, "{}", message.raw())?;
            }
            // Undecodable items are printed too, as received: nothing is dropped.
            for item in &batch.invalid {
                writeln!(stdout, "{}", item.raw.get())?;
            }
            stdout.flush()?;
        }
        for item in &batch.invalid {
            eprintln!(
                "warning: item {} (msgid {}) did not decode: {}",
                item.index,
                item.msgid.as_ref().map_or("?", |m| m.as_str()),
                item.error
            );
        }
        eprintln!(
            "page {pages}: {} messages, {} undecodable, {} repeats, has_more={}",
            batch.messages.len(),
            batch.invalid.len(),
            batch.duplicates(),
            u8::from(batch.has_more())
        );
        let more = batch.has_more();
        if let Err(error) = batch.commit().await {
            break Err(error.into());
        }
        note_token_rejection(&puller, &mut token_rejected);
        if !more {
            if !args.follow {
                break Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = tokio::signal::ctrl_c() => break Ok(()),
            }
        }
    };
    // After a failure before any page there is nothing to resume from: only the error.
    if result.is_ok() || pages > 0 {
        let before = if result.is_ok() {
            ""
        } else {
            " before the error"
        };
        eprintln!(
            "{total} messages in {pages} pages{before}; next cursor: {}",
            puller.committed_cursor().unwrap_or("")
        );
    }
    result
}

/// Says once that WeChat refused `--token` (95007: expired, used up, or another account's)
/// and that the pull went on without it.
fn note_token_rejection(puller: &Puller, said: &mut bool) {
    if !*said && puller.callback_token_rejection().is_some() {
        *said = true;
        eprintln!(
            "wechat-kf: note: WeChat refused --token (95007: expired, already used or another \
             account's); pulled without it, under the token-less rate limit"
        );
    }
}
