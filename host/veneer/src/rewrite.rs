//! Body transformation: content codings, streaming HTML rewriting with lol-html, JSON patches.
//!
//! An HTML body flows `decode → rewrite → encode` one origin chunk at a time, so the first
//! bytes reach the visitor before the origin has finished sending. Declarative rules from the
//! plugins' plans become native lol-html handlers; only subscribed selectors call back into a
//! plugin. A plugin whose callback faults mid-stream is cut off for the rest of the body (its
//! later rules and callbacks are skipped) while the page keeps streaming: bytes already sent
//! cannot be recalled, so the document stays well-formed and the fault is reported.

use std::borrow::Cow;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use lol_html::html_content::ContentType;
use lol_html::send::Element;
use lol_html::send::{ElementContentHandlers, HtmlRewriter, Settings};
use lol_html::{AsciiCompatibleEncoding, MemorySettings, OutputSink, Selector};

use crate::charset::{self, Charset};
use crate::plugin::budget::op_bytes;
use crate::plugin::{
    Budget, ElementView, HtmlOp, HtmlRule, Instance, JsonOp, PluginFault, ResponsePlan,
    RuleOptions, Subscription,
};

/// A content coding Veneer can decode and produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// No coding.
    Identity,
    /// gzip.
    Gzip,
    /// Brotli.
    Brotli,
}

impl Coding {
    /// The coding named by a Content-Encoding header; `None` for one Veneer cannot decode.
    pub fn from_content_encoding(value: Option<&str>) -> Option<Coding> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Some(Coding::Identity),
            Some("gzip") | Some("x-gzip") => Some(Coding::Gzip),
            Some("br") => Some(Coding::Brotli),
            Some(_) => None,
        }
    }

    /// The Content-Encoding header value, if any.
    pub fn header(self) -> Option<&'static str> {
        match self {
            Coding::Identity => None,
            Coding::Gzip => Some("gzip"),
            Coding::Brotli => Some("br"),
        }
    }

    /// The best coding a client accepts (Accept-Encoding): br, then gzip, then identity.
    pub fn negotiate(accept_encoding: Option<&str>) -> Coding {
        if Coding::Brotli.accepted_by(accept_encoding) {
            Coding::Brotli
        } else if Coding::Gzip.accepted_by(accept_encoding) {
            Coding::Gzip
        } else {
            Coding::Identity
        }
    }

    /// Whether a client's Accept-Encoding takes this coding (identity always).
    pub fn accepted_by(self, accept_encoding: Option<&str>) -> bool {
        let Some(name) = self.header() else {
            return true;
        };
        accept_encoding.is_some_and(|h| {
            h.split(',').any(|part| {
                let mut it = part.split(';');
                let coding = it.next().unwrap_or("").trim();
                let q = it
                    .find_map(|p| p.trim().strip_prefix("q="))
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                (coding.eq_ignore_ascii_case(name) || coding == "*") && q > 0.0
            })
        })
    }
}

/// Streaming decoder for one body.
pub enum Decoder {
    /// Pass-through.
    Identity(Vec<u8>),
    /// gzip.
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    /// Brotli.
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
}

impl Decoder {
    /// A decoder for `coding`.
    pub fn new(coding: Coding) -> Self {
        match coding {
            Coding::Identity => Decoder::Identity(Vec::new()),
            Coding::Gzip => Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
            Coding::Brotli => Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(
                Vec::new(),
                16 << 10,
            ))),
        }
    }

    /// Decodes `input`, returning what is decoded so far.
    pub fn push(&mut self, input: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Decoder::Identity(_) => Ok(input.to_vec()),
            Decoder::Gzip(d) => {
                d.write_all(input)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Brotli(d) => {
                d.write_all(input)?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }

    /// Finishes decoding; fails on a truncated stream.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Decoder::Identity(_) => Ok(Vec::new()),
            Decoder::Gzip(d) => d.finish(),
            Decoder::Brotli(mut d) => {
                d.close()?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }
}

/// Streaming encoder for one body.
pub enum Encoder {
    /// Pass-through.
    Identity(Vec<u8>),
    /// gzip.
    Gzip(Box<flate2::write::GzEncoder<Vec<u8>>>),
    /// Brotli.
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl Encoder {
    /// An encoder producing `coding`. Levels favour speed: this runs on every response.
    pub fn new(coding: Coding) -> Self {
        match coding {
            Coding::Identity => Encoder::Identity(Vec::new()),
            Coding::Gzip => Encoder::Gzip(Box::new(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(5),
            ))),
            Coding::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 << 10,
                4,
                22,
            ))),
        }
    }

    /// Encodes `data` and flushes, returning the bytes ready to send.
    pub fn push(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Identity(_) => Ok(data.to_vec()),
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
            Encoder::Brotli(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }

    /// Finishes the stream.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Identity(_) => Ok(Vec::new()),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Brotli(e) => Ok(e.into_inner()),
        }
    }
}

/// One plugin's live instance, shared by the handlers that call back into it.
pub struct PluginHandle {
    /// The plugin's name.
    pub name: Arc<str>,
    /// Its instance for this request; `None` for a plan kept from an earlier request (a
    /// deterministic plugin's: such a plan has no callbacks and records no events).
    pub instance: Mutex<Option<Instance>>,
    /// Set once it faulted: its remaining rules and callbacks are skipped.
    pub faulted: std::sync::atomic::AtomicBool,
    /// What it may ask of the host.
    pub budget: Budget,
    /// Bytes its rules and callbacks inserted into this body so far.
    pub inserted: AtomicU64,
}

impl PluginHandle {
    /// The handle of `instance`, a live instance of plugin `name`, held to `budget`.
    pub fn new(name: Arc<str>, instance: Option<Instance>, budget: Budget) -> PluginHandle {
        PluginHandle {
            name,
            instance: Mutex::new(instance),
            faulted: AtomicBool::new(false),
            budget,
            inserted: AtomicU64::new(0),
        }
    }

