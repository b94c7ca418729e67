//! Campaigns: content that goes live at an exact instant and stops at another, for chosen
//! segments and channels, evaluated against the host clock on every request.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A campaign as a tenant defines it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    /// Stable identifier, used in analytics events.
    pub id: String,
    /// Human-readable name.
    #[serde(default)]
    pub name: String,
    /// First instant the campaign is live (RFC 3339, inclusive).
    pub start: Timestamp,
    /// Instant the campaign stops (RFC 3339, exclusive).
    pub end: Timestamp,
    /// Higher wins when several campaigns compete for one slot.
    #[serde(default)]
    pub priority: i32,
    /// Segments targeted; empty targets everyone.
    #[serde(default)]
    pub segments: Vec<String>,
    /// Channels (`web`, `app`, `kiosk`, ...); empty means all.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Free-form parameters handed to plugins (banner text, colours, links).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// What the campaign cost (in its goals' currency), for the report's return on investment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Impressions one visitor may get per UTC day; past it the campaign is not live for them
    /// until the next day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_cap: Option<u32>,
    /// Days after an impression within which a conversion counts for the campaign (default 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution_days: Option<u32>,
    /// Share of eligible visitors (0 to 0.5) who are not shown the campaign, as its control
    /// group: the report then compares those shown with those held out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<f64>,
    /// Tags its messages carry for the tenant's frequency caps (`promo/flash` counts toward
    /// a cap on `promo`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Whether the tenant's caps may hold its messages back (default true; false for, say,
    /// a service notice that must always go out).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub frequency_capping: bool,
    /// Whether sending one of its messages counts toward the caps (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub counts_toward_caps: bool,
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_true(b: &bool) -> bool {
    *b
}

impl Campaign {
    /// The experiment key under which a holdout campaign's groups are recorded (variation 0:
    /// held out, 1: shown).
    pub fn holdout_key(&self) -> String {
        format!("campaign:{}", self.id)
    }

    /// Whether `visitor` is in the campaign's holdout (hashed, so the same visitor is always
    /// in the same group).
    pub fn holds_out(&self, visitor: &str) -> bool {
        self.holdout.is_some_and(|share| {
            crate::hash::hash(&self.holdout_key(), visitor, 2).is_some_and(|b| b < share)
        })
    }

    /// The attribution window, in days.
    pub fn attribution_window_days(&self) -> u32 {
        self.attribution_days.unwrap_or(7)
    }
}

impl Campaign {
    /// Whether the campaign is live at `now` for a visitor in `in_segment` on `channel`.
    pub fn is_active(
        &self,
        now: Timestamp,
        channel: &str,
        in_segment: impl Fn(&str) -> bool,
    ) -> bool {
        self.start <= now
            && now < self.end
            && (self.channels.is_empty() || self.channels.iter().any(|c| c == channel))
            && (self.segments.is_empty() || self.segments.iter().any(|s| in_segment(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xmas() -> Campaign {
        Campaign {
            id: "xmas".into(),
            name: "Christmas".into(),
            start: "2026-12-01T00:00:00Z".parse().unwrap_or_default(),
            end: "2026-12-27T00:00:00Z".parse().unwrap_or_default(),
            priority: 10,
            segments: vec!["returning".into()],
            channels: vec!["web".into()],
            params: BTreeMap::new(),
            cost: None,
            frequency_cap: None,
            attribution_days: None,
            holdout: None,
            tags: Vec::new(),
            frequency_capping: true,
            counts_toward_caps: true,
        }
    }

    #[test]
    fn live_exactly_between_start_and_end() {
        let c = xmas();
        let at = |s: &str| s.parse::<Timestamp>().unwrap_or_default();
        assert!(!c.is_active(at("2026-11-30T23:59:59Z"), "web", |_| true));
        assert!(c.is_active(at("2026-12-01T00:00:00Z"), "web", |_| true));
        assert!(c.is_active(at("2026-12-26T23:59:59.999Z"), "web", |_| true));
        assert!(!c.is_active(at("2026-12-27T00:00:00Z"), "web", |_| true));
    }

    #[test]
    fn targets_segments_and_channels() {
        let c = xmas();
        let now = "2026-12-10T12:00:00+01:00".parse().unwrap_or_default();
        assert!(!c.is_active(now, "web", |s| s == "new"));
        assert!(!c.is_active(now, "kiosk", |_| true));
        assert!(c.is_active(now, "web", |s| s == "returning"));
    }
}
