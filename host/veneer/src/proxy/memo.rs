//! The memo of deterministic plugins: a plugin that declares itself deterministic
//! (`export_plugin!(P, deterministic)`, a `veneer:traits` custom section) promises that its
//! hooks' answers depend only on the request's method, host and URL, the visitor's segments,
//! device class, locale and consents, the response's status and content type, and what it
//! reads through the host: content fragments, live campaigns and experiment assignments. The
//! host then keeps its answers (request header edits and response plans) and serves them again
//! without instantiating or calling the plugin, for every visitor with the same inputs.
//!
//! What the plugin read through the host is recorded with what it got, and read again on
//! every recall: a fragment edited, a campaign that started or ended, or a visitor assigned
//! another variation makes the answer not apply (so the key holds "variations and live
//! campaigns" without the host guessing which the plugin will ask about). What it did through
//! the host (events, impressions) is recorded too and done again on each recall, for each
//! visitor, as the plugin would have. The host does not take the promise on trust where it can
//! see otherwise: a contract 0.2 plugin that reads any other input (the visitor's id, country,
//! visit count, referrer, UTM parameters or attributes, a request header, a response header
//! but the content type, the clock (the host's or WASI's), WASI's random numbers or the visitor's
//! profile) is not memoized for that request.

use std::sync::{Arc, Mutex, PoisonError};

use crate::plugin::{
    Assignment, Campaign, HeaderEdits, HostServices, RequestHead, ResponseHead, Transition, Visitor,
};
use crate::rewrite::CheckedPlan;

/// Response signatures kept per memoized request (an origin answers one URL one way, or a few).
const RESPONSES_PER_VARIANT: usize = 4;
/// Variants kept per key: visitors with the same key who got different answers through the
/// host (another variation, say).
const VARIANTS_PER_KEY: usize = 16;

/// One deterministic plugin's memo, in a tenant (rebuilt with the tenant).
pub struct Memo {
    entries: quick_cache::sync::Cache<Box<[u8]>, Arc<[Arc<Variant>]>>,
}

/// What the plugin read through the host, and what it got.
#[derive(Debug, Clone, PartialEq)]
enum Read {
    Fragment(String, Option<String>),
    Campaigns(Vec<String>),
    Assign(String, Option<(u32, String, String, bool)>),
}

/// What the plugin did through the host, done again on each recall.
#[derive(Debug, Clone)]
enum Effect {
    Track(String, String, Vec<(String, String)>),
    Impression(String, String),
}

/// One hook's reads and effects.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    reads: Vec<Read>,
    effects: Vec<Effect>,
}

/// One memoized `on-request` answer and the `on-response` answers that followed it.
pub struct Variant {
    request: Recorded,
    /// The request header edits the plugin asked for.
    pub edits: HeaderEdits,
    responses: Mutex<Vec<Arc<ResponseMemo>>>,
}

struct ResponseMemo {
    signature: Signature,
    recorded: Recorded,
    plan: CheckedPlan,
}

/// Where a kept plan is, to forget it if applying it to a body faults (over the output
/// budget, say): it is not served again, so the plugin runs for the next such request.
pub struct KeptPlan {
    variant: Arc<Variant>,
    response: Arc<ResponseMemo>,
}

impl KeptPlan {
    fn new(variant: &Arc<Variant>, response: &Arc<ResponseMemo>) -> Self {
        Self {
            variant: variant.clone(),
            response: response.clone(),
        }
    }

    /// Forgets the plan (the rest of its variant stays kept); whether it was still kept
    /// (another request that applied the same plan may have forgotten it first).
    pub fn forget(&self) -> bool {
        let mut responses = self
            .variant
            .responses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = responses.len();
        responses.retain(|r| !Arc::ptr_eq(r, &self.response));
        responses.len() < before
    }
}

impl ResponseMemo {
    fn new(signature: Signature, recorded: Recorded, plan: CheckedPlan) -> Arc<Self> {
        Arc::new(Self {
            signature,
            recorded,
            plan,
        })
    }
}

/// What of the origin's response a deterministic plugin may depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    status: u16,
    content_type: Option<String>,
}