    /// Charges `bytes` of inserted content against the plugin's output allowance for `input`
    /// bytes of body so far; `false` (and nothing charged) when it would go over.
    fn charge_output(&self, bytes: usize, input: &AtomicU64) -> bool {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let allowance = self.budget.output_allowance(input.load(Ordering::Relaxed));
        let used = self.inserted.load(Ordering::Relaxed);
        if used.saturating_add(bytes) > allowance {
            return false;
        }
        self.inserted.store(used + bytes, Ordering::Relaxed);
        true
    }
}

fn output_fault(h: &PluginHandle, input: &AtomicU64) -> PluginFault {
    PluginFault::Budget(format!(
        "inserted more than {} bytes into a body of {} bytes so far (rewrite_max_growth {} × input + rewrite_extra_bytes {})",
        h.budget.output_allowance(input.load(Ordering::Relaxed)),
        input.load(Ordering::Relaxed),
        h.budget.max_growth,
        h.budget.extra_bytes
    ))
}

/// Told (once) that a body's charset cannot be rewritten, with its Content-Type.
pub type CharsetReporter = Box<dyn FnOnce(&str) + Send>;

/// Receives plugin faults that happen while the body streams.
pub type FaultReporter = Arc<dyn Fn(&str, &PluginFault) + Send + Sync>;

/// A plan that passed [`validate_plan`], with its selectors parsed once.
#[derive(Clone)]
pub struct CheckedPlan {
    /// Digest of what it does to an HTML body (see [`CheckedPlan::html_fingerprint`]).
    fingerprint: std::sync::OnceLock<[u8; 32]>,
    /// The plan as the plugin returned it.
    pub plan: ResponsePlan,
    /// Parsed selectors of `plan.html`, index for index.
    rule_selectors: Vec<Selector>,
    /// Parsed selectors of `plan.subscribe`, index for index.
    subscription_selectors: Vec<Selector>,
    /// Parsed fallback selectors, by rule index.
    fallback_selectors: std::collections::BTreeMap<usize, Selector>,
}

impl CheckedPlan {
    /// Whether the plan needs its plugin's instance while the body streams: element callbacks,
    /// or a rule that records an event when it applies. Such a plan can be neither kept for
    /// other visitors nor served from the output cache.
    pub fn needs_instance(&self) -> bool {
        !self.plan.subscribe.is_empty()
            || self
                .plan
                .rule_options
                .values()
                .any(|o| o.on_apply.is_some())
    }

    /// A digest of everything the plan does to an HTML body (its rules and their options),
    /// made once per plan: a kept plan (a deterministic plugin's) is served with it, so the
    /// output cache's key for it costs no formatting.
    pub fn html_fingerprint(&self) -> &[u8; 32] {
        self.fingerprint.get_or_init(|| {
            let mut digest = <sha2::Sha256 as sha2::Digest>::new();
            hash_field(&mut digest, format_args!("{:?}", self.plan.html));
            hash_field(&mut digest, format_args!("{:?}", self.plan.rule_options));
            sha2::Digest::finalize(digest).into()
        })
    }

    /// Whether the plan asks for any change to an HTML body.
    pub fn touches_html(&self) -> bool {
        !self.plan.html.is_empty() || !self.plan.subscribe.is_empty()
    }
}

/// Selectors parsed so far, by their text: a plugin asks for the same few selectors on every
/// request, and parsing one costs about a microsecond. Only valid ones of at most
/// [`PARSED_MAX_LEN`] bytes are kept (plugins choose the text: a long or per-visitor selector
/// is parsed each time instead of filling memory); the map is emptied when it reaches
/// [`PARSED_SELECTORS`].
static PARSED: std::sync::LazyLock<dashmap::DashMap<Box<str>, Selector>> =
    std::sync::LazyLock::new(dashmap::DashMap::new);
/// The most selectors [`PARSED`] holds.
const PARSED_SELECTORS: usize = 4_096;
/// The longest selector [`PARSED`] keeps.
const PARSED_MAX_LEN: usize = 256;
/// Selectors in [`PARSED`] (counted here: `DashMap::len` locks every shard).
static PARSED_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Parses a selector (or takes it from [`PARSED`]).
fn parse_selector(s: &str, kind: &str, index: usize) -> Result<Selector, PluginFault> {
    if s.len() > PARSED_MAX_LEN {
        return parse_selector_text(s, kind, index);
    }
    if let Some(parsed) = PARSED.get(s) {
        return Ok(parsed.clone());
    }
    let parsed = parse_selector_text(s, kind, index)?;
    if PARSED_COUNT.fetch_add(1, Ordering::Relaxed) >= PARSED_SELECTORS {
        PARSED.clear();
        PARSED_COUNT.store(1, Ordering::Relaxed);
    }
    PARSED.insert(s.into(), parsed.clone());
    Ok(parsed)
}

/// Parses a selector, strictly: the CSS parser closes an unclosed `[`, `(` or quote at the end
/// of its input, so `main[id=content` would quietly mean `main[id=content]`; a typo should be
/// an error that points at it.
fn parse_selector_text(s: &str, kind: &str, index: usize) -> Result<Selector, PluginFault> {
    let bad =
        |why: String| PluginFault::InvalidPlan(format!("{kind} {index}: selector {s:?}: {why}"));
    let mut open: Vec<(char, usize)> = Vec::new();
    let mut quote: Option<(char, usize)> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (_, '\\') => escaped = true,
            (Some((q, _)), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some((c, i)),
            (None, '[' | '(') => open.push((c, i)),
            (None, ']' | ')') => {
                let want = if c == ']' { '[' } else { '(' };
                match open.pop() {
                    Some((o, _)) if o == want => {}
                    _ => return Err(bad(format!("unmatched '{c}' at byte {i}"))),
                }
            }
            _ => {}
        }
    }
    if let Some((q, i)) = quote {
        return Err(bad(format!("unclosed {q} at byte {i} (`{}`)", &s[i..])));
    }
    if let Some((o, i)) = open.pop() {
        return Err(bad(format!("unclosed '{o}' at byte {i} (`{}`)", &s[i..])));
    }
    s.parse::<Selector>().map_err(|e| bad(e.to_string()))
}

