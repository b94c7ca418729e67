//! Micro-benchmarks, one JSON line per scenario:
//! - per-request plugin overhead: instantiate + on-request + on-response (no body), for the noop
//!   plugin and for the hero plugin built for each contract version (the golden 0.1.0 build
//!   against today's 0.2.0 build), so the cost of a contract's calling convention is visible,
//!   and for the JavaScript greeter (componentize-js), so the cost of a second language is;
//! - streaming rewrite throughput of Veneer's HTML pipeline on the three shared pages with three
//!   declarative rules, against raw lol-html doing the same three rewrites in the same run.
//!
//! - element callbacks on the cloudflare page: product-links on every `a[href]` against a
//!   declarative rule changing the same elements, per callback (`-- callbacks`: this one alone);
//! - profiles: a CRM import of 200,000 customers, then per request what the identify stage
//!   does with a profile (cache lookup, the profile's attributes for the rules, a journey
//!   stage, a page view recorded), and a first lookup that reads the store.
//!
//! Run with `cargo bench -p veneer-tests --bench runtime` (uses ../shared/pages if present).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lol_html::html_content::ContentType;
use lol_html::{HtmlRewriter, Settings, element};
use veneer::plugin::{
    HeaderEdits, HtmlOp, HtmlRule, Limits, Plugin, ResponsePlan, Runtime, RuntimeOptions,
};
use veneer::rewrite::{Coding, HtmlBody, HtmlJob, PluginHandle};
use veneer_tests::{NoServices, TempDir};

const CHUNK: usize = 16 << 10;

/// Median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut t: Vec<Duration> = (0..runs).map(|_| f()).collect();
    t.sort();
    t[t.len() / 2]
}

fn per_request(rt: &tokio::runtime::Runtime, plugin: &Plugin, label: &str, iters: u32) {
    let head = Arc::new(veneer::plugin::RequestHead {
        method: "GET".into(),
        path: "/".into(),
        host: "shop.example".into(),
        headers: vec![
            ("accept".into(), "text/html".into()),
            ("user-agent".into(), "Mozilla/5.0".into()),
        ],
    });
    let resp = Arc::new(veneer::plugin::ResponseHead {
        status: 200,
        headers: vec![("content-type".into(), "text/html".into())],
    });
    let v = veneer_tests::test_visitor(
        veneer::plugin::DeviceClass::Mobile,
        &["returning", "mobile"],
    );
    let services: Arc<dyn veneer::plugin::HostServices> = Arc::new(NoServices);
    let once = || {
        rt.block_on(async {
            let mut i = plugin
                .instantiate(services.clone(), veneer::plugin::Admission::Run)
                .await
                .expect("instance");
            black_box(i.on_request(&head, &v).await.expect("on-request"));
            black_box(i.on_response(&head, &resp, &v).await.expect("on-response"));
        })
    };
    for _ in 0..iters / 10 {
        once();
    }
    let per = median(5, || {
        let start = Instant::now();
        for _ in 0..iters {
            once();
        }
        start.elapsed() / iters
    });
    let instantiate_only = median(5, || {
        let start = Instant::now();
        for _ in 0..iters {
            rt.block_on(async {
                black_box(
                    plugin
                        .instantiate(services.clone(), veneer::plugin::Admission::Run)
                        .await
                        .expect("instance"),
                )
            });
        }
        start.elapsed() / iters
    });
    println!(
        "{{\"scenario\":\"per-request-plugin-overhead\",\"plugin\":\"{label}\",\"contract\":\"{}\",\"veneer_us\":{:.2},\"instantiate_and_drop_us\":{:.2},\"target_us\":20}}",
        plugin.contract().version(),
        per.as_secs_f64() * 1e6,
        instantiate_only.as_secs_f64() * 1e6
    );
}

fn rules() -> Vec<HtmlRule> {
    vec![
        HtmlRule {
            selector: "title".into(),
            op: HtmlOp::SetInnerText("Personalized title".into()),
        },
        HtmlRule {
            selector: "h1".into(),
            op: HtmlOp::AddClass("veneer".into()),
        },
        HtmlRule {
            selector: "meta[name=\"description\"]".into(),
            op: HtmlOp::SetAttribute(("content".into(), "Personalized".into())),
        },
    ]
}

