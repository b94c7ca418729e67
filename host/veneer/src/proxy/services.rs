//! What the host provides to the plugins of one request (see [`HostServices`]): fragments,
//! analytics, campaigns and experiment assignments for this visitor at this instant.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use jiff::Timestamp;
use veneer_rules::SegmentSet;
use veneer_rules::experiment::{Context as RunContext, StickyDocs};

use crate::analytics::Event;
use crate::app::Tenant;
use crate::plugin::{Assignment, Campaign, Consent, HostServices, Transition};

/// Per-request host services handed to the plugins (see [`HostServices`]).
pub(super) struct Services {
    pub(super) tenant: Arc<Tenant>,
    pub(super) app_analytics: crate::analytics::Analytics,
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    pub(super) request_id: String,
    pub(super) visitor_id: String,
    pub(super) path: String,
    pub(super) url: String,
    pub(super) locale: Option<String>,
    pub(super) consent: Consent,
    pub(super) attributes: Arc<serde_json::Value>,
    pub(super) segments: SegmentSet,
    pub(super) now: Timestamp,
    pub(super) campaigns: OnceLock<Vec<Arc<Campaign>>>,
    /// Campaign ids whose impression was recorded in this request (one event each).
    pub(super) impressions: Mutex<Vec<String>>,
    pub(super) sticky: Mutex<StickyDocs>,
    /// Where exposures go for reports.
    pub(super) ledger: Option<Arc<crate::ledger::Ledger>>,
    /// A preview: forced variations, and nothing recorded.
    pub(super) preview: Option<Arc<crate::preview::Preview>>,
    /// The channel campaigns are matched against (see `[[tenant.channel_rule]]`).
    pub(super) channel: String,
    /// Today's impressions of capped campaigns (written back to the cookie).
    pub(super) caps: Mutex<std::collections::BTreeMap<String, (u32, u32)>>,
    /// The experiments the plugins asked about, with the answer each got: asked again in the
    /// same request (by another plugin, or a kept answer's re-check), an experiment answers the
    /// same and is not exposed twice. A message's render reports them.
    pub(super) assigned: Mutex<Vec<Assignment>>,
}

impl Services {
    /// Whether nothing is recorded for this request: it is a preview, not a visit.
    pub(super) fn quiet(&self) -> bool {
        self.preview.as_ref().is_some_and(|p| !p.record)
    }

    /// Records a conversion for `goal`: a `conversion` event and a ledger row, which reports
    /// attribute to every experiment variation the visitor was exposed to before it. With
    /// `once_within`, a repeat within that time is not another conversion. `false` when the
    /// ledger could not take it (its queue is full).
    pub(super) fn converted(
        &self,
        goal: &crate::config::Goal,
        value: f64,
        currency: Option<String>,
        once_within: Option<std::time::Duration>,
    ) -> bool {
        if !self.consent.analytics || self.quiet() {
            return true;
        }
        let mut properties = vec![
            ("goal".to_owned(), goal.name.clone()),
            ("value".to_owned(), value.to_string()),
        ];
        if let Some(c) = &currency {
            properties.push(("currency".to_owned(), c.clone()));
        }
        self.track("veneer", "conversion", properties);
        if let Some(ledger) = &self.ledger {
            return ledger.conversion(crate::ledger::Conversion {
                tenant: self.tenant.config.name.clone(),
                goal: goal.name.clone(),
                visitor: self.visitor_id.clone(),
                at_us: self.now.as_microsecond(),
                value,
                currency,
                bot: self.is_bot(),
                once_within_us: once_within
                    .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            });
        }
        true
    }

    /// Whether the visitor's device class is `bot` (kept in the ledger, left out of reports).
    pub(super) fn is_bot(&self) -> bool {
        self.attributes.get("device").and_then(|d| d.as_str()) == Some("bot")
    }

    /// Records a first exposure: an `experiment_exposure` event and a ledger row.
    fn exposed(&self, experiment: &str, variation: usize, key: &str) {
        if !self.consent.analytics || self.quiet() {
            return;
        }
        self.track(
            "veneer",
            "experiment_exposure",
            vec![
                ("experiment".to_owned(), experiment.to_owned()),
                ("variation".to_owned(), variation.to_string()),
                ("key".to_owned(), key.to_owned()),
            ],
        );
        self.record_exposure(experiment, variation);
    }

