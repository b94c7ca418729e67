//! Frequency caps across channels: how many messages one recipient may be sent per channel
//! (or on any channel), per tag, per window. Rules have Braze's shape and are AND-ed: a
//! message is capped when any rule that applies to it is full; the first such rule (in
//! definition order) is named as the reason.
//!
//! The crate does no I/O: [`CapRule::window`] says which past sends count, the host's send
//! ledger counts them.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan as _, Zoned};
use serde::{Deserialize, Serialize};

/// At most this many rules per tenant.
pub const MAX_RULES: usize = 10;

/// The channels a message goes out on (`web` is never capped).
pub const CHANNELS: [&str; 5] = ["email", "push", "app", "kiosk", "voice"];

/// One cap rule.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CapRule {
    /// Named in the reason of a capped message (`cap:ID`).
    pub id: String,
    /// `email`, `push`, `app`, `kiosk`, `voice`, or `any` (every channel together).
    pub channel: String,
    /// Only messages carrying this tag (or one nested under it: `promo/flash` is `promo`);
    /// none: every message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Messages allowed in the window.
    pub max: u32,
    /// The window's length.
    pub per: Per,
    /// `calendar` (whole local days, Monday-based weeks, months) or `rolling` (the last
    /// `count` × `unit` before the send).
    pub window: Window,
}

/// A window's length: `count` × `unit`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Per {
    /// How many units (at least 1).
    pub count: u32,
    /// The unit.
    pub unit: Unit,
}

/// Units of [`Per`].
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// 60 seconds.
    Minute,
    /// 60 minutes.
    Hour,
    /// A day (calendar: local midnight to midnight).
    Day,
    /// A week (calendar: from Monday).
    Week,
    /// A month (calendar only: from the 1st; rolling months are not a fixed length).
    Month,
}

/// How a window is placed.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    /// Aligned to the recipient's calendar.
    Calendar,
    /// Ending at the send.
    Rolling,
}

/// Whether tag `have` counts toward a rule on `rule_tag`: the same tag, or one nested under it.
pub fn tag_within(have: &str, rule_tag: &str) -> bool {
    have == rule_tag
        || have
            .strip_prefix(rule_tag)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl CapRule {
    /// Checks the rule; what is wrong with it, if anything.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.id.is_empty() {
            out.push("id is empty".into());
        }
        if self.channel != "any" && !CHANNELS.contains(&self.channel.as_str()) {
            out.push(format!(
                "channel {:?}: expected one of email, push, app, kiosk, voice or any",
                self.channel
            ));
        }
        if self.tag.as_deref().is_some_and(|t| {
            t.is_empty() || t.starts_with('/') || t.ends_with('/') || t.contains("//")
        }) {
            out.push("tag: expected a name like \"promo\" or \"promo/flash\"".into());
        }
        if self.max == 0 {
            out.push("max must be at least 1 (a channel that must get nothing: leave it out of the campaign)".into());
        }
        if self.per.count == 0 {
            out.push("per.count must be at least 1".into());
        }
        if self.window == Window::Rolling && self.per.unit == Unit::Month {
            out.push(
                "a rolling window cannot be in months (they differ in length): use days".into(),
            );
        }
        out
    }

    /// Whether the rule governs a message on `channel` carrying `tags` (the same test says
    /// which past sends count against it: a send counts once for its channel and once for
    /// `any`).
    pub fn applies(&self, channel: &str, tags: &[String]) -> bool {
        (self.channel == "any" || self.channel == channel)
            && self
                .tag
                .as_deref()
                .is_none_or(|t| tags.iter().any(|have| tag_within(have, t)))
    }

    /// The instants `[from, until)` within which earlier sends count, for a send at `at` to a
    /// recipient in `tz`.
    pub fn window(&self, at: Timestamp, tz: &TimeZone) -> (Timestamp, Timestamp) {
        let n = i64::from(self.per.count);
        match self.window {
            Window::Rolling => {
                let secs = match self.per.unit {
                    Unit::Minute => 60,
                    Unit::Hour => 3_600,
                    Unit::Day => 86_400,
                    Unit::Week | Unit::Month => 7 * 86_400,
                };
                let from = at
                    .checked_sub(SignedDuration::from_secs(secs * n))
                    .unwrap_or(Timestamp::MIN);
                // Strictly after `from`: a send exactly one window ago no longer counts.
                let from = from
                    .checked_add(SignedDuration::from_nanos(1))
                    .unwrap_or(from);
                let until = at
                    .checked_add(SignedDuration::from_nanos(1))
                    .unwrap_or(Timestamp::MAX);
                (from, until)
            }
            Window::Calendar => {
                let local = at.to_zoned(tz.clone());
                let start = calendar_start(&local, self.per.unit);
                // The current unit and the `count - 1` before it.
                let from = step(&start, self.per.unit, -(n - 1));
                let until = step(&start, self.per.unit, 1);
                (from, until)
            }
        }
    }
}

