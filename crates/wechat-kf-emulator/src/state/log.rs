//! The per-account append-only message log and its opaque cursors (official doc 94670).
//!
//! Each item is stored pre-serialized, so a `sync_msg` page is a concatenation of strings. Items
//! carry a per-account sequence number; a cursor is that number masked with a per-account key plus
//! a per-account tag, base64url-encoded (16 bytes of text). A cursor of another account fails the
//! tag check.

use std::collections::VecDeque;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::clock::{DAY, Millis};

/// How long items are kept: 3 days.
pub const RETENTION: Millis = 3 * DAY;

/// One stored item: its position, time and JSON text.
#[derive(Debug, Clone)]
pub struct LogItem {
    /// Position in the log (never reused).
    pub seq: u64,
    /// `send_time` in milliseconds, used for retention.
    pub time_ms: Millis,
    /// The item exactly as `sync_msg` returns it.
    pub json: Box<str>,
}

/// An append-only log with front truncation.
#[derive(Debug)]
pub struct MessageLog {
    items: VecDeque<LogItem>,
    next_seq: u64,
    key: u64,
    tag: u32,
    max_items: usize,
}

/// One `sync_msg` page.
#[derive(Debug)]
pub struct Page {
    /// The concatenated items, comma-separated, without the brackets.
    pub items: String,
    /// The cursor to continue after the last item.
    pub next_cursor: String,
    /// Whether more items are available now.
    pub has_more: bool,
}

impl MessageLog {
    /// An empty log with random cursor key and tag.
    pub fn new(max_items: usize) -> MessageLog {
        MessageLog {
            items: VecDeque::new(),
            next_seq: 1,
            key: rand::random(),
            tag: rand::random(),
            max_items: max_items.max(1),
        }
    }

