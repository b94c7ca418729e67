//! The plugin runtime on its own: the compile cache survives a restart, limits are per tenant.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use veneer::plugin::{Limits, PluginFault, RequestHead, Runtime, RuntimeOptions};
use veneer_tests::{NoServices, TempDir};

fn options(dir: &TempDir) -> RuntimeOptions {
    RuntimeOptions {
        cache_dir: dir.0.clone(),
        max_memory_bytes: 64 << 20,
        max_instances: 16,
    }
}

fn limits() -> Limits {
    Limits {
        time_budget: Duration::from_millis(50),
        memory_bytes: 16 << 20,
        ..Limits::default()
    }
}

/// Plugin `name` (built by tests/build.rs) in `rt`, with no params and [`limits`].
fn load(rt: &Runtime, name: &str) -> veneer::plugin::Plugin {
    rt.load(name, &veneer_tests::plugin(name), HashMap::new(), limits())
        .expect("load")
}

#[test]
fn a_restart_loads_compiled_plugins_from_the_cache() {
    let dir = TempDir::new();
    let first = Runtime::new(&options(&dir)).expect("runtime");
    let plugin = load(&first, "hero");
    assert!(!plugin.from_cache(), "a fresh cache compiles");
    drop((plugin, first));
    let entries = std::fs::read_dir(&dir.0).expect("cache dir").count();
    assert_eq!(entries, 1, "one cache entry per plugin");

    let restarted = Runtime::new(&options(&dir)).expect("runtime");
    let plugin = load(&restarted, "hero");
    assert!(plugin.from_cache(), "a restart must not recompile");
}

#[test]
fn tenants_deploying_the_same_component_share_one_loaded_copy() {
    let dir = TempDir::new();
    let rt = Runtime::new(&options(&dir)).expect("runtime");
    let path = veneer_tests::plugin("hero");
    let first = rt
        .load("hero", &path, HashMap::new(), limits())
        .expect("load");
    assert!(!first.from_cache());
    // With the compile cache gone, only the copy already in memory can avoid a compile.
    for entry in std::fs::read_dir(&dir.0).expect("dir") {
        std::fs::remove_file(entry.expect("entry").path()).expect("remove");
    }
    let params = HashMap::from([("selector".to_owned(), "h1".to_owned())]);
    let second = rt.load("hero-b", &path, params, limits()).expect("load");
    assert!(
        second.from_cache(),
        "the second tenant reuses the linked component"
    );
    assert_eq!(
        second.name(),
        "hero-b",
        "each tenant keeps its own name and params"
    );
    drop((first, second));
    let third = rt
        .load("hero", &path, HashMap::new(), limits())
        .expect("load");
    assert!(
        !third.from_cache(),
        "once no tenant holds it, the shared copy is released"
    );
}

#[test]
fn a_corrupt_cache_entry_is_recompiled_not_trusted_blindly() {
    let dir = TempDir::new();
    let rt = Runtime::new(&options(&dir)).expect("runtime");
    rt.load(
        "noop",
        &veneer_tests::plugin("noop"),
        HashMap::new(),
        limits(),
    )
    .expect("load");
    for entry in std::fs::read_dir(&dir.0).expect("dir") {
        std::fs::write(entry.expect("entry").path(), b"not a compiled module").expect("corrupt");
    }
    let plugin = rt
        .load(
            "noop",
            &veneer_tests::plugin("noop"),
            HashMap::new(),
            limits(),
        )
        .expect("recompiles");
    assert!(!plugin.from_cache());
}

#[test]
fn a_file_that_is_not_a_plugin_is_a_clear_load_error() {
    let dir = TempDir::new();
    let rt = Runtime::new(&options(&dir)).expect("runtime");
    let bogus = dir.0.join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x01\0\0\0").expect("write");
    let err = rt
        .load("bogus", &bogus, HashMap::new(), limits())
        .err()
        .expect("must fail");
    assert!(format!("{err:#}").contains("bogus.wasm"), "{err:#}");
}

#[tokio::test]
async fn each_request_gets_a_fresh_instance_and_a_spent_one_stays_faulted() {
    let dir = TempDir::new();
    let rt = Runtime::new(&options(&dir)).expect("runtime");
    let params = HashMap::from([("mode".to_owned(), "trap-request".to_owned())]);
    let chaos = rt
        .load("chaos", &veneer_tests::plugin("chaos"), params, limits())
        .expect("load");
    let head = Arc::new(RequestHead {
        method: "GET".into(),
        path: "/".into(),
        host: "x".into(),
        headers: vec![],
    });
    let visitor = veneer_tests::test_visitor(veneer::plugin::DeviceClass::Desktop, &[]);
    for _ in 0..3 {
        let mut instance = chaos
            .instantiate(Arc::new(NoServices), veneer::plugin::Admission::Run)
            .await
            .expect("instance");
        match instance.on_request(&head, &visitor).await {
            Err(PluginFault::Trap(message)) => assert!(
                message.contains("panicked at") && message.contains("chaos: trap in on-request"),
                "the fault carries the guest's panic message: {message}"
            ),
            other => panic!("expected a trap, got {other:?}"),
        }
        assert!(matches!(
            instance.on_request(&head, &visitor).await,
            Err(PluginFault::AlreadyFaulted)
        ));
    }
}

