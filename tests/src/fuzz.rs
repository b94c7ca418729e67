//! Fuzz targets for the code that reads what clients and plugins send, and a small
//! mutation-based driver that runs on stable Rust (cargo-fuzz needs a nightly toolchain and
//! libFuzzer, which a fresh machine does not have).
//!
//! The driver is not coverage-guided. It starts from hand-written seeds, mutates them (bit
//! flips, byte edits, inserts of each target's dictionary tokens, splices, truncation) and keeps
//! an input in its pool when the target reports an outcome it had not seen (a status, an error
//! kind), which steers it towards the branches that matter. Structure-aware targets decode the
//! bytes into a plan or a signed cookie so mutations reach the code behind parsers and
//! signatures. Any panic is a failure; the input is written to `target/fuzz-crashes/` so it
//! can be replayed, and to make it a regression add it under `tests/fuzz/regressions/TARGET/`.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use veneer::framing::{FramingFlag, Tracker};
use veneer::plugin::model::{HeaderEdits, HtmlOp, HtmlRule, JsonOp, ResponsePlan, Subscription};

/// One fuzz target.
pub struct Target {
    /// Name used on the command line and for regression directories.
    pub name: &'static str,
    /// Runs one input; returns a number naming the outcome class.
    pub run: fn(&[u8]) -> u64,
    /// Starting inputs.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Tokens worth inserting.
    pub dictionary: &'static [&'static str],
}

/// Every target.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "request_head",
            run: request_head,
            seeds: head_seeds,
            dictionary: HEAD_DICT,
        },
        Target {
            name: "visitor_cookie",
            run: visitor_cookie,
            seeds: cookie_seeds,
            dictionary: COOKIE_DICT,
        },
        Target {
            name: "rules",
            run: rules,
            seeds: rules_seeds,
            dictionary: RULES_DICT,
        },
        Target {
            name: "plan",
            run: plan,
            seeds: plan_seeds,
            dictionary: &[],
        },
    ]
}

/// What one run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Inputs run.
    pub execs: u64,
    /// Distinct outcomes seen.
    pub outcomes: usize,
    /// Inputs that panicked, with the file each was saved to.
    pub crashes: Vec<PathBuf>,
}

/// Runs the regression inputs under `regressions` (if any), the seeds, then mutations until
/// `budget` has passed. `seed` makes a run repeatable.
pub fn fuzz(target: &Target, budget: Duration, seed: u64, regressions: &Path) -> Report {
    let mut report = Report::default();
    let mut seen = HashSet::new();
    let mut pool: Vec<Vec<u8>> = (target.seeds)();
    if let Ok(dir) = std::fs::read_dir(regressions.join(target.name)) {
        for entry in dir.flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                pool.push(bytes);
            }
        }
    }
    let try_one = |input: &[u8], report: &mut Report| -> Option<u64> {
        report.execs += 1;
        match catch_unwind(AssertUnwindSafe(|| (target.run)(input))) {
            Ok(outcome) => Some(outcome),
            Err(_) => {
                report.crashes.push(save_crash(target.name, input));
                None
            }
        }
    };
    for input in pool.clone() {
        if let Some(o) = try_one(&input, &mut report) {
            seen.insert(o);
        }
    }
    let mut rng = Rng(seed | 1);
    let start = Instant::now();
    while start.elapsed() < budget {
        // Check the clock every few hundred inputs, not every one.
        for _ in 0..256 {
            let base = &pool[rng.below(pool.len())];
            let other = &pool[rng.below(pool.len())];
            let input = mutate(&mut rng, base, other, target.dictionary);
            if let Some(o) = try_one(&input, &mut report)
                && seen.insert(o)
                && pool.len() < 512
            {
                pool.push(input);
            }
        }
    }
    report.outcomes = seen.len();
    report
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/fuzz-crashes")
        .join(target);
    let _ = std::fs::create_dir_all(&dir);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in input {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    let path = dir.join(format!("{h:016x}.bin"));
    let _ = std::fs::write(&path, input);
    path
}