fn raw_lol_html(page: &[u8]) -> usize {
    let mut out = 0usize;
    let settings = Settings::new()
        .append_element_content_handler(element!("title", |el| {
            el.set_inner_content("Personalized title", ContentType::Text);
            Ok(())
        }))
        .append_element_content_handler(element!("h1", |el| {
            let class = el.get_attribute("class").unwrap_or_default();
            el.set_attribute("class", &format!("{class} veneer"))?;
            Ok(())
        }))
        .append_element_content_handler(element!("meta[name=\"description\"]", |el| {
            el.set_attribute("content", "Personalized")?;
            Ok(())
        }));
    let mut rw = HtmlRewriter::new(settings, |c: &[u8]| out += c.len());
    for chunk in page.chunks(CHUNK) {
        rw.write(chunk).expect("write");
    }
    rw.end().expect("end");
    out
}

fn veneer_pipeline(rt: &tokio::runtime::Runtime, plugin: &Plugin, page: &bytes::Bytes) -> usize {
    let instance = rt
        .block_on(plugin.instantiate(Arc::new(NoServices), veneer::plugin::Admission::Run))
        .expect("instance");
    let plan = ResponsePlan {
        headers: HeaderEdits {
            set: vec![],
            remove: vec![],
        },
        html: rules(),
        ..ResponsePlan::default()
    };
    rewrite_with(instance, plan, page)
        .iter()
        .map(bytes::Bytes::len)
        .sum()
}

/// The page through Veneer's HTML pipeline with `plan` from `instance`, as the proxy does it;
/// the chunks it sends (kept as they come, not copied).
fn rewrite_with(
    instance: veneer::plugin::Instance,
    plan: ResponsePlan,
    page: &bytes::Bytes,
) -> Vec<bytes::Bytes> {
    let handle = Arc::new(PluginHandle::new(
        Arc::from("bench"),
        Some(instance),
        veneer::plugin::Budget::default(),
    ));
    // Validation is part of every request's work, so it is measured too.
    let checked = veneer::rewrite::validate_plan(plan).expect("valid plan");
    let job = HtmlJob {
        plugins: vec![(handle, checked)],
        report: Arc::new(|_: &str, _: &veneer::plugin::PluginFault| {}),
        on_unsupported_charset: None,
    };
    let mut body = HtmlBody::new(
        job,
        Coding::Identity,
        Coding::Identity,
        Some("text/html; charset=utf-8"),
    );
    let mut out = Vec::with_capacity(page.len() / CHUNK + 2);
    // The origin's body arrives as `Bytes` chunks.
    for start in (0..page.len()).step_by(CHUNK) {
        let chunk = page.slice(start..(start + CHUNK).min(page.len()));
        out.push(body.push(chunk).expect("push"));
    }
    out.push(body.finish().expect("finish"));
    out
}

/// One live campaign, for the product-links plugin's element callbacks.
struct OneCampaign(Vec<Arc<veneer::plugin::Campaign>>);

impl veneer::plugin::HostServices for OneCampaign {
    fn fragment(&self, key: &str) -> Option<String> {
        NoServices.fragment(key)
    }
    fn track(&self, _plugin: &str, _name: &str, _properties: Vec<(String, String)>) {}
    fn active_campaigns(&self) -> &[Arc<veneer::plugin::Campaign>] {
        &self.0
    }
    fn assign(&self, _experiment: &str) -> Option<veneer::plugin::Assignment> {
        None
    }
    fn impression(&self, _plugin: &str, _campaign_id: &str) {}
    fn breaker_changed(&self, _plugin: &str, _transition: veneer::plugin::Transition) {}
    fn now_ms(&self) -> i64 {
        NoServices.now_ms()
    }
    fn request_id(&self) -> &str {
        "bench"
    }
    fn tenant(&self) -> &str {
        "bench"
    }
}