/// Checks a plan against the host's rules: every selector parses, every attribute and header
/// name is valid. A plan that fails is the plugin's fault and is dropped whole.
pub fn validate_plan(plan: ResponsePlan) -> Result<CheckedPlan, PluginFault> {
    let rule_selectors = plan
        .html
        .iter()
        .enumerate()
        .map(|(i, r)| parse_selector(&r.selector, "rule", i))
        .collect::<Result<Vec<_>, _>>()?;
    let subscription_selectors = plan
        .subscribe
        .iter()
        .enumerate()
        .map(|(i, s)| parse_selector(&s.selector, "subscription", i))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(why) = &plan.misuse {
        return Err(PluginFault::InvalidPlan(why.clone()));
    }
    let mut fallback_selectors = std::collections::BTreeMap::new();
    for (&i, options) in &plan.rule_options {
        let Some(selector) = &options.fallback else {
            continue;
        };
        let Some(rule) = plan.html.get(i) else {
            continue;
        };
        if fallback_content(&rule.op).is_none() {
            return Err(PluginFault::InvalidPlan(format!(
                "rule {i}: fallback-append needs a rule that inserts HTML or text"
            )));
        }
        fallback_selectors.insert(i, parse_selector(selector, "fallback of rule", i)?);
    }
    for rule in &plan.html {
        let name = match &rule.op {
            HtmlOp::SetAttribute((n, _)) | HtmlOp::RemoveAttribute(n) => n,
            _ => continue,
        };
        let valid = !name.is_empty()
            && !name
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '>' | '/' | '=' | '<'));
        if !valid {
            return Err(PluginFault::InvalidPlan(format!("attribute name {name:?}")));
        }
    }
    for (name, value) in &plan.headers.set {
        if http::HeaderName::try_from(name.as_str()).is_err()
            || http::HeaderValue::try_from(value.as_str()).is_err()
        {
            return Err(PluginFault::InvalidPlan(format!("header {name:?}")));
        }
    }
    Ok(CheckedPlan {
        fingerprint: std::sync::OnceLock::new(),
        plan,
        rule_selectors,
        subscription_selectors,
        fallback_selectors,
    })
}

/// What a rule inserts, for its fallback place: the HTML or text, and which it is.
fn fallback_content(op: &HtmlOp) -> Option<(&str, ContentType)> {
    match op {
        HtmlOp::SetInnerHtml(h)
        | HtmlOp::PrependHtml(h)
        | HtmlOp::AppendHtml(h)
        | HtmlOp::BeforeHtml(h)
        | HtmlOp::AfterHtml(h)
        | HtmlOp::ReplaceHtml(h) => Some((h, ContentType::Html)),
        HtmlOp::SetInnerText(t) => Some((t, ContentType::Text)),
        _ => None,
    }
}

/// Where a placed rule stands in one body.
#[derive(Default)]
struct Placement {
    /// It has applied at least once (at its target or its fallback).
    applied: AtomicBool,
    /// It applies nowhere else (first-only and applied, or its fallback was used).
    done: AtomicBool,
    /// The first element matching its fallback selector has been seen.
    fallback_seen: AtomicBool,
}

/// Records a placed rule's event the first time it applies, at its `target` or its `fallback`.
fn applied_event(
    h: &PluginHandle,
    on_apply: Option<&(String, Vec<(String, String)>)>,
    selector: &str,
    placement: &str,
) {
    if let Some((name, properties)) = on_apply {
        let mut properties = properties.clone();
        properties.push(("selector".to_owned(), selector.to_owned()));
        properties.push(("placement".to_owned(), placement.to_owned()));
        if let Some(instance) = &*h.instance.lock().unwrap_or_else(PoisonError::into_inner) {
            instance.track_applied(name, properties);
        }
    }
}

/// One entry of a plan's rules as handlers are made: consecutive plain rules on one selector
/// share a handler; a rule with options stands alone.
enum RuleGroup {
    Plain(String, Selector, Vec<HtmlOp>),
    Placed {
        selector: String,
        parsed: Selector,
        op: HtmlOp,
        options: RuleOptions,
        fallback: Option<Selector>,
    },
}

/// Feeds `field` to `digest` as it is formatted (no string is built on the request's path),
/// followed by its length: read from the end, the lengths mark every boundary, so no name or
/// text can pass for one.
pub fn hash_field(digest: &mut sha2::Sha256, field: std::fmt::Arguments<'_>) {
    struct Feed<'a> {
        digest: &'a mut sha2::Sha256,
        len: u64,
    }
    impl std::fmt::Write for Feed<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            sha2::Digest::update(self.digest, s.as_bytes());
            self.len += s.len() as u64;
            Ok(())
        }
    }
    let mut feed = Feed { digest, len: 0 };
    let _ = std::fmt::Write::write_fmt(&mut feed, field);
    let len = feed.len;
    sha2::Digest::update(digest, len.to_le_bytes());
}

#[cfg(test)]
mod selector_tests {
    use super::{parse_selector, validate_plan};
    use crate::plugin::{HtmlOp, HtmlRule, PluginFault, ResponsePlan, RuleOptions};

    fn plan_with(op: HtmlOp, options: RuleOptions) -> ResponsePlan {
        let mut plan = ResponsePlan::default();
        plan.html.push(HtmlRule {
            selector: "#promo".into(),
            op,
        });
        plan.rule_options.insert(0, options);
        plan
    }

    #[test]
    fn rule_options_are_checked_with_the_plan() {
        let fallback = |f: &str| RuleOptions {
            fallback: Some(f.into()),
            ..RuleOptions::default()
        };
        let ok = plan_with(HtmlOp::BeforeHtml("<b>x</b>".into()), fallback("main"));
        assert!(validate_plan(ok).is_ok());
        let refuse = |plan: ResponsePlan, says: &str| match validate_plan(plan) {
            Err(PluginFault::InvalidPlan(why)) => assert!(why.contains(says), "{why}"),
            other => panic!("expected an invalid plan, got {:?}", other.map(|_| ())),
        };
        refuse(
            plan_with(HtmlOp::AddClass("x".into()), fallback("main")),
            "rule 0: fallback-append needs a rule that inserts HTML or text",
        );
        refuse(
            plan_with(HtmlOp::BeforeHtml("x".into()), fallback("main[id=x")),
            "fallback of rule 0: selector \"main[id=x\": unclosed '['",
        );
        let misuse = ResponsePlan {
            misuse: Some("first-only with no HTML rule before it".into()),
            ..ResponsePlan::default()
        };
        refuse(misuse, "first-only with no HTML rule before it");
    }