    /// Appends one item (already serialized) and drops what fell out of retention. An item whose
    /// time is already outside the retention (a `send_time` override more than 72 h in the past)
    /// is not stored; returns whether it was.
    pub fn append(&mut self, time_ms: Millis, json: String, now: Millis) -> bool {
        if time_ms < now - RETENTION {
            self.prune(now);
            return false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.items.push_back(LogItem {
            seq,
            time_ms,
            json: json.into_boxed_str(),
        });
        self.prune(now);
        true
    }

    /// Drops items older than 72 h from the front and beyond the cap. The log is in append order,
    /// which is time order unless `send_time` overrides came out of order; an expired item behind
    /// a newer one stays stored until it reaches the front but is never returned by [`Self::page`].
    pub fn prune(&mut self, now: Millis) {
        let cutoff = now - RETENTION;
        while let Some(front) = self.items.front() {
            if front.time_ms < cutoff || self.items.len() > self.max_items {
                self.items.pop_front();
            } else {
                break;
            }
        }
    }

    /// Number of retained items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Encodes a position as an opaque cursor.
    pub fn encode_cursor(&self, seq: u64) -> String {
        let mut bytes = [0u8; 12];
        bytes[..8].copy_from_slice(&(seq ^ self.key).to_be_bytes());
        bytes[8..].copy_from_slice(&self.tag.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes a cursor of this log; `None` if it is malformed or belongs to another account.
    pub fn decode_cursor(&self, cursor: &str) -> Option<u64> {
        let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
        if bytes.len() != 12 || bytes[8..] != self.tag.to_be_bytes() {
            return None;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&bytes[..8]);
        Some(u64::from_be_bytes(seq) ^ self.key)
    }

    /// Up to `limit` items starting at position `from` (`None` = the oldest retained item).
    /// A position before the retained range restarts at the oldest retained item. Items older
    /// than 72 h at `now` are skipped.
    pub fn page(&self, from: Option<u64>, limit: usize, now: Millis) -> Page {
        let cutoff = now - RETENTION;
        let first_seq = self.items.front().map(|i| i.seq).unwrap_or(self.next_seq);
        let start_seq = from.unwrap_or(first_seq).clamp(first_seq, self.next_seq);
        let start = (start_seq - first_seq) as usize;
        let mut items = String::with_capacity(limit.min(self.items.len() - start) * 256);
        let mut taken = 0;
        let mut end = start;
        let mut has_more = false;
        for item in self.items.range(start..) {
            if item.time_ms < cutoff {
                end += 1; // expired behind a newer item: skipped for good
                continue;
            }
            if taken == limit {
                has_more = true;
                break;
            }
            if taken > 0 {
                items.push(',');
            }
            items.push_str(&item.json);
            taken += 1;
            end += 1;
        }
        let next_seq = first_seq + end as u64;
        Page {
            items,
            next_cursor: self.encode_cursor(next_seq),
            has_more,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::HOUR;

    fn log_with(n: u64, now: Millis) -> MessageLog {
        let mut log = MessageLog::new(1_000_000);
        for i in 0..n {
            log.append(now, format!("{{\"i\":{i}}}"), now);
        }
        log
    }

    #[test]
    fn pages_walk_the_log_in_order_and_end_caught_up() {
        let log = log_with(5, 0);
        let p1 = log.page(None, 2, 0);
        assert_eq!(
            (p1.items.as_str(), p1.has_more),
            ("{\"i\":0},{\"i\":1}", true)
        );
        let p2 = log.page(log.decode_cursor(&p1.next_cursor), 2, 0);
        assert_eq!(p2.items, "{\"i\":2},{\"i\":3}");
        let p3 = log.page(log.decode_cursor(&p2.next_cursor), 2, 0);
        assert_eq!((p3.items.as_str(), p3.has_more), ("{\"i\":4}", false));
        let p4 = log.page(log.decode_cursor(&p3.next_cursor), 2, 0);
        assert_eq!(
            (p4.items.as_str(), p4.has_more, p4.next_cursor),
            ("", false, p3.next_cursor)
        );
    }

    #[test]
    fn a_cursor_of_another_log_is_rejected() {
        let a = log_with(1, 0);
        let b = log_with(1, 0);
        let cursor = a.page(None, 10, 0).next_cursor;
        assert!(cursor.len() <= 64);
        assert_eq!(b.decode_cursor(&cursor), None);
        assert_eq!(a.decode_cursor("not a cursor"), None);
    }

    #[test]
    fn items_older_than_three_days_are_dropped_and_old_cursors_restart_at_the_oldest() {
        let mut log = MessageLog::new(1_000_000);
        log.append(0, "\"old\"".into(), 0);
        let cursor_at_start = log.page(None, 0, 0).next_cursor;
        log.append(10 * HOUR, "\"new\"".into(), 73 * HOUR);
        assert_eq!(log.len(), 1);
        let page = log.page(log.decode_cursor(&cursor_at_start), 10, 73 * HOUR);
        assert_eq!(page.items, "\"new\"");
    }

    #[test]
    fn an_item_already_older_than_three_days_is_not_stored() {
        let mut log = MessageLog::new(1_000_000);
        let now = 100 * HOUR;
        assert!(!log.append(now - RETENTION - 1, "\"too old\"".into(), now));
        assert!(log.append(now - RETENTION, "\"just in\"".into(), now));
        assert_eq!(log.page(None, 10, now).items, "\"just in\"");
    }

    #[test]
    fn an_out_of_order_item_that_expires_behind_a_newer_one_is_skipped() {
        let mut log = MessageLog::new(1_000_000);
        let now = 100 * HOUR;
        log.append(now - HOUR, "\"a\"".into(), now);
        log.append(now - 70 * HOUR, "\"b\"".into(), now);
        log.append(now, "\"c\"".into(), now);
        assert_eq!(log.page(None, 10, now).items, "\"a\",\"b\",\"c\"");
        let later = now + 3 * HOUR;
        let page = log.page(None, 10, later);
        assert_eq!((page.items.as_str(), page.has_more), ("\"a\",\"c\"", false));
        let first = log.page(None, 1, later);
        assert_eq!((first.items.as_str(), first.has_more), ("\"a\"", true));
        let rest = log.page(log.decode_cursor(&first.next_cursor), 1, later);
        assert_eq!((rest.items.as_str(), rest.has_more), ("\"c\"", false));
    }
}
