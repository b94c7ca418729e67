//! The send ledger: every message `veneer render` dispatched (recipient, channel, tags,
//! instant, send id), kept in `data_dir/sends.db` so frequency caps across channels hold
//! across runs with different `--at`. Without a data_dir it lives in memory for one run.
//!
//! A cap check and the record that follows it are made for one recipient at a time by one
//! worker (`veneer render` partitions recipients by id), so counts are exact at any `--jobs`.

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use anyhow::Context as _;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use rusqlite::{Connection, params};
use veneer_rules::CapRule;

/// One dispatch, as counted against caps.
#[derive(Debug, Clone)]
pub struct Send<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The recipient's id.
    pub recipient: &'a str,
    /// `email`, `push`, `app`, `kiosk` or `voice`.
    pub channel: &'a str,
    /// The tags of the campaigns in the message that count toward caps.
    pub tags: &'a [String],
    /// When it is sent.
    pub at: Timestamp,
    /// The send: on one channel, a send id is one message per recipient (a re-run, or the
    /// recipient twice in one file, neither counts twice nor caps itself).
    pub send_id: &'a str,
}

/// The ledger.
pub struct Sends {
    conn: Mutex<Connection>,
}

impl Sends {
    /// Opens (or creates) `dir/sends.db`; `None`: a ledger in memory.
    pub fn open(dir: Option<&Path>) -> anyhow::Result<Sends> {
        let conn = match dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let path = dir.join("sends.db");
                let conn = Connection::open(&path)
                    .with_context(|| format!("opening the send ledger {}", path.display()))?;
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn
            }
            None => Connection::open_in_memory()?,
        };
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS sends (
                tenant TEXT NOT NULL,
                recipient TEXT NOT NULL,
                channel TEXT NOT NULL,
                tags TEXT NOT NULL,
                at_ms INTEGER NOT NULL,
                send_id TEXT NOT NULL,
                PRIMARY KEY (tenant, recipient, channel, send_id)
            );
            CREATE INDEX IF NOT EXISTS sends_by_recipient ON sends (tenant, recipient, at_ms);",
        )
        .context("creating the send ledger's table")?;
        Ok(Sends {
            conn: Mutex::new(conn),
        })
    }

    /// The first of `rules` that is already full for `send` (its id), or `None` when the
    /// message may go. `tz` places calendar windows.
    pub fn capped(
        &self,
        send: &Send<'_>,
        rules: &[CapRule],
        tz: &TimeZone,
    ) -> anyhow::Result<Option<String>> {
        let governing: Vec<(&CapRule, (Timestamp, Timestamp))> = rules
            .iter()
            .filter(|r| r.applies(send.channel, send.tags))
            .map(|r| (r, r.window(send.at, tz)))
            .collect();
        let Some(from) = governing.iter().map(|(_, (f, _))| *f).min() else {
            return Ok(None);
        };
        let until = governing
            .iter()
            .map(|(_, (_, u))| *u)
            .max()
            .unwrap_or(send.at);
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let mut stmt = conn.prepare_cached(
            "SELECT channel, tags, at_ms FROM sends
             WHERE tenant = ?1 AND recipient = ?2 AND at_ms >= ?3 AND at_ms < ?4
               AND NOT (send_id = ?5 AND channel = ?6)",
        )?;
        let past = stmt
            .query_map(
                params![
                    send.tenant,
                    send.recipient,
                    ceil_ms(from),
                    ceil_ms(until),
                    send.send_id,
                    send.channel
                ],
                |row| {
                    let tags: String = row.get(1)?;
                    Ok((
                        row.get::<_, String>(0)?,
                        tags.split('\n')
                            .filter(|t| !t.is_empty())
                            .map(str::to_owned)
                            .collect::<Vec<_>>(),
                        row.get::<_, i64>(2)?,
                    ))
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        for (rule, (from, until)) in governing {
            // Sends are kept to the millisecond: a window starting a nanosecond after one
            // starts at the next millisecond.
            let (from, until) = (ceil_ms(from), ceil_ms(until));
            let n = past
                .iter()
                .filter(|(channel, tags, at)| {
                    *at >= from && *at < until && rule.applies(channel, tags)
                })
                .count();
            if n >= usize::try_from(rule.max).unwrap_or(usize::MAX) {
                return Ok(Some(rule.id.clone()));
            }
        }
        Ok(None)
    }

    /// Records a dispatch (once per recipient, channel and send id).
    pub fn record(&self, send: &Send<'_>) -> anyhow::Result<()> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.prepare_cached(
            "INSERT OR IGNORE INTO sends (tenant, recipient, channel, tags, at_ms, send_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            send.tenant,
            send.recipient,
            send.channel,
            send.tags.join("\n"),
            send.at.as_millisecond(),
            send.send_id
        ])?;
        Ok(())
    }
}