    #[test]
    fn a_typo_in_a_selector_is_an_error_that_points_at_it() {
        for (s, says) in [
            ("main[id=content", "unclosed '[' at byte 4 (`[id=content`)"),
            ("a[href='x]", "unclosed ' at byte 7"),
            ("div)", "unmatched ')' at byte 3"),
            ("p:nth-child(2", "unclosed '('"),
        ] {
            let e = parse_selector(s, "rule", 3).err().map(|e| e.to_string());
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains("rule 3") && e.contains(says)),
                "{s}: {e:?}"
            );
        }
        for ok in [
            "main[id=content]",
            "a[href='x]y']",
            r#"a[title="(]"]"#,
            "p:nth-child(2n+1) > a",
        ] {
            assert!(parse_selector(ok, "rule", 0).is_ok(), "{ok}");
        }
    }
}

/// What a plugin's `on-element` reads, straight from the rewriter's element.
impl ElementView for Element<'_, '_> {
    fn tag(&self) -> String {
        self.tag_name()
    }
    fn attribute(&self, name: &str) -> Option<String> {
        self.get_attribute(name)
    }
    fn attributes(&self) -> Vec<(String, String)> {
        Element::attributes(self)
            .iter()
            .map(|a| (a.name(), a.value()))
            .collect()
    }
}

fn set_class(el: &mut Element<'_, '_>, class: &str, add: bool) {
    // Runs for every matching element (each link a callback tags), so the common cases build
    // one string: an added class is appended to the attribute as written.
    let Some(current) = el.get_attribute("class") else {
        if add {
            // Names were validated; `class` is always a valid attribute name.
            let _ = el.set_attribute("class", class);
        }
        return;
    };
    let present = current.split_ascii_whitespace().any(|c| c == class);
    let value = match (add, present) {
        (true, false) => {
            let kept = current.trim_end_matches(|c: char| c.is_ascii_whitespace());
            if kept.is_empty() {
                class.to_owned()
            } else {
                format!("{kept} {class}")
            }
        }
        (false, true) => current
            .split_ascii_whitespace()
            .filter(|c| *c != class)
            .collect::<Vec<_>>()
            .join(" "),
        _ => return,
    };
    let _ = el.set_attribute("class", &value);
}

/// Applies one operation to an element.
pub fn apply_op(el: &mut Element<'_, '_>, op: &HtmlOp) {
    match op {
        HtmlOp::SetInnerHtml(s) => el.set_inner_content(s, ContentType::Html),
        HtmlOp::SetInnerText(s) => el.set_inner_content(s, ContentType::Text),
        HtmlOp::PrependHtml(s) => el.prepend(s, ContentType::Html),
        HtmlOp::AppendHtml(s) => el.append(s, ContentType::Html),
        HtmlOp::BeforeHtml(s) => el.before(s, ContentType::Html),
        HtmlOp::AfterHtml(s) => el.after(s, ContentType::Html),
        HtmlOp::ReplaceHtml(s) => el.replace(s, ContentType::Html),
        HtmlOp::Remove => el.remove(),
        HtmlOp::Unwrap => el.remove_and_keep_content(),
        HtmlOp::SetAttribute((n, v)) => {
            // An invalid name from a callback is skipped; plan rules were validated up front.
            let _ = el.set_attribute(n, v);
        }
        HtmlOp::RemoveAttribute(n) => el.remove_attribute(n),
        HtmlOp::AddClass(c) => set_class(el, c, true),
        HtmlOp::RemoveClass(c) => set_class(el, c, false),
    }
}

#[derive(Clone)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl OutputSink for SharedBuf {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(chunk);
    }
}

/// Errors that end a rewritten body early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The origin's compressed body is corrupt or truncated.
    #[error("decoding the origin body: {0}")]
    Decode(std::io::Error),
    /// Compressing for the client failed.
    #[error("encoding the response body: {0}")]
    Encode(std::io::Error),
    /// lol-html gave up (it bails out gracefully on memory limits, so this is rare).
    #[error("rewriting: {0}")]
    Rewrite(String),
}

/// The HTML pipeline for one response body.
pub struct HtmlBody {
    decoder: Decoder,
    stage: Stage,
    out: Arc<Mutex<Vec<u8>>>,
    encoder: Encoder,
    /// Decoded body bytes fed to the rewriter so far (the base of every output allowance).
    input: Arc<AtomicU64>,
    /// The plugins of this body, to stop them all at once.
    handles: Vec<Arc<PluginHandle>>,
    /// When every rule of the body applies to its first match only (and nothing subscribes to
    /// elements): how many have yet to be placed. At zero nothing later in the page can change,
    /// so the rest of it passes through without being parsed, as nginx's `sub_filter_once` does.
    left: Option<Arc<AtomicUsize>>,
}