/// The start of the calendar unit holding `local`.
fn calendar_start(local: &Zoned, unit: Unit) -> Zoned {
    let date = local.date();
    let civil = match unit {
        Unit::Minute => {
            let t = local.time();
            DateTime::from_parts(date, Time::constant(t.hour(), t.minute(), 0, 0))
        }
        Unit::Hour => DateTime::from_parts(date, Time::constant(local.time().hour(), 0, 0, 0)),
        Unit::Day => date.to_datetime(Time::midnight()),
        Unit::Week => {
            let back = i64::from(date.weekday().to_monday_zero_offset());
            date.checked_sub(back.days())
                .unwrap_or(date)
                .to_datetime(Time::midnight())
        }
        Unit::Month => Date::new(date.year(), date.month(), 1)
            .unwrap_or(date)
            .to_datetime(Time::midnight()),
    };
    civil
        .to_zoned(local.time_zone().clone())
        .unwrap_or_else(|_| local.clone())
}

/// `start` moved by `n` units, as an instant (in local time, so a day across a DST change is
/// still one calendar day).
fn step(start: &Zoned, unit: Unit, n: i64) -> Timestamp {
    let span = match unit {
        Unit::Minute => n.minutes(),
        Unit::Hour => n.hours(),
        Unit::Day => n.days(),
        Unit::Week => n.weeks(),
        Unit::Month => n.months(),
    };
    start
        .checked_add(span)
        .map(|z| z.timestamp())
        .unwrap_or(if n < 0 {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        channel: &str,
        tag: Option<&str>,
        max: u32,
        count: u32,
        unit: Unit,
        window: Window,
    ) -> CapRule {
        CapRule {
            id: "r".into(),
            channel: channel.into(),
            tag: tag.map(str::to_owned),
            max,
            per: Per { count, unit },
            window,
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap_or_default()
    }

    #[test]
    fn tags_nest_by_slash() {
        assert!(tag_within("promo/flash", "promo"));
        assert!(tag_within("promo", "promo"));
        assert!(!tag_within("promotion", "promo"));
        assert!(!tag_within("promo", "promo/flash"));
        let r = rule("any", Some("promo"), 1, 1, Unit::Day, Window::Calendar);
        assert!(r.applies("push", &["promo/flash".into()]));
        assert!(!r.applies("push", &["news".into()]));
        let p = rule("push", None, 1, 1, Unit::Day, Window::Calendar);
        assert!(p.applies("push", &[]));
        assert!(!p.applies("email", &[]));
    }

    #[test]
    fn calendar_day_is_local_midnight_to_midnight() {
        let oslo = TimeZone::get("Europe/Oslo").unwrap_or(TimeZone::UTC);
        let r = rule("any", None, 1, 1, Unit::Day, Window::Calendar);
        // 23:00 local on 1 December is 22:00 UTC.
        let (from, until) = r.window(at("2026-12-01T22:00:00Z"), &oslo);
        assert_eq!(from, at("2026-11-30T23:00:00Z"));
        assert_eq!(until, at("2026-12-01T23:00:00Z"));
        // An hour later it is the next local day: a fresh window.
        let (from, _) = r.window(at("2026-12-01T23:00:00Z"), &oslo);
        assert_eq!(from, at("2026-12-01T23:00:00Z"));
    }

    #[test]
    fn calendar_weeks_start_on_monday() {
        let r = rule("push", None, 2, 1, Unit::Week, Window::Calendar);
        // Thursday 10 December 2026.
        let (from, until) = r.window(at("2026-12-10T12:00:00Z"), &TimeZone::UTC);
        assert_eq!(from, at("2026-12-07T00:00:00Z"));
        assert_eq!(until, at("2026-12-14T00:00:00Z"));
        let two = rule("push", None, 2, 2, Unit::Week, Window::Calendar);
        assert_eq!(
            two.window(at("2026-12-10T12:00:00Z"), &TimeZone::UTC).0,
            at("2026-11-30T00:00:00Z")
        );
    }

    #[test]
    fn rolling_windows_end_at_the_send() {
        let r = rule("any", None, 1, 1, Unit::Day, Window::Rolling);
        let (from, until) = r.window(at("2026-12-02T00:00:00Z"), &TimeZone::UTC);
        assert!(from > at("2026-12-01T00:00:00Z"));
        assert!(from <= at("2026-12-01T00:00:00.000000001Z"));
        assert!(until > at("2026-12-02T00:00:00Z"));
    }

    #[test]
    fn months_and_bad_rules() {
        let r = rule("email", None, 4, 1, Unit::Month, Window::Calendar);
        let (from, until) = r.window(at("2027-02-15T08:00:00Z"), &TimeZone::UTC);
        assert_eq!(
            (from, until),
            (at("2027-02-01T00:00:00Z"), at("2027-03-01T00:00:00Z"))
        );
        assert!(
            !rule("sms", None, 1, 1, Unit::Day, Window::Calendar)
                .problems()
                .is_empty()
        );
        assert!(
            !rule("any", None, 0, 1, Unit::Day, Window::Calendar)
                .problems()
                .is_empty()
        );
        assert!(
            !rule("any", None, 1, 1, Unit::Month, Window::Rolling)
                .problems()
                .is_empty()
        );
        assert!(
            rule(
                "any",
                Some("promo/flash"),
                1,
                1,
                Unit::Day,
                Window::Calendar
            )
            .problems()
            .is_empty()
        );
    }
}