/// Whether `channel` is one messages go out on.
pub fn channel_known(channel: &str) -> bool {
    veneer_rules::caps::CHANNELS.contains(&channel)
}

/// A stable hash of a recipient id (FNV-1a), to give each recipient one worker.
pub fn partition(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Milliseconds, rounded up (a window ending a nanosecond after a send includes that send's
/// millisecond).
fn ceil_ms(t: Timestamp) -> i64 {
    let ms = t.as_millisecond();
    if Timestamp::from_millisecond(ms).is_ok_and(|back| back < t) {
        ms.saturating_add(1)
    } else {
        ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> Vec<CapRule> {
        serde_json::from_str(json).unwrap_or_default()
    }

    fn send<'a>(channel: &'a str, tags: &'a [String], at: &str, id: &'a str) -> Send<'a> {
        Send {
            tenant: "shop",
            recipient: "r1",
            channel,
            tags,
            at: at.parse().unwrap_or_default(),
            send_id: id,
        }
    }

    #[test]
    fn two_push_a_week_caps_the_third() -> anyhow::Result<()> {
        let sends = Sends::open(None)?;
        let caps = rules(
            r#"[{"id":"push-week","channel":"push","max":2,"per":{"count":1,"unit":"week"},"window":"calendar"}]"#,
        );
        let none: Vec<String> = Vec::new();
        // Monday 7 and Wednesday 9 December 2026, then Thursday 10.
        for (at, id) in [
            ("2026-12-07T09:00:00Z", "mon"),
            ("2026-12-09T09:00:00Z", "wed"),
        ] {
            let s = send("push", &none, at, id);
            assert_eq!(sends.capped(&s, &caps, &TimeZone::UTC)?, None);
            sends.record(&s)?;
        }
        let thu = send("push", &none, "2026-12-10T09:00:00Z", "thu");
        assert_eq!(
            sends.capped(&thu, &caps, &TimeZone::UTC)?,
            Some("push-week".into())
        );
        // An e-mail is not a push; next Monday is a new week; re-running Wednesday's send
        // does not count it twice.
        assert_eq!(
            sends.capped(
                &send("email", &none, "2026-12-10T09:00:00Z", "e"),
                &caps,
                &TimeZone::UTC
            )?,
            None
        );
        assert_eq!(
            sends.capped(
                &send("push", &none, "2026-12-14T00:00:00Z", "next"),
                &caps,
                &TimeZone::UTC
            )?,
            None
        );
        assert_eq!(
            sends.capped(
                &send("push", &none, "2026-12-09T10:00:00Z", "wed"),
                &caps,
                &TimeZone::UTC
            )?,
            None
        );
        Ok(())
    }

    #[test]
    fn tags_nest_and_any_counts_every_channel() -> anyhow::Result<()> {
        let sends = Sends::open(None)?;
        let caps = rules(
            r#"[{"id":"promo-day","channel":"any","tag":"promo","max":1,"per":{"count":1,"unit":"day"},"window":"rolling"}]"#,
        );
        let flash = vec!["promo/flash".to_owned()];
        let news = vec!["news".to_owned()];
        sends.record(&send("email", &flash, "2026-12-07T09:00:00Z", "a"))?;
        let push = send("push", &flash, "2026-12-07T20:00:00Z", "b");
        assert_eq!(
            sends.capped(&push, &caps, &TimeZone::UTC)?,
            Some("promo-day".into())
        );
        let other = send("push", &news, "2026-12-07T20:00:00Z", "c");
        assert_eq!(sends.capped(&other, &caps, &TimeZone::UTC)?, None);
        // Exactly a day later the first send has left the rolling window.
        let later = send("push", &flash, "2026-12-08T09:00:00Z", "d");
        assert_eq!(sends.capped(&later, &caps, &TimeZone::UTC)?, None);
        Ok(())
    }
}