/// Where the body is in its life.
enum Stage {
    /// Holding the first bytes back until the charset is known (a byte order mark needs 3,
    /// the `<meta>` prescan up to 1024 when the header declares none).
    Sniffing {
        job: Box<HtmlJob>,
        content_type: Option<String>,
        buffered: Vec<u8>,
        wanted: usize,
    },
    /// Rewriting in the body's encoding.
    Rewriting(Box<HtmlRewriter<'static, SharedBuf>>),
    /// A charset that cannot be rewritten safely, or every rule is done: the bytes go through
    /// untouched.
    Passthrough,
}

/// What rewriting one response needs: each plugin's handle and (validated) plan.
pub struct HtmlJob {
    /// Plugins with their plans, in chain order.
    pub plugins: Vec<(Arc<PluginHandle>, CheckedPlan)>,
    /// Where faults during streaming go.
    pub report: FaultReporter,
    /// Called once if the body's charset cannot be rewritten (it then passes through).
    pub on_unsupported_charset: Option<CharsetReporter>,
}

fn is_live(h: &PluginHandle) -> bool {
    !h.faulted.load(std::sync::atomic::Ordering::Relaxed)
}

fn fault(h: &PluginHandle, report: &FaultReporter, f: &PluginFault) {
    if !h.faulted.swap(true, std::sync::atomic::Ordering::Relaxed) {
        if let Some(instance) = &mut *h.instance.lock().unwrap_or_else(PoisonError::into_inner) {
            instance.mark_faulted();
        }
        report(&h.name, f);
    }
}

impl HtmlBody {
    /// Stops every plugin still running in this body (their remaining rules and callbacks
    /// are skipped, as after a fault); how many were stopped.
    pub fn stop_plugins(&self) -> usize {
        self.handles
            .iter()
            .filter(|h| !h.faulted.swap(true, std::sync::atomic::Ordering::Relaxed))
            .count()
    }

    /// Builds the pipeline for a body with this `Content-Type` (its `charset`, if any, is
    /// the first place the encoding is looked for).
    pub fn new(job: HtmlJob, from: Coding, to: Coding, content_type: Option<&str>) -> Self {
        let handles = job.plugins.iter().map(|(h, _)| h.clone()).collect();
        let declared = content_type.and_then(charset::from_content_type).is_some();
        HtmlBody {
            decoder: Decoder::new(from),
            stage: Stage::Sniffing {
                job: Box::new(job),
                content_type: content_type.map(str::to_owned),
                buffered: Vec::new(),
                wanted: if declared { 3 } else { charset::PRESCAN_BYTES },
            },
            out: Arc::new(Mutex::new(Vec::new())),
            encoder: Encoder::new(to),
            input: Arc::new(AtomicU64::new(0)),
            handles,
            left: None,
        }
    }

    /// Whether the body is still being parsed: `false` once every rule is done (or the charset
    /// passed through), when the rest streams through as it came.
    pub fn parsing(&self) -> bool {
        !matches!(self.stage, Stage::Passthrough)
    }

