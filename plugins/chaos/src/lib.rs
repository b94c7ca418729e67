//! A deliberately faulty plugin. Its `mode` parameter picks the fault, so tests can prove
//! that each one leaves the visitor with the origin's response and the host serving:
//!
//! - `trap`: panics in `on-response` (a wasm trap).
//! - `trap-request`: panics in `on-request`.
//! - `loop`: spins forever in `on-response` (stopped by the epoch deadline).
//! - `sleep`: sleeps 30 s in `on-response` (waiting on a WASI timer, not running: stopped by
//!   the call's wall-clock limit).
//! - `oom`: allocates without bound (stopped by the memory limit).
//! - `bad-selector`: returns a plan with an invalid CSS selector.
//! - `trap-element`: subscribes to `a` and panics in the element callback, mid-stream.
//! - `amplify`: 5,000 rules `*` → `append-html` of 4 KB (a plan over the rule budget).
//! - `amplify-stream`: one rule `*` → `append-html` of 200 KB: within the plan budget, but the
//!   output outgrows the page, so the host cuts the plugin off mid-stream.
//! - `text-bomb`: subscribes to the text of `body` and answers each text node with 1 MB.
//! - `headers`: 50,000 response header edits.
//! - `forge-cookie`: sets the host's visitor cookie (`veneer_vid`) in a response header.
//! - `spin-element`: subscribes to `a` and spins in the element callback until its deadline.
//! - `flood`: records 100,000 analytics events and writes 100,000 log lines, then works.
//! - anything else: replaces the `h1` text, a control showing the plugin works when not faulting.

use veneer_sdk::prelude::*;

struct Chaos;

fn mode() -> String {
    config("mode").unwrap_or_default()
}

impl Plugin for Chaos {
    fn on_request(_request: &Request, _visitor: &Visitor) -> RequestAction {
        if mode() == "trap-request" {
            panic!("chaos: trap in on-request");
        }
        RequestAction::Continue(HeaderEdits::default())
    }

    fn on_response(_request: &Request, _response: &Response, _visitor: &Visitor) -> ResponsePlan {
        let mut plan = Plan::new();
        match mode().as_str() {
            "trap" => panic!("chaos: trap in on-response"),
            "sleep" => std::thread::sleep(std::time::Duration::from_secs(30)),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "bad-selector" => {
                plan.select("h1").set_inner_text("should never be seen");
                plan.select("div[[[").remove();
            }
            "trap-element" | "spin-element" => {
                plan.subscribe("a");
            }
            "amplify" => {
                let block = "x".repeat(4096);
                for _ in 0..5000 {
                    plan.select("*").append_html(&block);
                }
            }
            "amplify-stream" => {
                plan.select("*").append_html(&"y".repeat(200 << 10));
            }
            "text-bomb" => {
                plan.subscribe_text("body");
            }
            "headers" => {
                for i in 0..50_000 {
                    plan.set_header(&format!("x-chaos-{i}"), "1");
                }
            }
            "forge-cookie" => {
                plan.set_header("set-cookie", "veneer_vid=forged; Path=/");
            }
            "flood" => {
                for i in 0..100_000 {
                    analytics::track("flood", &[]);
                    log(Level::Info, &format!("flood {i}"));
                }
                plan.select("h1").set_inner_text("chaos was here");
            }
            _ => {
                plan.select("h1").set_inner_text("chaos was here");
            }
        }
        plan.build()
    }

    fn on_element(_subscription: u32, _element: &Element) {
        match mode().as_str() {
            "spin-element" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "trap-element" => panic!("chaos: trap in on-element"),
            _ => {}
        }
    }

    fn on_text(_subscription: u32, _text: &str) -> Option<String> {
        Some("z".repeat(1 << 20))
    }
}

export_plugin!(Chaos);