/// Element callbacks on the cloudflare page: product-links subscribed to every `a[href]`
/// (reads `href`, sets it, adds a class), per request from instantiation to the last byte,
/// against a declarative rule adding a class to the same elements (the same parse, matching
/// and output, done natively); the difference per callback is what calling the plugin costs.
fn element_callbacks(
    rt: &tokio::runtime::Runtime,
    links: &Plugin,
    noop: &Plugin,
    name: &str,
    page: &bytes::Bytes,
) {
    let services: Arc<dyn veneer::plugin::HostServices> =
        Arc::new(OneCampaign(vec![Arc::new(veneer::plugin::Campaign {
            id: "bench".into(),
            name: "Bench".into(),
            priority: 1,
            starts_at: 0,
            ends_at: i64::MAX,
            params: vec![],
        })]));
    let head = Arc::new(veneer::plugin::RequestHead {
        method: "GET".into(),
        path: "/".into(),
        host: "shop.example".into(),
        headers: vec![("accept".into(), "text/html".into())],
    });
    let resp = Arc::new(veneer::plugin::ResponseHead {
        status: 200,
        headers: vec![("content-type".into(), "text/html".into())],
    });
    let v = veneer_tests::test_visitor(veneer::plugin::DeviceClass::Desktop, &["returning"]);
    // The floor: the same elements found and changed by a declarative rule, natively.
    let declarative = || ResponsePlan {
        html: vec![HtmlRule {
            selector: "a[href]".into(),
            op: HtmlOp::AddClass("on-sale".into()),
        }],
        ..ResponsePlan::default()
    };
    let once = |plugin: &Plugin, floor: bool| {
        let (instance, plan) = rt.block_on(async {
            let mut i = plugin
                .instantiate(services.clone(), veneer::plugin::Admission::Run)
                .await
                .expect("instance");
            let plan = i.on_response(&head, &resp, &v).await.expect("on-response");
            (i, if floor { declarative() } else { plan })
        });
        rewrite_with(instance, plan, page)
    };
    let count = |chunks: &[bytes::Bytes], what: &[u8]| {
        let page = chunks.concat();
        page.windows(what.len()).filter(|w| w == &what).count()
    };
    let callbacks = count(&once(links, false), b"campaign=bench");
    let natively = count(&once(noop, true), b"on-sale");
    assert!(
        callbacks > 100 && natively == callbacks,
        "product-links tagged {callbacks} links, the declarative rule {natively}"
    );
    let reps = 200;
    let time = |plugin: &Plugin, floor: bool| {
        median(5, || {
            let s = Instant::now();
            for _ in 0..reps {
                black_box(once(plugin, floor));
            }
            s.elapsed() / reps
        })
    };
    let (with, floor) = (time(links, false), time(noop, true));
    let per = with.saturating_sub(floor).as_secs_f64() * 1e6 / callbacks as f64;
    println!(
        "{{\"scenario\":\"element-callbacks\",\"page\":\"{name}\",\"callbacks_per_request\":{callbacks},\"request_us\":{:.1},\"reference\":\"declarative-add-class\",\"reference_request_us\":{:.1},\"us_per_callback\":{per:.2},\"target_us\":1.0}}",
        with.as_secs_f64() * 1e6,
        floor.as_secs_f64() * 1e6,
    );
}

fn throughput(name: &str, page: &[u8], rt: &tokio::runtime::Runtime, plugin: &Plugin) {
    let reps = (20_000_000 / page.len()).max(5);
    let mbps = |d: Duration| (page.len() * reps) as f64 / d.as_secs_f64() / 1e6;
    let bytes = bytes::Bytes::copy_from_slice(page);
    black_box(raw_lol_html(page));
    black_box(veneer_pipeline(rt, plugin, &bytes));
    let raw = median(5, || {
        let s = Instant::now();
        for _ in 0..reps {
            black_box(raw_lol_html(page));
        }
        s.elapsed()
    });
    let ours = median(5, || {
        let s = Instant::now();
        for _ in 0..reps {
            black_box(veneer_pipeline(rt, plugin, &bytes));
        }
        s.elapsed()
    });
    println!(
        "{{\"scenario\":\"streaming-rewrite-3-rules\",\"page\":\"{name}\",\"bytes\":{},\"veneer_MBps\":{:.0},\"reference\":\"raw-lol-html\",\"reference_MBps\":{:.0},\"ratio\":{:.2},\"target_ratio\":0.8}}",
        page.len(),
        mbps(ours),
        mbps(raw),
        mbps(ours) / mbps(raw)
    );
}