    /// The rewriter for `job`'s plans, in `encoding`, and the count of rules left to place when
    /// every rule applies once (see [`HtmlBody::left`]).
    fn rewriter(
        job: HtmlJob,
        encoding: &'static encoding_rs::Encoding,
        input: &Arc<AtomicU64>,
        out: &Arc<Mutex<Vec<u8>>>,
    ) -> (HtmlRewriter<'static, SharedBuf>, Option<Arc<AtomicUsize>>) {
        let encoding =
            AsciiCompatibleEncoding::new(encoding).unwrap_or_else(AsciiCompatibleEncoding::utf_8);
        let template_depth = Arc::new(AtomicU64::new(0));
        let mut settings = Settings::new_send()
            .with_encoding(encoding)
            .with_memory_settings(
                MemorySettings::new()
                    .with_graceful_bail_out_on_memory_limit_exceeded(true)
                    .with_max_allowed_memory_usage(16 << 20),
            );
        let left = Arc::new(AtomicUsize::new(0));
        let mut once_only = true;
        for (handle, checked) in job.plugins {
            let CheckedPlan {
                mut plan,
                rule_selectors,
                subscription_selectors,
                mut fallback_selectors,
                ..
            } = checked;
            once_only &= plan.subscribe.is_empty();
            // Consecutive plain rules on one selector share one handler: one selector match,
            // one closure.
            let mut groups: Vec<RuleGroup> = Vec::new();
            let rules = plan.html.into_iter().zip(rule_selectors).enumerate();
            for (i, (HtmlRule { selector, op }, parsed)) in rules {
                let options = plan.rule_options.remove(&i).unwrap_or_default();
                if !options.is_plain() {
                    groups.push(RuleGroup::Placed {
                        selector,
                        parsed,
                        op,
                        options,
                        fallback: fallback_selectors.remove(&i),
                    });
                    continue;
                }
                match groups.last_mut() {
                    Some(RuleGroup::Plain(s, _, ops)) if *s == selector => ops.push(op),
                    _ => groups.push(RuleGroup::Plain(selector, parsed, vec![op])),
                }
            }
            for group in groups {
                let (selector, parsed, op, options, fallback) = match group {
                    RuleGroup::Plain(_, parsed, ops) => {
                        once_only = false;
                        let (h, report, input) =
                            (handle.clone(), job.report.clone(), input.clone());
                        let depth = template_depth.clone();
                        let cost: usize = ops.iter().map(op_bytes).sum();
                        let handlers = ElementContentHandlers::default().element(
                            move |el: &mut Element<'_, '_>| {
                                if !is_live(&h) || depth.load(Ordering::Relaxed) > 0 {
                                    return Ok(());
                                }
                                if !h.charge_output(cost, &input) {
                                    fault(&h, &report, &output_fault(&h, &input));
                                    return Ok(());
                                }
                                for op in &ops {
                                    apply_op(el, op);
                                }
                                Ok(())
                            },
                        );
                        settings =
                            settings.append_element_content_handler((Cow::Owned(parsed), handlers));
                        continue;
                    }
                    RuleGroup::Placed {
                        selector,
                        parsed,
                        op,
                        options,
                        fallback,
                    } => (selector, parsed, op, options, fallback),
                };
                let state = Arc::new(Placement::default());
                let cost = op_bytes(&op);
                let content = fallback_content(&op).map(|(c, t)| (c.to_owned(), t));
                let on_apply = Arc::new(options.on_apply);
                let (h, report, body_in) = (handle.clone(), job.report.clone(), input.clone());
                let (depth, st, event, sel) = (
                    template_depth.clone(),
                    state.clone(),
                    on_apply.clone(),
                    selector.clone(),
                );
                let first_only = options.first_only;
                if first_only {
                    left.fetch_add(1, Ordering::Relaxed);
                } else {
                    once_only = false;
                }
                let placed = left.clone();
                let handlers =
                    ElementContentHandlers::default().element(move |el: &mut Element<'_, '_>| {
                        if !is_live(&h)
                            || depth.load(Ordering::Relaxed) > 0
                            || st.done.load(Ordering::Relaxed)
                        {
                            return Ok(());
                        }
                        if !h.charge_output(cost, &body_in) {
                            fault(&h, &report, &output_fault(&h, &body_in));
                            return Ok(());
                        }
                        apply_op(el, &op);
                        if first_only {
                            st.done.store(true, Ordering::Relaxed);
                            // Content rules (inner content, append, replace, remove, after)
                            // finish only at the end tag, so the rule counts as placed there.
                            match el.end_tag_handlers() {
                                Some(end) => {
                                    let placed = placed.clone();
                                    end.push(Box::new(move |_| {
                                        placed.fetch_sub(1, Ordering::Relaxed);
                                        Ok(())
                                    }));
                                }
                                None => {
                                    placed.fetch_sub(1, Ordering::Relaxed);
                                }
                            }
                        }
                        if !st.applied.swap(true, Ordering::Relaxed) {
                            applied_event(&h, event.as_ref().as_ref(), &sel, "target");
                        }
                        Ok(())
                    });
                settings = settings.append_element_content_handler((Cow::Owned(parsed), handlers));
                let (Some(fallback), Some(content)) = (fallback, content) else {
                    continue;
                };
                let (h, report, input) = (handle.clone(), job.report.clone(), input.clone());
                let depth = template_depth.clone();
                let handlers =
                    ElementContentHandlers::default().element(move |el: &mut Element<'_, '_>| {
                        if !is_live(&h)
                            || depth.load(Ordering::Relaxed) > 0
                            || state.fallback_seen.load(Ordering::Relaxed)
                        {
                            return Ok(());
                        }
                        let (h, report, input, state, event, selector, content) = (
                            h.clone(),
                            report.clone(),
                            input.clone(),
                            state.clone(),
                            on_apply.clone(),
                            selector.clone(),
                            content.clone(),
                        );
                        // Whether the rule found its target is known only once this element
                        // closes; an element without an end tag (a void one) has no fallback.
                        // A page that leaves out an optional end tag (`</body>`, `</li>`) never
                        // calls the handler either, so no fallback happens there.
                        if let Some(end_handlers) = el.end_tag_handlers() {
                            state.fallback_seen.store(true, Ordering::Relaxed);
                            end_handlers.push(Box::new(move |end| {
                                if state.applied.load(Ordering::Relaxed)
                                    || state.done.load(Ordering::Relaxed)
                                    || !is_live(&h)
                                {
                                    return Ok(());
                                }
                                if !h.charge_output(cost, &input) {
                                    fault(&h, &report, &output_fault(&h, &input));
                                    return Ok(());
                                }
                                end.before(&content.0, content.1);
                                state.applied.store(true, Ordering::Relaxed);
                                state.done.store(true, Ordering::Relaxed);
                                applied_event(&h, event.as_ref().as_ref(), &selector, "fallback");
                                Ok(())
                            }));
                        }
                        Ok(())
                    });
                settings =
                    settings.append_element_content_handler((Cow::Owned(fallback), handlers));
            }
            let subscriptions = plan.subscribe.into_iter().zip(subscription_selectors);
            for (index, (Subscription { text, .. }, parsed)) in subscriptions.enumerate() {
                let id = u32::try_from(index).unwrap_or(u32::MAX);
                let (h, report, input_el) = (handle.clone(), job.report.clone(), input.clone());
                let depth = template_depth.clone();
                let mut handlers =
                    ElementContentHandlers::default().element(move |el: &mut Element<'_, '_>| {
                        if !is_live(&h) || depth.load(Ordering::Relaxed) > 0 {
                            return Ok(());
                        }
                        let result =
                            match &mut *h.instance.lock().unwrap_or_else(PoisonError::into_inner) {
                                Some(instance) => instance.on_element(id, &*el),
                                None => Err(PluginFault::AlreadyFaulted),
                            };
                        let ops = result.and_then(|ops| {
                            h.budget.check_element_ops(&ops)?;
                            let cost = ops.iter().map(op_bytes).sum();
                            if h.charge_output(cost, &input_el) {
                                Ok(ops)
                            } else {
                                Err(output_fault(&h, &input_el))
                            }
                        });
                        match ops {
                            Ok(ops) => ops.iter().for_each(|op| apply_op(el, op)),
                            Err(f) => fault(&h, &report, &f),
                        }
                        Ok(())
                    });
                if text {
                    let (h, report, input) = (handle.clone(), job.report.clone(), input.clone());
                    let depth = template_depth.clone();
                    // lol-html hands text over in arbitrary chunks; plugins get whole text nodes,
                    // so chunks are held back until the node's last one.
                    let mut pending = String::new();
                    handlers =
                        handlers.text(move |chunk: &mut lol_html::html_content::TextChunk<'_>| {
                            pending.push_str(chunk.as_str());
                            if !chunk.last_in_text_node() {
                                chunk.remove();
                                return Ok(());
                            }
                            let whole = std::mem::take(&mut pending);
                            let replacement = if is_live(&h)
                                && depth.load(Ordering::Relaxed) == 0
                                && !whole.trim().is_empty()
                            {
                                // The guard must be gone before `fault`, which locks again.
                                let result = match &mut *h
                                    .instance
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                {
                                    Some(instance) => instance.on_text(id, &whole),
                                    None => Err(PluginFault::AlreadyFaulted),
                                };
                                match result {
                                    Ok(Some(r)) if !h.charge_output(r.len(), &input) => {
                                        fault(&h, &report, &output_fault(&h, &input));
                                        None
                                    }
                                    Ok(r) => r,
                                    Err(f) => {
                                        fault(&h, &report, &f);
                                        None
                                    }
                                }
                            } else {
                                None
                            };
                            // The original is raw source text, so it goes back as HTML, byte for byte.
                            chunk.replace(
                                replacement.as_deref().unwrap_or(&whole),
                                ContentType::Html,
                            );
                            Ok(())
                        });
                }
                settings = settings.append_element_content_handler((Cow::Owned(parsed), handlers));
            }
        }
        // Content inside <template> is inert: browsers' querySelector does not see it, so
        // neither do rules. Registered last, so a rule on the <template> element itself still
        // applies; the depth counts nested templates.
        let depth = template_depth.clone();
        let tracker = ElementContentHandlers::default().element(move |el: &mut Element<'_, '_>| {
            depth.fetch_add(1, Ordering::Relaxed);
            let depth = depth.clone();
            let _ = el.on_end_tag(Box::new(move |_end| {
                depth.fetch_sub(1, Ordering::Relaxed);
                Ok(())
            }));
            Ok(())
        });
        if let Ok(template) = "template".parse::<Selector>() {
            settings = settings.append_element_content_handler((Cow::Owned(template), tracker));
        }
        let rewriter = HtmlRewriter::new(settings, SharedBuf(out.clone()));
        (rewriter, once_only.then_some(left))
    }

