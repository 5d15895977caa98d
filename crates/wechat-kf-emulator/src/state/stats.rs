//! Daily counters behind `get_corp_statistic` / `get_servicer_statistic` (official docs 95489, 95490).
//!
//! Days are natural days in China time (UTC+8), identified by the timestamp of their 00:00.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Value, json};

use crate::clock::Millis;

const CHINA_OFFSET: i64 = 8 * 3600;
const DAY_SECS: i64 = 86_400;
/// Days kept (the API looks back 180 days).
const KEPT_DAYS: i64 = 181;

/// The timestamp (seconds) of 00:00 China time of the day containing `secs`.
pub fn day_start(secs: i64) -> i64 {
    (secs + CHINA_OFFSET).div_euclid(DAY_SECS) * DAY_SECS - CHINA_OFFSET
}

#[derive(Debug, Default)]
struct Day {
    session_cnt: u64,
    customers: HashSet<String>,
    customer_msg_cnt: u64,
    ai_session_reply_cnt: u64,
    servicer_sessions: HashMap<String, u64>,
}

/// Counters per (account, day).
#[derive(Debug, Default)]
pub struct Stats {
    days: BTreeMap<(String, i64), Day>,
}

impl Stats {
    fn day(&mut self, open_kfid: &str, time_ms: Millis) -> &mut Day {
        let day = day_start(time_ms.div_euclid(1000));
        let oldest = day - KEPT_DAYS * DAY_SECS;
        if self.days.len() > 10_000 {
            self.days.retain(|(_, d), _| *d >= oldest);
        }
        self.days.entry((open_kfid.to_string(), day)).or_default()
    }

    /// A customer message.
    pub fn customer_message(
        &mut self,
        open_kfid: &str,
        external_userid: &str,
        time_ms: Millis,
        _new_session: bool,
    ) {
        let day = self.day(open_kfid, time_ms);
        day.customer_msg_cnt += 1;
        if !day.customers.contains(external_userid) {
            day.customers.insert(external_userid.to_string());
        }
    }

    /// A session assigned to a servicer or, with `None`, to the bot / API.
    pub fn session_assigned(&mut self, open_kfid: &str, servicer: Option<&str>, now: Millis) {
        let day = self.day(open_kfid, now);
        day.session_cnt += 1;
        match servicer {
            Some(s) => *day.servicer_sessions.entry(s.to_string()).or_default() += 1,
            None => day.ai_session_reply_cnt += 1,
        }
    }

    /// `statistic_list` for the days `[start, end]` (day starts, inclusive).
    pub fn list(
        &self,
        open_kfid: &str,
        servicer: Option<&str>,
        start: i64,
        end: i64,
        per_servicer: bool,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        let mut day = start;
        while day <= end {
            let mut item = json!({"stat_time": day});
            if let Some(d) = self.days.get(&(open_kfid.to_string(), day)) {
                let sessions = match servicer {
                    Some(s) => d.servicer_sessions.get(s).copied().unwrap_or(0),
                    None => d.session_cnt,
                };
                item["statistic"] = if per_servicer {
                    json!({
                        "session_cnt": sessions,
                        "customer_cnt": d.customers.len(),
                        "customer_msg_cnt": d.customer_msg_cnt,
                        "upgrade_service_customer_cnt": 0,
                        "upgrade_service_member_invite_cnt": 0,
                        "upgrade_service_member_customer_cnt": 0,
                        "upgrade_service_groupchat_invite_cnt": 0,
                        "upgrade_service_groupchat_customer_cnt": 0,
                        "satisfaction_investgate_cnt": 0,
                        "msg_rejected_customer_cnt": 0,
                    })
                } else {
                    json!({
                        "session_cnt": sessions,
                        "customer_cnt": d.customers.len(),
                        "customer_msg_cnt": d.customer_msg_cnt,
                        "upgrade_service_customer_cnt": 0,
                        "ai_session_reply_cnt": d.ai_session_reply_cnt,
                        "ai_transfer_rate": 0.0,
                        "msg_rejected_customer_cnt": 0,
                    })
                };
            }
            out.push(item);
            day += DAY_SECS;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_start_at_midnight_china_time() {
        // 2023-11-14 22:13:20 UTC = 2023-11-15 06:13:20 China; that day starts 2023-11-14 16:00 UTC.
        assert_eq!(day_start(1_700_000_000), 1_699_977_600);
        assert_eq!(day_start(1_699_977_600), 1_699_977_600);
    }

    #[test]
    fn days_without_data_have_no_statistic() {
        let mut s = Stats::default();
        s.customer_message("wkA", "wmC", 1_700_000_000_000, true);
        let list = s.list("wkA", None, 1_699_977_600 - DAY_SECS, 1_699_977_600, false);
        assert!(list[0].get("statistic").is_none());
        assert_eq!(list[1]["statistic"]["customer_msg_cnt"], 1);
    }
}