/// Country lookups in the database tests/geoip.sh installs (`VENEER_GEOIP_DB`, or its default
/// place): median time per lookup over addresses spread across the IPv4 space.
fn geoip_lookup() {
    let path = std::env::var("VENEER_GEOIP_DB")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/geoip/geo-whois-asn-country-2.3.2026061719.mmdb")
        });
    let Ok(db) = veneer::geo::GeoDb::open(&path) else {
        eprintln!(
            "SKIPPED geoip: no database at {} (bash tests/geoip.sh installs it)",
            path.display()
        );
        return;
    };
    let ips: Vec<std::net::IpAddr> = (0..10_000u32)
        .map(|i| std::net::IpAddr::from(std::net::Ipv4Addr::from(i.wrapping_mul(2_654_435_761))))
        .collect();
    let found = ips.iter().filter(|ip| db.country(**ip).is_some()).count();
    let per = median(5, || {
        let start = Instant::now();
        for ip in &ips {
            black_box(db.country(*ip));
        }
        start.elapsed() / u32::try_from(ips.len()).unwrap_or(1)
    });
    println!(
        "{{\"scenario\":\"geoip-country-lookup\",\"database\":\"{}\",\"addresses\":{},\"with_country\":{found},\"median_ns\":{},\"target_ns\":1000}}",
        db.kind(),
        ips.len(),
        per.as_nanos()
    );
}

fn profiles(rt: &tokio::runtime::Runtime) {
    use veneer::profile::{Profiles, Subject};
    const CUSTOMERS: usize = 200_000;
    let dir = TempDir::new();
    let metrics = Arc::new(veneer::metrics::Metrics::default());
    let store = Arc::new(Profiles::open(&dir.0, 200_000, metrics.clone()).expect("profiles"));
    let mut lines = String::new();
    for i in 0..CUSTOMERS {
        lines.push_str(&format!(
            "{{\"customer\": \"c{i}\", \"attributes\": {{\"tier\": \"{}\", \"ltv\": {}, \"categories\": [\"boots\", \"tents\"]}}}}\n",
            ["gold", "silver", "bronze"][i % 3],
            i % 5000
        ));
    }
    let start = Instant::now();
    let report = store.import("bench", lines.as_bytes(), 1);
    let import = start.elapsed();
    assert_eq!(report.imported, CUSTOMERS);
    let config = veneer::config::ProfileConfig::default();
    let journey: Vec<veneer_rules::Condition> = [
        serde_json::json!({}),
        serde_json::json!({"topCategories": {"$size": {"$gt": 0}}}),
        serde_json::json!({"cart.items": {"$gt": 0}}),
        serde_json::json!({"purchases.count": {"$gt": 0}}),
    ]
    .iter()
    .map(|c| veneer_rules::Condition::compile(c).expect("condition"))
    .collect();
    let groups = veneer_rules::SavedGroups::default();
    let now = jiff::Timestamp::now().as_second();
    // Every customer once: the cache now holds them all (200,000 entries).
    let keys: Vec<Subject> = (0..CUSTOMERS)
        .map(|i| Subject::Customer(format!("c{}", (i * 7919) % CUSTOMERS)))
        .collect();
    let request = |subject: &Subject| {
        rt.block_on(async {
            let shared = store.get("bench", subject).await;
            let mut attributes = serde_json::json!({"id": "v", "visitCount": 3});
            if let serde_json::Value::Object(map) = &mut attributes {
                let p = shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                p.attributes_into(map, Some("c"), now, &config);
            }
            let stage = journey
                .iter()
                .rposition(|c| c.matches(&attributes, &groups));
            shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .viewed("boots", now, 3600.0);
            store.save("bench", subject, &shared);
            black_box((attributes, stage));
        });
    };
    let per = median(5, || {
        let start = Instant::now();
        for k in &keys {
            request(k);
        }
        start.elapsed() / u32::try_from(keys.len()).unwrap_or(1)
    });
    // A fresh host over the same store: every first lookup reads SQLite (off the worker).
    store.flush();
    let cold = Arc::new(Profiles::open(&dir.0, 200_000, metrics).expect("profiles"));
    let sample: Vec<&Subject> = keys.iter().step_by(40).collect();
    let start = Instant::now();
    for k in &sample {
        rt.block_on(async { black_box(cold.get("bench", k).await) });
    }
    let cold_per = start.elapsed() / u32::try_from(sample.len()).unwrap_or(1);
    println!(
        "{{\"scenario\":\"profile-lookup\",\"customers\":{CUSTOMERS},\"import_lines_per_s\":{},\"per_request_ns\":{},\"target_ns\":5000,\"first_read_from_store_ns\":{}}}",
        (CUSTOMERS as f64 / import.as_secs_f64()).round(),
        per.as_nanos(),
        cold_per.as_nanos()
    );
}