    /// Once every rule is placed, ends the rewriter (it hands back any bytes it held, as they
    /// came) and lets the rest of the body through unparsed.
    fn pass_when_done(&mut self) -> Result<(), BodyError> {
        if self
            .left
            .as_ref()
            .is_none_or(|left| left.load(Ordering::Relaxed) != 0)
        {
            return Ok(());
        }
        if let Stage::Rewriting(rewriter) = std::mem::replace(&mut self.stage, Stage::Passthrough) {
            rewriter
                .end()
                .map_err(|e| BodyError::Rewrite(e.to_string()))?;
        }
        Ok(())
    }

    /// Decides the charset from what is buffered and starts rewriting (or passing through).
    fn resolve(&mut self) -> Result<(), BodyError> {
        let Stage::Sniffing {
            job,
            content_type,
            buffered,
            ..
        } = std::mem::replace(&mut self.stage, Stage::Passthrough)
        else {
            return Ok(());
        };
        let mut job = *job;
        match charset::sniff(content_type.as_deref(), &buffered) {
            Charset::Rewrite(encoding) => {
                let (mut rewriter, left) = Self::rewriter(job, encoding, &self.input, &self.out);
                rewriter
                    .write(&buffered)
                    .map_err(|e| BodyError::Rewrite(e.to_string()))?;
                self.stage = Stage::Rewriting(Box::new(rewriter));
                self.left = left;
                self.pass_when_done()?;
            }
            Charset::Unsupported => {
                if let Some(report) = job.on_unsupported_charset.take() {
                    report(content_type.as_deref().unwrap_or(""));
                }
                self.out
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(&buffered);
            }
        }
        Ok(())
    }

