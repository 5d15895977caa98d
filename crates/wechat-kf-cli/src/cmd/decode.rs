//! `wechat-kf decode [--summary] [FILE|-]`: decode sync_msg data with the library's model.
//!
//! Accepts a sync_msg response body, a JSON array of messages, or JSON Lines of messages.
//! Without `--summary` it prints each message re-encoded from the typed model, one per line;
//! with it, `KIND<TAB>COUNT` lines sorted by kind.
//!
//! Items that do not decode are named on stderr by their index in the input, counted from 0
//! like the `invalid` list of the webhook body `serve` posts.
//!
//! Exit status: 0 when every item decoded, 1 when some were invalid (after printing the rest),
//! 2 when the input cannot be read or is not one of the accepted shapes.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::value::RawValue;
use wechat_kf::message::{InvalidItem, Message, SyncMsgResponse};

/// What `wechat-kf decode --help` says.
pub const LONG_ABOUT: &str = "Check sync_msg data against the typed message model.\n\n\
    Reads a sync_msg response body, a JSON array of messages or JSON Lines of messages. Prints \
    each message that decodes, re-encoded from the typed model, one per line: the output equals \
    the input as JSON (a message pretty-printed over several lines comes out compacted), so \
    unknown types and fields survive. With --summary it prints KIND<TAB>COUNT lines instead.\n\n\
    Each item that does not decode is named on stderr as `wechat-kf: item N (msgid): <why>`, \
    N its index in the input counted from 0, like the `invalid` list of the webhook body \
    `serve` posts. Exit status: 0 every item decoded, 1 some did not, 2 the input is unreadable \
    or not one of the accepted shapes.";

/// Arguments of `wechat-kf decode`.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Print `KIND<TAB>COUNT` lines instead of the messages.
    #[arg(long)]
    summary: bool,
    /// The input file; standard input when absent or `-`.
    file: Option<PathBuf>,
}

/// One decoded item: a message, or an item that failed to decode.
enum Item {
    Valid(Message),
    Invalid(InvalidItem),
}

/// Runs `wechat-kf decode`.
pub fn run(args: DecodeArgs) -> ExitCode {
    let input = match read_input(args.file.as_ref()) {
        Ok(input) => input,
        Err(message) => {
            super::fail(message);
            return ExitCode::from(2);
        }
    };
    let items = match parse(&input) {
        Ok(items) => items,
        Err(message) => {
            super::fail(message);
            return ExitCode::from(2);
        }
    };
    let mut out = BufWriter::new(io::stdout().lock());
    let written = if args.summary {
        write_summary(&mut out, &items)
    } else {
        write_messages(&mut out, &items)
    };
    if let Err(error) = written.and_then(|()| out.flush()) {
        // A closed pipe (`| head`) is not worth a message.
        if error.kind() != io::ErrorKind::BrokenPipe {
            super::fail(format_args!("cannot write output: {error}"));
        }
        return ExitCode::from(2);
    }
    let invalid: Vec<&InvalidItem> = items
        .iter()
        .filter_map(|item| match item {
            Item::Invalid(invalid) => Some(invalid),
            Item::Valid(_) => None,
        })
        .collect();
    for item in &invalid {
        eprintln!(
            "wechat-kf: item {} ({}): {}",
            item.index,
            item.msgid.as_ref().map_or("no msgid", |id| id.as_str()),
            item.error
        );
    }
    if invalid.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn read_input(file: Option<&PathBuf>) -> Result<String, String> {
    let mut bytes = Vec::new();
    match file {
        Some(path) if path.as_os_str() != "-" => {
            bytes =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        }
        _ => {
            io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
        }
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "input is not UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Recognises the three accepted shapes by their first non-blank character and structure.
fn parse(input: &str) -> Result<Vec<Item>, String> {
    let trimmed = input.trim_start();
    if trimmed.is_empty() {
        return Err(
            "input is empty: expected a sync_msg response, a JSON array or JSON Lines".into(),
        );
    }
    if trimmed.starts_with('[') {
        let list: Vec<Box<RawValue>> = serde_json::from_str(input)
            .map_err(|e| format!("input is not a JSON array of messages: {e}"))?;
        return Ok(decode_items(list));
    }
    // One object: a sync_msg response when it has `msg_list`, else a single message.
    if let Ok(object) = serde_json::from_str::<BTreeMap<String, &RawValue>>(input) {
        if object.contains_key("msg_list") {
            let page = SyncMsgResponse::from_json(input)
                .map_err(|e| format!("input is not a sync_msg response: {e}"))?;
            return Ok(merge(page));
        }
    }
    // JSON Lines (a single object is one line).
    let mut list = Vec::new();
    for (number, line) in input.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let raw = RawValue::from_string(line.to_owned())
            .map_err(|e| format!("line {} is not JSON: {e}", number + 1))?;
        list.push(raw);
    }
    Ok(decode_items(list))
}

fn decode_items(list: Vec<Box<RawValue>>) -> Vec<Item> {
    list.into_iter()
        .enumerate()
        .map(|(index, raw)| match Message::from_raw(raw) {
            Ok(message) => Item::Valid(message),
            Err((raw, error)) => Item::Invalid(InvalidItem::new(index, raw, error)),
        })
        .collect()
}

/// Puts a page's valid and invalid items back in their original order.
fn merge(page: SyncMsgResponse) -> Vec<Item> {
    let total = page.msg_list.len() + page.invalid.len();
    let mut valid = page.msg_list.into_iter();
    let mut invalid = page.invalid.into_iter().peekable();
    let mut items = Vec::with_capacity(total);
    for index in 0..total {
        let next_invalid = invalid.peek().is_some_and(|item| item.index == index);
        let item = if next_invalid {
            invalid.next().map(Item::Invalid)
        } else {
            valid.next().map(Item::Valid)
        };
        items.extend(item);
    }
    items
}

fn write_messages(out: &mut impl Write, items: &[Item]) -> io::Result<()> {
    for item in items {
        if let Item::Valid(message) = item {
            // Re-encoded from the model: equal to the input as a JSON value. A message that
            // arrived pretty-printed is compacted so that each one stays on its own line.
            if message.raw().contains(['\n', '\r']) {
                let value: serde_json::Value = serde_json::from_str(message.raw())?;
                serde_json::to_writer(&mut *out, &value)?;
            } else {
                serde_json::to_writer(&mut *out, message)?;
            }
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

fn write_summary(out: &mut impl Write, items: &[Item]) -> io::Result<()> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for item in items {
        let kind = match item {
            Item::Valid(message) => message.kind().into_owned(),
            Item::Invalid(invalid) => invalid.kind(),
        };
        *counts.entry(kind).or_default() += 1;
    }
    for (kind, count) in counts {
        writeln!(out, "{kind}\t{count}")?;
    }
    Ok(())
}