/// The per-request lines (noop, hero for both contracts, the JavaScript greeter), the geoip
/// lookup and the profile lookups.
fn per_request_lines(
    rt: &tokio::runtime::Runtime,
    runtime: &Runtime,
    noop: &Plugin,
    limits: Limits,
) {
    per_request(rt, noop, "noop", 2000);
    geoip_lookup();
    profiles(rt);
    let golden_hero =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/v0.1.0/hero.wasm");
    for (label, path) in [
        ("hero", golden_hero),
        ("hero", veneer_tests::plugin("hero")),
    ] {
        let hero = runtime
            .load(label, &path, HashMap::new(), limits)
            .expect("hero plugin");
        per_request(rt, &hero, label, 2000);
    }
    // The same contract from JavaScript (componentize-js: a JS engine in the component), to
    // show what a second language costs per request beside the Rust plugins above.
    let js = runtime
        .load(
            "js-greeter",
            &veneer_tests::js_plugin(),
            HashMap::new(),
            limits,
        )
        .expect("js plugin");
    per_request(rt, &js, "js-greeter", 200);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = TempDir::new();
    let runtime = Runtime::new(&RuntimeOptions {
        cache_dir: dir.0.clone(),
        max_memory_bytes: 64 << 20,
        max_instances: 64,
    })
    .expect("runtime");
    let limits = Limits {
        time_budget: Duration::from_millis(50),
        memory_bytes: 32 << 20,
        ..Limits::default()
    };
    let noop = runtime
        .load(
            "noop",
            &veneer_tests::plugin("noop"),
            HashMap::new(),
            limits,
        )
        .expect("noop plugin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    if std::env::args().any(|a| a == "profiles") {
        // `cargo bench -p veneer-tests --bench runtime -- profiles`: this one alone.
        profiles(&rt);
        return;
    }
    // `-- callbacks`: the element-callback line alone.
    let only_callbacks = std::env::args().any(|a| a == "callbacks");
    if !only_callbacks {
        per_request_lines(&rt, &runtime, &noop, limits);
    }
    let Some(pages) = veneer_tests::shared_pages() else {
        eprintln!("SKIPPED callbacks and throughput: ../shared/pages not found");
        return;
    };
    let links = runtime
        .load(
            "product-links",
            &veneer_tests::plugin("product-links"),
            HashMap::from([
                ("links".to_owned(), "a[href]".to_owned()),
                ("prices".to_owned(), String::new()),
            ]),
            limits,
        )
        .expect("product-links plugin");
    let cloudflare =
        bytes::Bytes::from(std::fs::read(pages.join("cloudflare.com.html")).expect("page"));
    element_callbacks(&rt, &links, &noop, "cloudflare.com.html", &cloudflare);
    if only_callbacks {
        return;
    }
    for name in [
        "cloudflare.com.html",
        "ecma402-spec.html",
        "html-parsing-spec.html",
    ] {
        let page = std::fs::read(pages.join(name)).expect("page");
        throughput(name, &page, &rt, &noop);
    }
}