/// A body rewritten by `rules` (each `(selector, op, first_only)`), fed in `chunk`-byte pieces:
/// its output, and whether the rewriter was still parsing when the last chunk went in.
fn rewrite_in_chunks(
    rt: &Runtime,
    tokio: &tokio::runtime::Runtime,
    rules: &[(&str, veneer::plugin::HtmlOp, bool)],
    page: &[u8],
    chunk: usize,
) -> (Vec<u8>, bool) {
    use veneer::plugin::{HtmlRule, ResponsePlan, RuleOptions};
    use veneer::rewrite::{Coding, HtmlBody, HtmlJob, PluginHandle};

    let plugin = load(rt, "noop");
    let instance = tokio
        .block_on(plugin.instantiate(Arc::new(NoServices), veneer::plugin::Admission::Run))
        .expect("instance");
    let mut plan = ResponsePlan::default();
    for (i, (selector, op, first_only)) in rules.iter().enumerate() {
        plan.html.push(HtmlRule {
            selector: (*selector).into(),
            op: op.clone(),
        });
        if *first_only {
            plan.rule_options.insert(
                i,
                RuleOptions {
                    first_only: true,
                    ..RuleOptions::default()
                },
            );
        }
    }
    let handle = Arc::new(PluginHandle::new(
        Arc::from("rules"),
        Some(instance),
        veneer::plugin::Budget::default(),
    ));
    let job = HtmlJob {
        plugins: vec![(
            handle,
            veneer::rewrite::validate_plan(plan).expect("valid plan"),
        )],
        report: Arc::new(|_: &str, f: &PluginFault| panic!("fault: {f}")),
        on_unsupported_charset: None,
    };
    let mut body = HtmlBody::new(
        job,
        Coding::Identity,
        Coding::Identity,
        Some("text/html; charset=utf-8"),
    );
    let page = bytes::Bytes::copy_from_slice(page);
    let mut out = Vec::new();
    let mut parsing = true;
    for start in (0..page.len()).step_by(chunk) {
        parsing = body.parsing();
        let piece = page.slice(start..(start + chunk).min(page.len()));
        out.extend_from_slice(&body.push(piece).expect("push"));
    }
    out.extend_from_slice(&body.finish().expect("finish"));
    (out, parsing)
}

#[test]
fn rules_that_apply_once_stop_parsing_when_placed_and_change_nothing_else() {
    use veneer::plugin::HtmlOp;
    let dir = TempDir::new();
    let rt = Runtime::new(&options(&dir)).expect("runtime");
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    // After the targets: markup that would trip a parser fed from the middle of a tag (a
    // comment holding a tag, an unfinished-looking attribute, a script with `</`), and more
    // elements the selectors match, which first-match rules must leave alone.
    let tail = "<p class=\"a\" data-x='<h1>'>text &amp; more</p><!-- <title>x</title> -->\
        <script>if (a < b) { document.write('</div>') }</script>\
        <h1 class=\"hero\">second</h1><title>late</title><img src=x alt=\"a > b\">";
    let page = format!(
        "<!doctype html><html><head><title>Shop</title><meta name=\"description\" content=\"old\">\
         </head><body><h1 class=\"hero\">Welcome</h1><ul><li>one<li>two</ul>{}</body></html>",
        tail.repeat(40)
    );
    let rules = |first_only| {
        vec![
            (
                "title",
                HtmlOp::SetInnerText("Personalized".into()),
                first_only,
            ),
            ("h1.hero", HtmlOp::AddClass("veneer".into()), first_only),
            (
                "meta[name=description]",
                HtmlOp::SetAttribute(("content".into(), "new".into())),
                first_only,
            ),
        ]
    };
    let (whole, _) = rewrite_in_chunks(&rt, &tokio, &rules(true), page.as_bytes(), page.len());
    let text = String::from_utf8(whole.clone()).expect("utf-8");
    assert!(text.starts_with(
        "<!doctype html><html><head><title>Personalized</title><meta name=\"description\" content=\"new\">"
    ), "{text}");
    assert!(
        text.contains("<h1 class=\"hero veneer\">Welcome</h1>"),
        "{text}"
    );
    // Everything after the last target is the origin's, byte for byte.
    let after = page.find("<ul>").expect("marker");
    assert_eq!(&text[text.find("<ul>").expect("marker")..], &page[after..]);
    // Any chunking, including splits inside tags, comments and scripts, gives the same bytes,
    // and the rewriter stops parsing once the last target is placed.
    for size in [1, 2, 7, 64, 333, 1000] {
        let (out, parsing) = rewrite_in_chunks(&rt, &tokio, &rules(true), page.as_bytes(), size);
        assert_eq!(String::from_utf8_lossy(&out), text, "chunks of {size}");
        assert!(!parsing, "chunks of {size}: still parsing at the end");
    }
    // A rule that applies to every match keeps the whole page parsed.
    let (_, parsing) = rewrite_in_chunks(&rt, &tokio, &rules(false), page.as_bytes(), 64);
    assert!(parsing, "rules for every match must parse the whole page");
    // A content rule counts as placed only at its end tag: split inside the element, the
    // original content must still be replaced.
    let (out, _) = rewrite_in_chunks(
        &rt,
        &tokio,
        &[("title", HtmlOp::SetInnerHtml("<b>x</b>".into()), true)],
        b"<title>a very long original title</title><p>rest</p>",
        5,
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        "<title><b>x</b></title><p>rest</p>"
    );
}