impl Signature {
    /// The signature of `head`.
    pub fn of(head: &ResponseHead) -> Signature {
        Signature {
            status: head.status,
            content_type: crate::plugin::model::header(&head.headers, "content-type")
                .map(str::to_owned),
        }
    }
}

impl Memo {
    /// A memo holding answers for up to `entries` keys.
    pub fn new(entries: usize) -> Memo {
        Memo {
            entries: quick_cache::sync::Cache::new(entries.max(1)),
        }
    }

    /// The key of a request: every input of the promise that the hooks get as arguments.
    /// Fields are separated by `0xff`, which no UTF-8 text holds, so none can pass for two.
    pub fn key(request: &RequestHead, visitor: &Visitor) -> Box<[u8]> {
        let mut key = Vec::with_capacity(64 + request.path.len() + request.host.len());
        let mut field = |bytes: &[u8]| {
            key.extend_from_slice(bytes);
            key.push(0xff);
        };
        field(request.method.as_bytes());
        field(request.host.as_bytes());
        field(request.path.as_bytes());
        for s in &visitor.segments {
            field(s.as_bytes());
        }
        field(b"");
        // A locale of "" (a message's recipient may have one) is not the absence of one.
        field(&[u8::from(visitor.locale.is_some())]);
        field(visitor.locale.as_deref().unwrap_or("").as_bytes());
        let c = visitor.consent;
        field(&[
            visitor.device as u8,
            u8::from(c.analytics),
            u8::from(c.personalization),
            u8::from(c.marketing),
        ]);
        key.into_boxed_slice()
    }

    /// The answer to `on-request` kept under `key` whose reads give the same answers now
    /// through `services` (which then also gets the answer's effects), if any.
    pub fn recall(&self, key: &[u8], services: &dyn HostServices) -> Option<Arc<Variant>> {
        let variants = self.entries.get(key)?;
        let found = variants
            .iter()
            .find(|v| still_reads(&v.request.reads, services))?
            .clone();
        replay(&found.request.effects, services);
        Some(found)
    }

    /// The plan kept after `variant` for a response like `head`, whose reads still give the
    /// same answers (its effects are then done through `services`), and where it is kept.
    pub fn recall_response(
        variant: &Arc<Variant>,
        signature: &Signature,
        services: &dyn HostServices,
    ) -> Option<(CheckedPlan, KeptPlan)> {
        let responses = variant
            .responses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let found = responses
            .iter()
            .find(|r| &r.signature == signature && still_reads(&r.recorded.reads, services))?;
        replay(&found.recorded.effects, services);
        Some((found.plan.clone(), KeptPlan::new(variant, found)))
    }

    /// Keeps a whole answer: `on-request`'s edits and `on-response`'s plan; returns where the
    /// plan is kept.
    pub fn keep(
        &self,
        key: Box<[u8]>,
        request: Recorded,
        edits: HeaderEdits,
        signature: Signature,
        response: Recorded,
        plan: CheckedPlan,
    ) -> KeptPlan {
        let memo = ResponseMemo::new(signature, response, plan);
        let mut variants: Vec<Arc<Variant>> = self
            .entries
            .get(&key)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default();
        // Another visitor's run may have kept the same variant meanwhile.
        if let Some(same) = variants.iter().find(|v| v.request.reads == request.reads) {
            return Self::keep_response_in(same, memo);
        }
        if variants.len() >= VARIANTS_PER_KEY {
            variants.remove(0);
        }
        let variant = Arc::new(Variant {
            request,
            edits,
            responses: Mutex::new(vec![memo.clone()]),
        });
        variants.push(variant.clone());
        self.entries.insert(key, variants.into());
        KeptPlan::new(&variant, &memo)
    }

    /// Keeps a plan for another kind of response after a recalled `on-request` answer;
    /// returns where it is kept.
    pub fn keep_response(
        variant: &Arc<Variant>,
        signature: Signature,
        response: Recorded,
        plan: CheckedPlan,
    ) -> KeptPlan {
        Self::keep_response_in(variant, ResponseMemo::new(signature, response, plan))
    }