    /// The ledger row of an exposure (the ledger keeps the first per visitor and key).
    fn record_exposure(&self, experiment: &str, variation: usize) {
        if !self.consent.analytics || self.quiet() {
            return;
        }
        if let Some(ledger) = &self.ledger {
            let names = self.tenant.rules.segment_names();
            ledger.exposure(crate::ledger::Exposure {
                tenant: self.tenant.config.name.clone(),
                experiment: experiment.to_owned(),
                variation: u32::try_from(variation).unwrap_or(u32::MAX),
                visitor: self.visitor_id.clone(),
                at_us: self.now.as_microsecond(),
                segments: (0..names.len())
                    .filter(|i| self.segments.contains(*i))
                    .map(|i| names[i].clone())
                    .collect(),
                bot: self.is_bot(),
            });
        }
    }
}

impl HostServices for Services {
    fn fragment(&self, key: &str) -> Option<String> {
        self.tenant.fragments.get(key, self.locale.as_deref())
    }

    fn track(&self, plugin: &str, name: &str, properties: Vec<(String, String)>) {
        if self.quiet() {
            self.metrics.inc(
                "veneer_analytics_events_total",
                &[("outcome", "left_out_preview")],
            );
            return;
        }
        if !self.consent.analytics {
            self.metrics.inc(
                "veneer_analytics_events_total",
                &[("outcome", "dropped_no_consent")],
            );
            return;
        }
        self.app_analytics.record(Event {
            ts: self.now.to_string(),
            tenant: self.tenant.config.name.clone(),
            visitor: self.visitor_id.clone(),
            request_id: self.request_id.clone(),
            path: self.path.clone(),
            plugin: plugin.to_owned(),
            event: name.chars().take(128).collect(),
            properties: properties
                .into_iter()
                .take(32)
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
        });
    }

    fn active_campaigns(&self) -> &[Arc<Campaign>] {
        self.campaigns.get_or_init(|| {
            let t = &self.tenant;
            let today = crate::visitor::day_number(self.now.as_second());
            let caps = self.caps.lock().unwrap_or_else(PoisonError::into_inner);
            t.rules
                .active_campaigns(self.now, &self.channel, &self.segments)
                .into_iter()
                .filter(|c| {
                    c.frequency_cap.is_none_or(|cap| {
                        caps.get(&c.id)
                            .is_none_or(|(day, seen)| *day != today || *seen < cap)
                    })
                })
                .filter(|c| {
                    // A holdout campaign: every eligible visitor is recorded in its group (the
                    // first time, like an experiment exposure), and the held-out ones do not
                    // see it.
                    if c.holdout.is_none() {
                        return true;
                    }
                    let held_out = c.holds_out(&self.visitor_id);
                    self.record_exposure(&c.holdout_key(), usize::from(!held_out));
                    !held_out
                })
                .map(|c| {
                    Arc::new(Campaign {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        priority: c.priority,
                        starts_at: c.start.as_second(),
                        ends_at: c.end.as_second(),
                        params: c
                            .params
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    })
                })
                .collect()
        })
    }

    fn impression(&self, plugin: &str, campaign_id: &str) {
        let Some(campaign) = self.active_campaigns().iter().find(|c| c.id == campaign_id) else {
            // Counted, not logged: a plugin could call this in a loop with any id.
            self.metrics.inc(
                "veneer_campaign_impressions_ignored_total",
                &[("tenant", &self.tenant.config.name), ("plugin", plugin)],
            );
            return;
        };
        {
            let mut seen = self
                .impressions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if seen.iter().any(|id| id == campaign_id) {
                return;
            }
            seen.push(campaign_id.to_owned());
        }
        if self.quiet() {
            return;
        }
        {
            let today = crate::visitor::day_number(self.now.as_second());
            let mut caps = self.caps.lock().unwrap_or_else(PoisonError::into_inner);
            let capped = self
                .tenant
                .rules
                .campaigns()
                .iter()
                .any(|c| c.id == campaign_id && c.frequency_cap.is_some());
            if capped {
                let entry = caps.entry(campaign_id.to_owned()).or_insert((today, 0));
                if entry.0 != today {
                    *entry = (today, 0);
                }
                entry.1 = entry.1.saturating_add(1);
            }
        }
        let properties = vec![
            ("campaign".to_owned(), campaign.id.clone()),
            ("name".to_owned(), campaign.name.clone()),
            ("channel".to_owned(), self.channel.clone()),
        ];
        self.track(plugin, "campaign_impression", properties);
        if self.consent.analytics
            && let Some(ledger) = &self.ledger
        {
            ledger.impression(crate::ledger::Impression {
                tenant: self.tenant.config.name.clone(),
                campaign: campaign_id.to_owned(),
                visitor: self.visitor_id.clone(),
                at_us: self.now.as_microsecond(),
                channel: self.channel.clone(),
                bot: self.is_bot(),
            });
        }
    }