    fn drain(&mut self) -> Vec<u8> {
        std::mem::take(&mut *self.out.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Feeds one chunk of the origin's body; returns bytes ready for the client.
    pub fn push(&mut self, input: Bytes) -> Result<Bytes, BodyError> {
        let identity_in = matches!(self.decoder, Decoder::Identity(_));
        // Uncompressed on both sides and nothing left to parse: the chunk goes out as it came,
        // without a copy.
        if identity_in
            && matches!(self.encoder, Encoder::Identity(_))
            && matches!(self.stage, Stage::Passthrough)
        {
            self.input.fetch_add(
                u64::try_from(input.len()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            let mut held = self.drain();
            if held.is_empty() {
                return Ok(input);
            }
            held.extend_from_slice(&input);
            return Ok(Bytes::from(held));
        }
        let decoded = if identity_in {
            Cow::Borrowed(&input[..])
        } else {
            Cow::Owned(self.decoder.push(&input).map_err(BodyError::Decode)?)
        };
        if decoded.is_empty() {
            return Ok(Bytes::new());
        }
        self.input.fetch_add(
            u64::try_from(decoded.len()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.write(&decoded)?;
        let html = self.drain();
        self.encode(html)
    }

    /// Encodes rewritten bytes for the client (uncompressed ones as they are, without a copy).
    fn encode(&mut self, html: Vec<u8>) -> Result<Bytes, BodyError> {
        if html.is_empty() {
            return Ok(Bytes::new());
        }
        if matches!(self.encoder, Encoder::Identity(_)) {
            return Ok(Bytes::from(html));
        }
        self.encoder
            .push(&html)
            .map(Bytes::from)
            .map_err(BodyError::Encode)
    }

    fn write(&mut self, decoded: &[u8]) -> Result<(), BodyError> {
        match &mut self.stage {
            Stage::Sniffing {
                buffered, wanted, ..
            } => {
                buffered.extend_from_slice(decoded);
                if buffered.len() >= *wanted {
                    self.resolve()?;
                }
            }
            Stage::Rewriting(rewriter) => {
                rewriter
                    .write(decoded)
                    .map_err(|e| BodyError::Rewrite(e.to_string()))?;
                self.pass_when_done()?;
            }
            Stage::Passthrough => self
                .out
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(decoded),
        }
        Ok(())
    }

    /// Ends the body; returns the last bytes for the client.
    pub fn finish(mut self) -> Result<Bytes, BodyError> {
        let decoder = std::mem::replace(&mut self.decoder, Decoder::new(Coding::Identity));
        let rest = decoder.finish().map_err(BodyError::Decode)?;
        if !rest.is_empty() {
            self.input.fetch_add(
                u64::try_from(rest.len()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            self.write(&rest)?;
        }
        // A body shorter than the prescan window is decided now.
        self.resolve()?;
        if let Stage::Rewriting(rewriter) = std::mem::replace(&mut self.stage, Stage::Passthrough) {
            rewriter
                .end()
                .map_err(|e| BodyError::Rewrite(e.to_string()))?;
        }
        let html = self.drain();
        if matches!(self.encoder, Encoder::Identity(_)) {
            return self.encode(html);
        }
        let mut encoder = std::mem::replace(&mut self.encoder, Encoder::new(Coding::Identity));
        let mut bytes = encoder.push(&html).map_err(BodyError::Encode)?;
        bytes.extend(encoder.finish().map_err(BodyError::Encode)?);
        Ok(Bytes::from(bytes))
    }
}

/// Applies JSON operations to a JSON document.
pub fn apply_json(body: &[u8], ops: &[JsonOp]) -> Result<Vec<u8>, String> {
    let mut doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("origin body is not JSON: {e}"))?;
    for op in ops {
        match op {
            JsonOp::Set((pointer, value)) => {
                let value: serde_json::Value = serde_json::from_str(value)
                    .map_err(|e| format!("set {pointer}: value is not JSON: {e}"))?;
                if pointer.is_empty() {
                    doc = value;
                    continue;
                }
                let (parent, last) = split_pointer(pointer)?;
                match doc.pointer_mut(parent) {
                    Some(serde_json::Value::Object(map)) => {
                        map.insert(last, value);
                    }
                    Some(serde_json::Value::Array(items)) => {
                        let i: usize = last
                            .parse()
                            .map_err(|_| format!("set {pointer}: not an array index"))?;
                        match i.cmp(&items.len()) {
                            std::cmp::Ordering::Less => items[i] = value,
                            std::cmp::Ordering::Equal => items.push(value),
                            std::cmp::Ordering::Greater => {
                                return Err(format!("set {pointer}: index out of range"));
                            }
                        }
                    }
                    _ => return Err(format!("set {pointer}: parent does not exist")),
                }
            }
            JsonOp::Remove(pointer) => {
                let (parent, last) = split_pointer(pointer)?;
                match doc.pointer_mut(parent) {
                    Some(serde_json::Value::Object(map)) => {
                        map.shift_remove(&last);
                    }
                    Some(serde_json::Value::Array(items)) => {
                        if let Ok(i) = last.parse::<usize>()
                            && i < items.len()
                        {
                            items.remove(i);
                        }
                    }
                    _ => {}
                }
            }
            JsonOp::Append((pointer, value)) => {
                let value: serde_json::Value = serde_json::from_str(value)
                    .map_err(|e| format!("append {pointer}: value is not JSON: {e}"))?;
                match doc.pointer_mut(pointer) {
                    Some(serde_json::Value::Array(items)) => items.push(value),
                    _ => return Err(format!("append {pointer}: not an array")),
                }
            }
        }
    }
    serde_json::to_vec(&doc).map_err(|e| e.to_string())
}

fn split_pointer(pointer: &str) -> Result<(&str, String), String> {
    let i = pointer
        .rfind('/')
        .ok_or_else(|| format!("{pointer:?} is not a JSON pointer"))?;
    let last = pointer[i + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&pointer[..i], last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_codings() {
        assert_eq!(Coding::negotiate(Some("gzip, deflate, br")), Coding::Brotli);
        assert_eq!(Coding::negotiate(Some("gzip;q=0.5, br;q=0")), Coding::Gzip);
        assert_eq!(Coding::negotiate(None), Coding::Identity);
        assert_eq!(Coding::from_content_encoding(Some("zstd")), None);
    }

    #[test]
    fn codings_round_trip_in_chunks() {
        let text = "<p>hello</p>".repeat(500);
        for coding in [Coding::Gzip, Coding::Brotli] {
            let mut enc = Encoder::new(coding);
            let mut wire = Vec::new();
            for chunk in text.as_bytes().chunks(777) {
                wire.extend(enc.push(chunk).expect("encode"));
            }
            wire.extend(enc.finish().expect("finish"));
            let mut dec = Decoder::new(coding);
            let mut plain = Vec::new();
            for chunk in wire.chunks(100) {
                plain.extend(dec.push(chunk).expect("decode"));
            }
            plain.extend(dec.finish().expect("finish"));
            assert_eq!(plain, text.as_bytes(), "{coding:?}");
        }
    }

    #[test]
    fn classes_are_added_once_and_removed_as_words() {
        let run = |html: &str, op: HtmlOp| {
            let settings = Settings::new_send().append_element_content_handler(lol_html::element!(
                "a",
                |el| {
                    apply_op(el, &op);
                    Ok(())
                }
            ));
            lol_html::rewrite_str(html, settings).expect("rewrites")
        };
        let add = || HtmlOp::AddClass("on-sale".into());
        assert_eq!(run("<a>x</a>", add()), r#"<a class="on-sale">x</a>"#);
        assert_eq!(
            run(r#"<a class="">x</a>"#, add()),
            r#"<a class="on-sale">x</a>"#
        );
        assert_eq!(
            run(r#"<a class="btn  big ">x</a>"#, add()),
            r#"<a class="btn  big on-sale">x</a>"#
        );
        // Already there (as a word, not as part of one): left as written.
        assert_eq!(
            run(r#"<a class="on-sale btn">x</a>"#, add()),
            r#"<a class="on-sale btn">x</a>"#
        );
        assert_eq!(
            run(r#"<a class="on-sale-now">x</a>"#, add()),
            r#"<a class="on-sale-now on-sale">x</a>"#
        );
        let remove = || HtmlOp::RemoveClass("on-sale".into());
        assert_eq!(
            run(r#"<a class="btn on-sale big">x</a>"#, remove()),
            r#"<a class="btn big">x</a>"#
        );
        assert_eq!(run("<a>x</a>", remove()), "<a>x</a>");
        assert_eq!(
            run(r#"<a class="on-sale-now">x</a>"#, remove()),
            r#"<a class="on-sale-now">x</a>"#
        );
    }

    #[test]
    fn json_operations() {
        let body = br#"{"hero":{"title":"Hi"},"items":[1,2],"debug":true}"#;
        let ops = vec![
            JsonOp::Set(("/hero/title".into(), "\"Welcome back\"".into())),
            JsonOp::Append(("/items".into(), "3".into())),
            JsonOp::Remove("/debug".into()),
        ];
        let out = apply_json(body, &ops).expect("applies");
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"{"hero":{"title":"Welcome back"},"items":[1,2,3]}"#
        );
        assert!(apply_json(body, &[JsonOp::Set(("/nope/x".into(), "1".into()))]).is_err());
    }
}