    fn keep_response_in(variant: &Arc<Variant>, memo: Arc<ResponseMemo>) -> KeptPlan {
        let mut responses = variant
            .responses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        responses
            .retain(|r| r.signature != memo.signature || r.recorded.reads != memo.recorded.reads);
        if responses.len() >= RESPONSES_PER_VARIANT {
            responses.remove(0);
        }
        responses.push(memo.clone());
        KeptPlan::new(variant, &memo)
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether every read in `reads` gives the same answer now. Reads are made in the plugin's
/// order and stop at the first that differs: the plugin would have made each of them (its
/// next read depends only on the answers before it), so an assignment made here is one the
/// plugin would have made.
fn still_reads(reads: &[Read], services: &dyn HostServices) -> bool {
    reads.iter().all(|read| match read {
        Read::Fragment(key, value) => services.fragment(key) == *value,
        Read::Campaigns(ids) => {
            let live = services.active_campaigns();
            live.len() == ids.len() && live.iter().zip(ids).all(|(c, id)| c.id == *id)
        }
        Read::Assign(experiment, got) => services.assign(experiment).map(assignment_key) == *got,
    })
}

fn replay(effects: &[Effect], services: &dyn HostServices) {
    for effect in effects {
        match effect {
            Effect::Track(plugin, name, properties) => {
                services.track(plugin, name, properties.clone())
            }
            Effect::Impression(plugin, campaign) => services.impression(plugin, campaign),
        }
    }
}

fn assignment_key(a: Assignment) -> (u32, String, String, bool) {
    (a.variation, a.key, a.value, a.in_experiment)
}

/// Host services that pass every call on and note what a deterministic plugin read and did
/// (see [`Memo`]).
pub struct Recorder {
    inner: Arc<dyn HostServices>,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    now: Recorded,
    /// Read something outside the promise: this request's answers are not kept.
    unkeyed: bool,
    /// Effects are not passed on (they were done already, by a recall).
    silent: bool,
}

impl Recorder {
    /// A recorder passing calls on to `inner`; a `silent` one does not pass effects on.
    pub fn new(inner: Arc<dyn HostServices>, silent: bool) -> Recorder {
        Recorder {
            inner,
            log: Mutex::new(Log {
                silent,
                ..Log::default()
            }),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What was recorded since the last call (the hook just run), and from now on effects
    /// are passed on; `None` once the plugin read something outside its promise.
    pub fn take(&self) -> Option<Recorded> {
        let mut log = self.log();
        log.silent = false;
        let taken = std::mem::take(&mut log.now);
        (!log.unkeyed).then_some(taken)
    }
}

impl HostServices for Recorder {
    fn fragment(&self, key: &str) -> Option<String> {
        let value = self.inner.fragment(key);
        self.log()
            .now
            .reads
            .push(Read::Fragment(key.to_owned(), value.clone()));
        value
    }

    fn track(&self, plugin: &str, name: &str, properties: Vec<(String, String)>) {
        let mut log = self.log();
        log.now.effects.push(Effect::Track(
            plugin.to_owned(),
            name.to_owned(),
            properties.clone(),
        ));
        if !log.silent {
            drop(log);
            self.inner.track(plugin, name, properties);
        }
    }

    fn active_campaigns(&self) -> &[Arc<Campaign>] {
        let live = self.inner.active_campaigns();
        self.log()
            .now
            .reads
            .push(Read::Campaigns(live.iter().map(|c| c.id.clone()).collect()));
        live
    }

    fn assign(&self, experiment: &str) -> Option<Assignment> {
        let got = self.inner.assign(experiment);
        self.log().now.reads.push(Read::Assign(
            experiment.to_owned(),
            got.clone().map(assignment_key),
        ));
        got
    }

    fn breaker_changed(&self, plugin: &str, transition: Transition) {
        self.inner.breaker_changed(plugin, transition);
    }

    fn left_out(&self, plugin: &str, events: u32, log_lines: u32) {
        self.inner.left_out(plugin, events, log_lines);
    }

    fn impression(&self, plugin: &str, campaign_id: &str) {
        let mut log = self.log();
        log.now.effects.push(Effect::Impression(
            plugin.to_owned(),
            campaign_id.to_owned(),
        ));
        if !log.silent {
            drop(log);
            self.inner.impression(plugin, campaign_id);
        }
    }

    fn now_ms(&self) -> i64 {
        self.log().unkeyed = true;
        self.inner.now_ms()
    }

    fn request_id(&self) -> &str {
        self.inner.request_id()
    }

    fn tenant(&self) -> &str {
        self.inner.tenant()
    }

    fn attributes(&self) -> Option<&serde_json::Value> {
        self.log().unkeyed = true;
        self.inner.attributes()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::plugin::{Consent, DeviceClass, ResponsePlan};

    /// Host services whose answers a test sets, noting what was done through them.
    #[derive(Default)]
    struct Fake {
        fragment: Mutex<Option<String>>,
        campaigns: Vec<Arc<Campaign>>,
        variation: Mutex<u32>,
        done: Mutex<Vec<String>>,
    }

    impl HostServices for Fake {
        fn fragment(&self, _key: &str) -> Option<String> {
            self.fragment.lock().expect("lock").clone()
        }
        fn track(&self, plugin: &str, name: &str, _properties: Vec<(String, String)>) {
            self.done
                .lock()
                .expect("lock")
                .push(format!("track {plugin} {name}"));
        }
        fn active_campaigns(&self) -> &[Arc<Campaign>] {
            &self.campaigns
        }
        fn assign(&self, experiment: &str) -> Option<Assignment> {
            let variation = *self.variation.lock().expect("lock");
            Some(Assignment {
                experiment: experiment.to_owned(),
                variation,
                key: variation.to_string(),
                value: "\"v\"".into(),
                in_experiment: true,
            })
        }
        fn breaker_changed(&self, _plugin: &str, _transition: Transition) {}
        fn impression(&self, plugin: &str, campaign_id: &str) {
            self.done
                .lock()
                .expect("lock")
                .push(format!("impression {plugin} {campaign_id}"));
        }
        fn now_ms(&self) -> i64 {
            0
        }
        fn request_id(&self) -> &str {
            "r"
        }
        fn tenant(&self) -> &str {
            "t"
        }
    }

    fn visitor(segments: &[&str], device: DeviceClass, locale: &str) -> Visitor {
        Visitor {
            id: "v".into(),
            segments: segments.iter().map(|s| (*s).to_owned()).collect(),
            device,
            country: None,
            locale: Some(locale.into()),
            visit_count: 1,
            first_seen: 0,
            utm: vec![],
            referrer: None,
            consent: Consent {
                analytics: true,
                personalization: true,
                marketing: true,
            },
            attributes: Arc::new(serde_json::json!({})),
        }
    }

    fn request(path: &str) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            path: path.into(),
            host: "shop.test".into(),
            headers: vec![("user-agent".into(), "x".into())],
        }
    }

    fn html() -> Signature {
        Signature::of(&ResponseHead {
            status: 200,
            headers: vec![("content-type".into(), "text/html".into())],
        })
    }

    fn plan() -> CheckedPlan {
        crate::rewrite::validate_plan(ResponsePlan::default()).expect("valid")
    }

    /// Runs a "plugin" through a recorder: reads a fragment and an assignment, tracks an event.
    fn run(memo: &Memo, key: Box<[u8]>, host: &Arc<Fake>) {
        let recorder = Recorder::new(host.clone(), false);
        recorder.assign("headline");
        let request = recorder.take().expect("kept");
        recorder.fragment("hero");
        recorder.track("p", "viewed", vec![]);
        let response = recorder.take().expect("kept");
        memo.keep(
            key,
            request,
            HeaderEdits::default(),
            html(),
            response,
            plan(),
        );
    }

    #[test]
    fn keys_differ_by_every_promised_input_and_nothing_else() {
        let base = Memo::key(
            &request("/"),
            &visitor(&["new"], DeviceClass::Desktop, "en"),
        );
        for other in [
            Memo::key(
                &request("/?a"),
                &visitor(&["new"], DeviceClass::Desktop, "en"),
            ),
            Memo::key(
                &request("/"),
                &visitor(&["returning"], DeviceClass::Desktop, "en"),
            ),
            Memo::key(
                &request("/"),
                &visitor(&["new", "x"], DeviceClass::Desktop, "en"),
            ),
            Memo::key(&request("/"), &visitor(&["new"], DeviceClass::Mobile, "en")),
            Memo::key(
                &request("/"),
                &visitor(&["new"], DeviceClass::Desktop, "nb"),
            ),
        ] {
            assert_ne!(base, other);
        }
        // Segment names cannot run into the fields after them.
        assert_ne!(
            Memo::key(
                &request("/"),
                &visitor(&["a", "b"], DeviceClass::Desktop, "")
            ),
            Memo::key(&request("/"), &visitor(&["a"], DeviceClass::Desktop, "b")),
        );
        let mut other_visitor = visitor(&["new"], DeviceClass::Desktop, "en");
        other_visitor.id = "someone else".into();
        other_visitor.visit_count = 9;
        let mut other_request = request("/");
        other_request.headers.clear();
        assert_eq!(base, Memo::key(&other_request, &other_visitor));
    }

    #[test]
    fn a_kept_answer_is_served_only_while_its_reads_answer_the_same_and_its_effects_are_redone() {
        let memo = Memo::new(16);
        let host = Arc::new(Fake {
            fragment: Mutex::new(Some("<b>hi</b>".into())),
            ..Fake::default()
        });
        let key = Memo::key(&request("/"), &visitor(&[], DeviceClass::Desktop, "en"));
        run(&memo, key.clone(), &host);
        assert_eq!(
            host.done.lock().expect("lock").as_slice(),
            ["track p viewed"]
        );

        let variant = memo.recall(&key, &*host).expect("kept");
        assert!(Memo::recall_response(&variant, &html(), &*host).is_some());
        assert_eq!(host.done.lock().expect("lock").len(), 2, "the event again");
        let json = Signature::of(&ResponseHead {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
        });
        assert!(Memo::recall_response(&variant, &json, &*host).is_none());

        // An edited fragment: the response's answer no longer applies.
        *host.fragment.lock().expect("lock") = Some("<b>hello</b>".into());
        assert!(Memo::recall_response(&variant, &html(), &*host).is_none());
        // Another variation: not even the request's.
        *host.variation.lock().expect("lock") = 1;
        assert!(memo.recall(&key, &*host).is_none());
        // Its own answer, beside the first.
        run(&memo, key.clone(), &host);
        assert!(memo.recall(&key, &*host).is_some());
        *host.variation.lock().expect("lock") = 0;
        assert!(memo.recall(&key, &*host).is_some());
        assert_eq!(memo.len(), 1);
    }

    #[test]
    fn a_forgotten_plan_is_not_recalled_but_its_request_answer_stays() {
        let memo = Memo::new(16);
        let host = Arc::new(Fake::default());
        let key = Memo::key(&request("/"), &visitor(&[], DeviceClass::Desktop, "en"));
        run(&memo, key.clone(), &host);
        let variant = memo.recall(&key, &*host).expect("kept");
        let (_, place) = Memo::recall_response(&variant, &html(), &*host).expect("kept plan");
        assert!(place.forget());
        assert!(!place.forget(), "forgotten once");
        assert!(Memo::recall_response(&variant, &html(), &*host).is_none());
        assert!(
            memo.recall(&key, &*host).is_some(),
            "on-request's answer stays"
        );
    }

    #[test]
    fn reading_the_clock_or_the_profile_keeps_nothing_and_a_silent_recorder_does_nothing() {
        let host = Arc::new(Fake::default());
        let recorder = Recorder::new(host.clone(), false);
        recorder.now_ms();
        assert!(recorder.take().is_none());
        let recorder = Recorder::new(host.clone(), false);
        let _ = recorder.attributes();
        assert!(recorder.take().is_none());

        let silent = Recorder::new(host.clone(), true);
        silent.track("p", "viewed", vec![]);
        silent.impression("p", "sale");
        assert!(host.done.lock().expect("lock").is_empty());
        assert_eq!(silent.take().expect("kept").effects.len(), 2);
        silent.impression("p", "sale");
        assert_eq!(
            host.done.lock().expect("lock").as_slice(),
            ["impression p sale"]
        );
    }
}