    fn now_ms(&self) -> i64 {
        self.now.as_millisecond()
    }

    fn assign(&self, experiment: &str) -> Option<Assignment> {
        let exp = self.tenant.rules.experiment(experiment)?;
        // Held for the whole question, so an experiment is run (and exposed) once a request.
        let mut assigned = self.assigned.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(a) = assigned.iter().find(|a| a.experiment == experiment) {
            return Some(a.clone());
        }
        let mut sticky = self.sticky.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ctx = RunContext::new(self.attributes.as_ref());
        ctx.url = Some(&self.url);
        ctx.saved_groups = Some(self.tenant.rules.saved_groups());
        let forced: Option<std::collections::HashMap<String, i64>> = self
            .preview
            .as_ref()
            .map(|p| p.variations.iter().map(|(k, v)| (k.clone(), *v)).collect());
        ctx.forced_variations = forced.as_ref();
        // A preview neither reads nor writes the visitor's sticky assignments.
        let mut scratch = StickyDocs::new();
        ctx.sticky = Some(if self.quiet() {
            &mut scratch
        } else {
            &mut sticky
        });
        let a = exp.run(&mut ctx);
        drop(sticky);
        // A first exposure: hashed into the experiment now, not read back from the cookie
        // (and not forced by a QA query string).
        if a.in_experiment && a.hash_used && !a.sticky_bucket_used {
            self.exposed(experiment, a.variation_id, &a.key);
        }
        let answer = Assignment {
            experiment: experiment.to_owned(),
            variation: u32::try_from(a.variation_id).unwrap_or(0),
            key: a.key,
            value: a.value.to_string(),
            in_experiment: a.in_experiment,
        };
        assigned.push(answer.clone());
        Some(answer)
    }

    fn request_id(&self) -> &str {
        &self.request_id
    }

    fn left_out(&self, plugin: &str, events: u32, log_lines: u32) {
        let tenant = self.tenant.config.name.as_str();
        for (what, n) in [("events", events), ("log_lines", log_lines)] {
            if n > 0 {
                self.metrics.add(
                    "veneer_plugin_left_out_total",
                    &[("tenant", tenant), ("plugin", plugin), ("what", what)],
                    u64::from(n),
                );
            }
        }
        // One line per request would be a flood of its own: a few a second, the metric counts.
        static LOG: std::sync::LazyLock<crate::limits::LogBudget> =
            std::sync::LazyLock::new(|| crate::limits::LogBudget::new(5));
        let (log, skipped) = LOG.admit();
        if let Some(n) = skipped {
            tracing::info!(
                skipped = n,
                "more plugins went over their allowance than logged (see veneer_plugin_left_out_total)"
            );
        }
        if log {
            tracing::warn!(
                tenant,
                plugin,
                request_id = %self.request_id,
                events,
                log_lines,
                "plugin went over its per-request allowance of events or log lines: the rest were left out"
            );
        }
    }

    fn breaker_changed(&self, plugin: &str, transition: Transition) {
        let tenant = self.tenant.config.name.as_str();
        let open = transition == Transition::Opened;
        if open {
            tracing::warn!(
                tenant,
                plugin,
                "plugin keeps faulting: skipping it for its cool-down (circuit breaker open)"
            );
            self.metrics.inc(
                "veneer_plugin_breaker_trips_total",
                &[("tenant", tenant), ("plugin", plugin)],
            );
        } else {
            tracing::info!(tenant, plugin, "plugin recovered: circuit breaker closed");
        }
        self.metrics.set(
            "veneer_plugin_breaker_open",
            &[("tenant", tenant), ("plugin", plugin)],
            u64::from(open),
        );
    }

    fn tenant(&self) -> &str {
        &self.tenant.config.name
    }

    fn attributes(&self) -> Option<&serde_json::Value> {
        Some(&self.attributes)
    }
}