/// xorshift64*: small, fast and repeatable; quality is not the point here.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'\r', b'\n', b' ', b'\t', b':', b'"',
];

fn mutate(rng: &mut Rng, base: &[u8], other: &[u8], dict: &[&str]) -> Vec<u8> {
    let mut out = base.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let at = rng.below(out.len() + 1);
        match rng.below(9) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => out.insert(at, rng.next() as u8),
            3 if !out.is_empty() => {
                let i = rng.below(out.len());
                let n = 1 + rng.below((out.len() - i).min(16));
                out.drain(i..i + n);
            }
            4 if !dict.is_empty() => {
                let token = dict[rng.below(dict.len())].as_bytes();
                out.splice(at..at, token.iter().copied());
            }
            5 if !out.is_empty() => {
                // Repeat a slice: long values, many headers, deep nesting.
                let i = rng.below(out.len());
                let n = 1 + rng.below((out.len() - i).min(64));
                let piece = out[i..i + n].to_vec();
                for _ in 0..1 + rng.below(8) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            6 if !other.is_empty() => {
                let i = rng.below(other.len());
                let n = 1 + rng.below(other.len() - i);
                out.splice(at..at, other[i..i + n].iter().copied());
            }
            7 => out.truncate(at),
            _ => {
                if let Some(b) = out.get_mut(at) {
                    *b = b.wrapping_add(1 + rng.below(3) as u8);
                }
            }
        }
    }
    out.truncate(64 * 1024);
    out
}

// --- request heads: the framing watcher and the front door's checks -----------------------

const HEAD_DICT: &[&str] = &[
    "\r\n",
    "\n",
    "Content-Length: 5\r\n",
    "Content-Length: 18446744073709551616\r\n",
    "Transfer-Encoding: chunked\r\n",
    "Transfer-Encoding: identity, chunked\r\n",
    "Host: site.test\r\n",
    "Host: other.test\r\n",
    "Expect: 100-continue\r\n",
    "Upgrade: websocket\r\n",
    "X-Forwarded-For: 10.0.0.1, 203.0.113.9\r\n",
    "CONNECT",
    "OPTIONS * ",
    "http://site.test",
    "site.test:80",
    "HTTP/1.0",
    "HTTP/2.0",
    "0\r\n\r\n",
    "5;x=y\r\nhello\r\n",
];

fn head_seeds() -> Vec<Vec<u8>> {
    [
        "GET / HTTP/1.1\r\nHost: site.test\r\n\r\n",
        "POST /cart HTTP/1.1\r\nHost: site.test\r\nContent-Length: 5\r\n\r\nhello",
        "POST /cart HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET http://site.test/x?y=1 HTTP/1.1\r\nHost: site.test\r\nCookie: a=b\r\n\r\nGET / HTTP/1.1\r\nHost: site.test\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: site.test\r\n\r\n",
        "CONNECT site.test:443 HTTP/1.1\r\nHost: site.test:443\r\n\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn request_head(data: &[u8]) -> u64 {
    // The watcher sees the bytes in whatever pieces the socket hands over.
    let flag = FramingFlag::default();
    let mut tracker = Tracker::new(flag.clone());
    let piece = data.first().map_or(1, |b| usize::from(*b % 7) + 1);
    for chunk in data.chunks(piece) {
        tracker.feed(chunk);
    }
    let conflicting = u64::from(flag.conflicting(1));

    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return 1 + conflicting;
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return 3;
    };
    let mut builder = http::Request::builder()
        .method(method.as_bytes())
        .uri(path)
        .version(if version == 0 {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        });
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    let Ok(request) = builder.body(()) else {
        return 4;
    };
    let (mut parts, ()) = request.into_parts();
    if conflicting == 1 {
        parts.extensions.insert(veneer::proxy::ConflictingFraming);
    }
    match veneer::proxy::admit_status(&parts) {
        None => 5,
        Some(status) => 1000 + u64::from(status.as_u16()) + conflicting * 10_000,
    }
}

