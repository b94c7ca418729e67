//! The `veneer` binary's rules and plugin commands, as marketers and plugin developers run them.

use std::io::Write;
use std::process::{Command, Stdio};

fn veneer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_veneer"))
}

#[test]
fn rules_eval_answers_every_line_in_order_and_survives_bad_lines() {
    let mut child = veneer()
        .args(["rules", "eval"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run veneer");
    let input = [
        r#"{"op":"condition","condition":{"country":{"$in":["NO","SE"]}},"attributes":{"country":"SE"}}"#,
        r#"this is not json"#,
        r#"{"op":"condition","condition":{"id":{"$inGroup":"vip"}},"attributes":{"id":"u1"},"savedGroups":{"vip":["u1"]}}"#,
        r#"{"op":"hash","seed":"seed","value":"a","version":2}"#,
        r#"{"op":"hash","seed":"seed","value":"a","version":7}"#,
        r#"{"op":"assign","experiment":{"key":"my-test","variations":[0,1],"coverage":0.4},"attributes":{"id":"1"}}"#,
        r#"{"op":"condition","condition":{"a":{"$regex":"(("}},"attributes":{}}"#,
    ]
    .join("\n");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[0], serde_json::json!({"result": true}));
    assert!(
        lines[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid request"))
    );
    assert_eq!(lines[2], serde_json::json!({"result": true}));
    assert_eq!(lines[3], serde_json::json!({"result": 0.0505}));
    assert_eq!(lines[4], serde_json::json!({"result": null}));
    assert_eq!(
        lines[5]["inExperiment"], false,
        "id 1 falls outside 40% coverage (GrowthBook's 'coverage - 1' case)"
    );
    assert_eq!(lines[5]["hashUsed"], false);
    assert!(
        lines[6]["error"]
            .as_str()
            .is_some_and(|e| e.contains("$.a.$regex")),
        "{}",
        lines[6]
    );
}

#[test]
fn stats_answers_every_line_in_order_in_the_documented_form() {
    let mut child = veneer()
        .arg("stats")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run veneer");
    let input = [
        // A 10 % control against 12 %: the variation is ahead, the split is exact.
        r#"{"metric":"proportion","arms":[{"users":1000,"sum":100},{"users":1000,"sum":120}],"weights":[0.5,0.5],"engine":"frequentist","difference":"relative","sequential":false,"prior":null}"#,
        r#"{"metric": "proportion""#,
        r#"{"metric":"mean","arms":[{"users":500,"sum":5000,"sum_squares":260000},{"users":520,"sum":5400,"sum_squares":280000},{"users":480,"sum":4700,"sum_squares":240000}],"engine":"bayesian","prior":{"mean":0,"variance":0.01}}"#,
    ]
    .join("\n");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 3);
    let v = &lines[0]["variations"][0];
    assert!((lines[0]["srm_p"].as_f64().unwrap_or(0.0) - 1.0).abs() < 1e-9);
    assert!(
        (v["expected"].as_f64().unwrap_or(0.0) - 0.2).abs() < 1e-9,
        "{v}"
    );
    let ci = v["ci"].as_array().expect("ci");
    assert!(
        ci[0].as_f64() < Some(0.0) && ci[1].as_f64() > Some(0.2),
        "{v}"
    );
    assert!(
        v["p_value"].as_f64().is_some_and(|p| p > 0.05 && p < 0.5),
        "{v}"
    );
    assert!(v["chance_to_win"].is_null() && v["risk"].is_null(), "{v}");
    assert!(lines[1]["error"].is_string(), "{}", lines[1]);
    let variations = lines[2]["variations"].as_array().expect("variations");
    assert_eq!(variations.len(), 2, "one entry per non-control arm");
    for v in variations {
        assert!(v["p_value"].is_null(), "{v}");
        assert!(
            v["chance_to_win"]
                .as_f64()
                .is_some_and(|c| (0.0..=1.0).contains(&c))
        );
        assert_eq!(v["risk"].as_array().map(Vec::len), Some(2));
    }
}

#[test]
fn rules_check_reports_every_error_with_its_location() {
    let dir = std::env::temp_dir().join(format!("veneer-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("rules.json");
    std::fs::write(&bad, r#"{"segments":{"a":{"x":{"$inn":[1]}},"b":{"y":{"$regex":"("}}},"experiments":[{"key":"e","variations":[1]}]}"#).expect("write");
    let out = veneer()
        .args(["rules", "check"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("segments.a.x.$inn: unknown operator"), "{err}");
    assert!(
        err.contains("segments.b.y.$regex: invalid regular expression"),
        "{err}"
    );
    assert!(
        err.contains("experiments[0] (e): needs at least 2 variations"),
        "{err}"
    );
    assert!(err.contains("3 error(s)"), "{err}");

    let good =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop/rules.json");
    let out = veneer()
        .args(["rules", "check"])
        .arg(&good)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("ok (7 segments, 1 experiments, 4 campaigns)")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_with_a_broken_config_names_file_field_and_problem() {
    let dir = std::env::temp_dir().join(format!("veneer-cli-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("veneer.toml");
    std::fs::write(&cfg, "[[tenant]]\nname = \"shop\"\nhosts = [\"x\"]\norigin = \"http://127.0.0.1:1\"\n[tenant.limits]\nplugin_time_ms = 0\n").expect("write");
    let out = veneer()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "veneer.toml: tenant[0] (shop).limits.plugin_time_ms: must be between 1 and 10000"
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plugin_check_names_the_contract_a_component_targets() {
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/v0.1.0/hero.wasm");
    let out = veneer()
        .args(["plugin", "check"])
        .arg(&golden)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .next()
            .is_some_and(|l| l.ends_with("hero.wasm: veneer:plugin@0.1.0")),
        "{stdout}"
    );
    assert!(
        stdout.contains("this host supports 0.1.0, 0.2.2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("exports: veneer:plugin/hooks@0.1.0"),
        "{stdout}"
    );

    let dir = std::env::temp_dir().join(format!("veneer-cli-core-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let out = veneer()
        .args(["plugin", "check"])
        .arg(&core)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("core.wasm: this is a core WebAssembly module, not a component"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn golden(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/v0.2.0")
        .join(name)
}

#[test]
fn plugin_run_shows_a_plugin_on_a_page_as_a_visitor_at_an_instant() {
    let dir = std::env::temp_dir().join(format!("veneer-cli-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let page = dir.join("page.html");
    std::fs::write(&page, "<html><body><p>Hello</p></body></html>").expect("page");
    let rules = dir.join("rules.json");
    std::fs::write(
        &rules,
        r#"{"campaigns": [{"id": "xmas", "start": "2026-12-01T00:00:00Z", "end": "2026-12-27T00:00:00Z",
            "params": {"banner": "Merry Christmas"}}]}"#,
    )
    .expect("rules");
    let run = |at: &str| {
        veneer()
            .args(["plugin", "run"])
            .arg(golden("campaign_banner.wasm"))
            .arg("--page")
            .arg(&page)
            .arg("--rules")
            .arg(&rules)
            .args(["--at", at])
            .env("VENEER_LOG", "warn")
            .output()
            .expect("run veneer")
    };
    let during = run("2026-12-24T12:00:00Z");
    let text = String::from_utf8_lossy(&during.stdout);
    assert!(
        during.status.success(),
        "{}",
        String::from_utf8_lossy(&during.stderr)
    );
    assert!(text.starts_with("200 /"), "{text}");
    assert!(text.contains("data-campaign=\"xmas\""), "{text}");
    let after = run("2026-12-27T00:00:00Z");
    assert!(!String::from_utf8_lossy(&after.stdout).contains("veneer-banner"));

    // A faulting plugin: the page is the origin's, the fault is listed, and the log line
    // carries the guest's panic message.
    let chaos = veneer()
        .args(["plugin", "run"])
        .arg(golden("chaos.wasm"))
        .arg("--page")
        .arg(&page)
        .args(["--param", "mode=trap"])
        .env("VENEER_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .expect("run veneer");
    let text = String::from_utf8_lossy(&chaos.stdout);
    assert!(text.contains("<p>Hello</p>"), "{text}");
    assert!(text.contains("kind=\"trap\""), "{text}");
    assert!(
        text.contains("page_view"),
        "an ordinary run records events: {text}"
    );
    let log = String::from_utf8_lossy(&chaos.stderr);
    assert!(
        log.contains("panicked at") && log.contains("chaos: trap in on-response"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs cargo for a crate outside the workspace, with the host build's flags kept out.
fn cargo(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/scaffold");
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("run cargo")
}

#[test]
fn a_new_plugin_builds_tests_and_runs_at_once() {
    let dir = std::env::temp_dir().join(format!("veneer-new-plugin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = veneer()
        .args(["new", "plugin", "cart-nudge", "--path"])
        .arg(&dir)
        .output()
        .expect("veneer new plugin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = veneer()
        .args(["new", "plugin", "cart-nudge", "--path"])
        .arg(&dir)
        .output()
        .expect("veneer new plugin");
    assert!(
        !again.status.success(),
        "an existing crate is never overwritten"
    );
    let bad = veneer()
        .args(["new", "plugin", "Cart Nudge"])
        .output()
        .expect("veneer new plugin");
    assert!(!bad.status.success());

    let test = cargo(&dir, &["test", "--quiet"]);
    assert!(
        test.status.success(),
        "native tests: {}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    let build = cargo(
        &dir,
        &["build", "--quiet", "--release", "--target", "wasm32-wasip2"],
    );
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let wasm = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/scaffold/wasm32-wasip2/release/cart_nudge.wasm");
    let page = dir.join("page.html");
    std::fs::write(&page, "<html><body><h1>Shop</h1></body></html>").expect("page");
    let run = veneer()
        .args(["plugin", "run"])
        .arg(&wasm)
        .arg("--page")
        .arg(&page)
        .args(["--segment", "returning"])
        .env("VENEER_LOG", "warn")
        .output()
        .expect("veneer plugin run");
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        text.contains(r#"<p class="greeting">Welcome back!</p><h1>Shop</h1>"#),
        "{text}{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // The scaffold's fixtures pass in the real host as written.
    let fixtures = dir.join("fixtures");
    let plugin_test = |extra: &[&str]| {
        veneer()
            .args(["plugin", "test"])
            .arg(&wasm)
            .arg("--fixtures")
            .arg(&fixtures)
            .args(extra)
            .output()
            .expect("veneer plugin test")
    };
    let tested = plugin_test(&[]);
    let report = String::from_utf8_lossy(&tested.stdout).into_owned();
    assert!(
        tested.status.success() && report.contains("2 passed, 0 failed"),
        "{report}{}",
        String::from_utf8_lossy(&tested.stderr)
    );
    // A changed expectation fails with a diff naming the line, and exit status 1.
    let expected = fixtures.join("returning-visitor/expected.txt");
    let text = std::fs::read_to_string(&expected).expect("expected.txt");
    std::fs::write(&expected, text.replace("Welcome back!", "Hello again!")).expect("edit");
    let failed = plugin_test(&[]);
    let report = String::from_utf8_lossy(&failed.stdout).into_owned();
    assert_eq!(failed.status.code(), Some(1), "{report}");
    assert!(
        report.contains("FAILED   returning-visitor: the answer differs")
            && !report.contains("-<!doctype html>")
            && report.contains("Hello again!")
            && report.contains("1 passed, 1 failed"),
        "{report}"
    );
    // --bless records what the plugin does now, and the next run passes.
    std::fs::remove_file(fixtures.join("first-visit/expected.txt")).expect("remove");
    let missing = plugin_test(&[]);
    assert!(
        String::from_utf8_lossy(&missing.stdout).contains("no expected.txt (run with --bless"),
        "{}",
        String::from_utf8_lossy(&missing.stdout)
    );
    assert!(plugin_test(&["--bless"]).status.success());
    assert_eq!(
        std::fs::read_to_string(&expected).expect("blessed"),
        text,
        "blessing restores what the plugin does"
    );
    assert!(plugin_test(&[]).status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plain HTTP/1.1 GET; the status line and body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// Polls `check` every 200 ms until it holds or `secs` pass.
fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    false
}

#[test]
fn veneer_dev_rebuilds_on_change_and_keeps_serving_when_a_build_fails() {
    let base = std::env::temp_dir().join(format!("veneer-dev-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (crate_dir, site) = (base.join("dev-greeter"), base.join("site"));
    std::fs::create_dir_all(site.join("about")).expect("site");
    std::fs::write(
        site.join("index.html"),
        "<html><body><h1>Shop</h1></body></html>",
    )
    .expect("index");
    std::fs::write(
        site.join("about/index.html"),
        "<html><body><h1>About</h1></body></html>",
    )
    .expect("about");
    assert!(
        veneer()
            .args(["new", "plugin", "dev-greeter", "--path"])
            .arg(&crate_dir)
            .status()
            .expect("new plugin")
            .success()
    );
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/scaffold");
    let mut child = veneer()
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--poll-ms",
            "100",
            "--plugin",
        ])
        .arg(&crate_dir)
        .arg("--site")
        .arg(&site)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .stderr(Stdio::piped())
        .spawn()
        .expect("veneer dev");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let log = log.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut l = log.lock().expect("log");
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    let text = || log.lock().expect("log").clone();
    let mut addr = String::new();
    let up = eventually(300, || {
        let t = text();
        let found = t
            .lines()
            .find_map(|l| l.strip_prefix("veneer dev: http://"))
            .and_then(|rest| rest.split('/').next())
            .map(str::to_owned);
        found.map(|a| addr = a).is_some()
    });
    assert!(up, "veneer dev started: {}", text());

    // The plugin personalizes the folder's pages; the visitor is switched from the query.
    let page = http_get(&addr, "/");
    assert!(
        page.contains(r#"<p class="greeting">Welcome!</p><h1>Shop</h1>"#),
        "{page}"
    );
    let returning = http_get(&addr, "/about?veneer_segment=returning");
    assert!(
        returning.contains(r#"<p class="greeting">Welcome back!</p><h1>About</h1>"#),
        "{returning}"
    );
    let bad = http_get(&addr, "/?veneer_at=tomorrow");
    assert!(
        bad.starts_with("HTTP/1.1 400") && bad.contains("veneer_at=tomorrow: an RFC 3339 instant"),
        "{bad}"
    );

    // An edit that changes the page is served once it is built.
    let lib = crate_dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).expect("lib.rs");
    std::fs::write(&lib, source.replace("\"Welcome!\"", "\"Hej!\"")).expect("edit");
    assert!(
        eventually(300, || http_get(&addr, "/")
            .contains(r#"<p class="greeting">Hej!</p>"#)),
        "the edit is served: {}",
        text()
    );

    // An edit that does not compile shows the compiler's error; the last build keeps serving.
    std::fs::write(
        &lib,
        source.replace("\"Welcome!\"", "\"Hej!\"") + "\nfn broken( {}\n",
    )
    .expect("edit");
    assert!(
        eventually(300, || text().contains("the previous build keeps serving")),
        "{}",
        text()
    );
    let t = text();
    assert!(t.contains("error") && t.contains("src/lib.rs"), "{t}");
    assert!(http_get(&addr, "/").contains(r#"<p class="greeting">Hej!</p>"#));

    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&base);
}