// --- the visitor cookie and the request facts read from headers ---------------------------

const COOKIE_DICT: &[&str] = &[
    "veneer_vid=",
    "veneer_consent=",
    "; ",
    "=",
    ".",
    "\"visits\":4294967296",
    "\"sticky\":{\"a__1\":\"b\"}",
    "\"first\":-1",
    "utm_source=",
    "&",
    "%",
    "%zz",
    "q=0.5",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
    "Googlebot",
];

fn cookie_seeds() -> Vec<Vec<u8>> {
    let payload = r#"{"id":"3f1c","first":1700000000,"last":1700000300,"visits":3,"sticky":{"headline__1":"1"}}"#;
    vec![
        [b"\x00".as_slice(), payload.as_bytes()].concat(),
        b"\x01veneer_vid=eyJpZCI6IngifQ.AAAA; veneer_consent=analytics,marketing; other=1".to_vec(),
        b"\x02analytics,personalization".to_vec(),
        b"\x03utm_source=newsletter&utm_campaign=xmas%20sale&utm_medium=email".to_vec(),
        b"\x04da, en-GB;q=0.8, en;q=0.7".to_vec(),
        b"\x05Mozilla/5.0 (Linux; Android 14) Mobile Safari/537.36".to_vec(),
    ]
}

fn visitor_cookie(data: &[u8]) -> u64 {
    use veneer::visitor;
    let Some((&mode, rest)) = data.split_first() else {
        return 0;
    };
    let text = String::from_utf8_lossy(rest);
    let signer = visitor::CookieSigner::new(b"fuzz-key-fuzz-key-fuzz-key-fuzz-key");
    match mode % 6 {
        0 => {
            // Behind a valid signature: what the parser does with any payload.
            let sealed = signer.seal(rest);
            let decoded = signer.decode(&sealed);
            let resumed = visitor::resume(&signer, Some(&sealed), 1_800_000_000);
            assert!(
                resumed.visits >= 1,
                "a resumed visitor has at least one visit"
            );
            if let Some(state) = decoded {
                assert_eq!(
                    signer.decode(&signer.encode(&state)).as_ref(),
                    Some(&state),
                    "what decodes re-encodes to itself"
                );
                10
            } else {
                11
            }
        }
        1 => {
            let value = visitor::cookie(&text, "veneer_vid");
            let stripped = visitor::strip_cookie(&text, "veneer_vid");
            assert!(
                visitor::cookie(&stripped, "veneer_vid").is_none(),
                "stripping removes the cookie: {stripped:?}"
            );
            let state = visitor::resume(&signer, value, 1_800_000_000);
            20 + u64::from(value.is_some()) + 2 * u64::from(state.visits > 1)
        }
        2 => {
            let consent = visitor::consent(Some(&text), &["analytics".to_owned()], mode > 128);
            30 + u64::from(consent.purpose("marketing"))
        }
        3 => 40 + visitor::utm_params(&text).len().min(9) as u64,
        4 => 50 + u64::from(visitor::preferred_locale(&text).is_some()),
        _ => 60 + visitor::device_name(visitor::device_class(&text)).len() as u64,
    }
}

// --- the rules loader and evaluation ------------------------------------------------------

const RULES_DICT: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"$and\":[",
    "\"$or\":[",
    "\"$not\":",
    "\"$regex\":\"(a+)+$\"",
    "\"$in\":[",
    "\"$elemMatch\":{",
    "\"$gt\":",
    "\"$vgt\":\"1.2.3\"",
    "\"$exists\":true",
    "\"$inGroup\":\"g\"",
    "\"weights\":[",
    "1e308",
    "-0",
    "null",
    "\"2026-12-24T00:00:00Z\"",
    "\"segments\":[\"nordic\"]",
];

fn rules_seeds() -> Vec<Vec<u8>> {
    vec![
        br#"{"segments":{"new":{"visitCount":{"$lte":1}},"nordic":{"country":{"$in":["NO","SE"]}},"vip":{"$or":[{"customer.tier":"gold"},{"tags":{"$elemMatch":{"$eq":"vip"}}}]}},
"experiments":[{"key":"headline","variations":["a","b"],"weights":[0.5,0.5],"hashVersion":2,"condition":{"browser":{"$regex":"^Fire"}}}],
"campaigns":[{"id":"xmas","start":"2026-12-01T00:00:00+01:00","end":"2026-12-27T00:00:00+01:00","segments":["nordic"],"channels":["web"],"priority":2,"params":{"banner":"x"}}]}"#.to_vec(),
        br#"{"savedGroups":{"g":["a","b"]},"segments":{"s":{"id":{"$inGroup":"g"},"v":{"$vgte":"1.0.0-beta"},"n":{"$not":{"$size":{"$gt":2}}}}}}"#.to_vec(),
    ]
}

fn rules(data: &[u8]) -> u64 {
    let Ok(text) = std::str::from_utf8(data) else {
        return 0;
    };
    match veneer_rules::RuleSet::from_json_str(text) {
        Err(errors) => {
            assert!(!errors.is_empty(), "a refusal says why");
            2
        }
        Ok(rules) => {
            let visitors = [
                serde_json::json!({"visitCount": 1, "country": "NO", "id": "a", "tags": ["vip"],
                    "browser": "Firefox", "customer": {"tier": "gold"}}),
                serde_json::json!({"visitCount": 9, "country": "PL", "v": "1.2.0", "n": [1, 2, 3]}),
                serde_json::json!({}),
            ];
            let now: jiff::Timestamp = "2026-12-24T12:00:00Z".parse().unwrap_or_default();
            let mut shape = 3;
            for attributes in &visitors {
                let set = rules.segments(attributes);
                let live = rules.active_campaigns(now, "web", &set);
                shape = shape * 7 + rules.segment_list(&set).count() as u64 + live.len() as u64;
                for experiment in rules.experiments() {
                    let mut ctx = veneer_rules::Context::new(attributes);
                    let _ = experiment.run(&mut ctx);
                }
            }
            shape % 1000 + 100
        }
    }
}

// --- a plugin's response plan: validation, budget, then applied ---------------------------

const SELECTORS: &[&str] = &[
    "h1",
    "#hero",
    "main > p:first-child",
    "a[href^=\"/products\"]",
    "div.banner:not(.x)",
    "*",
    "p:nth-child(2n+1)",
    "[data-x~=\"y\"]",
];

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn text(&mut self) -> String {
        let n = usize::from(self.byte() % 48).min(self.0.len());
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(s).into_owned()
    }

    fn selector(&mut self) -> String {
        let b = self.byte();
        if b < 200 {
            SELECTORS[usize::from(b) % SELECTORS.len()].to_owned()
        } else {
            self.text()
        }
    }
}

fn decode_plan(data: &[u8]) -> ResponsePlan {
    let mut r = Reader(data);
    let mut plan = ResponsePlan::default();
    for _ in 0..r.byte() % 8 {
        let selector = r.selector();
        let op = match r.byte() % 13 {
            0 => HtmlOp::SetInnerHtml(r.text()),
            1 => HtmlOp::SetInnerText(r.text()),
            2 => HtmlOp::PrependHtml(r.text()),
            3 => HtmlOp::AppendHtml(r.text()),
            4 => HtmlOp::BeforeHtml(r.text()),
            5 => HtmlOp::AfterHtml(r.text()),
            6 => HtmlOp::ReplaceHtml(r.text()),
            7 => HtmlOp::Remove,
            8 => HtmlOp::Unwrap,
            9 => HtmlOp::SetAttribute((r.text(), r.text())),
            10 => HtmlOp::RemoveAttribute(r.text()),
            11 => HtmlOp::AddClass(r.text()),
            _ => HtmlOp::RemoveClass(r.text()),
        };
        plan.html.push(HtmlRule { selector, op });
        // Contract 0.2.1's placement options on some rules: first-only, an event when applied,
        // a fallback place (refused for rules that insert nothing).
        let flags = r.byte();
        if flags & 0b1000_0000 != 0 {
            let options = veneer::plugin::RuleOptions {
                first_only: flags & 1 != 0,
                on_apply: (flags & 2 != 0).then(|| (r.text(), vec![(r.text(), r.text())])),
                fallback: (flags & 4 != 0).then(|| r.selector()),
            };
            plan.rule_options.insert(plan.html.len() - 1, options);
        }
    }
    let mut headers = HeaderEdits::default();
    for _ in 0..r.byte() % 4 {
        headers.set.push((r.text(), r.text()));
    }
    for _ in 0..r.byte() % 3 {
        headers.remove.push(r.text());
    }
    plan.headers = headers;
    for _ in 0..r.byte() % 4 {
        let pointer = format!("/{}", r.text());
        plan.json.push(match r.byte() % 3 {
            0 => JsonOp::Set((pointer, r.text())),
            1 => JsonOp::Remove(pointer),
            _ => JsonOp::Append((pointer, r.text())),
        });
    }
    for _ in 0..r.byte() % 3 {
        let selector = r.selector();
        plan.subscribe.push(Subscription {
            selector,
            text: r.byte() % 2 == 1,
        });
    }
    plan
}

fn plan_seeds() -> Vec<Vec<u8>> {
    vec![
        vec![
            2, 0, 0, 5, b'<', b'b', b'>', b'!', b'<', 2, 9, 5, b'c', b'l', b'a', b's', b's', 1,
            b'x', 1, 4, b'x', b'-', b'v', b'n', 1, b'1', 0, 1, 0, 3, b'a', b'/', b'0', 1, b'5', 1,
            1, 0,
        ],
        vec![
            3, 250, 6, b'h', b'1', b'[', b'x', b'=', b'0', 0, 7, 3, 3, 2, 4, b'b', b'o', b'd',
            b'y', 6, 0, 0, 1, 9, 2, b'a', b'b',
        ],
    ]
}

fn plan(data: &[u8]) -> u64 {
    use veneer::rewrite;
    let plan = decode_plan(data);
    let budget = veneer::plugin::Budget::default();
    let within = budget.check_plan(&plan).is_ok();
    let Ok(_checked) = rewrite::validate_plan(plan.clone()) else {
        return 1 + 2 * u64::from(within);
    };
    // A plan the host accepts must apply without trouble.
    let handlers: Vec<_> = plan
        .html
        .iter()
        .map(|rule| {
            let op = rule.op.clone();
            lol_html::element!(
                rule.selector.as_str(),
                move |el: &mut lol_html::send::Element<'_, '_>| {
                    rewrite::apply_op(el, &op);
                    Ok(())
                }
            )
        })
        .collect();
    let page = "<!doctype html><html><head><title>t</title></head><body><main id=hero>\
<h1 class=\"a b\">Hi</h1><p>one</p><p>two <a href=\"/products/1\">x</a></p>\
<div class=banner data-x=\"y z\">b</div><template><h1>t</h1></template></main></body></html>";
    let mut out = Vec::new();
    let mut settings = lol_html::send::Settings::new_send();
    for handler in handlers {
        settings = settings.append_element_content_handler(handler);
    }
    let mut rewriter =
        lol_html::send::HtmlRewriter::new(settings, |c: &[u8]| out.extend_from_slice(c));
    let rewritten = rewriter
        .write(page.as_bytes())
        .and_then(|()| rewriter.end());
    let json = rewrite::apply_json(br#"{"a":[1,2],"b":{"c":"d"},"0":null}"#, &plan.json);
    // The shape of the plan is part of the outcome, so plans with more rules are kept.
    10 + u64::from(rewritten.is_ok())
        + 2 * u64::from(json.is_ok())
        + 4 * u64::from(within)
        + 8 * plan.html.len() as u64
        + 100 * plan.json.len() as u64
        + 1000 * plan.subscribe.len() as u64
}
