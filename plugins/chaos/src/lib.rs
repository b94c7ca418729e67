//! A deliberately faulty plugin. Its `mode` parameter picks the fault, so tests can prove
//! that each one leaves the visitor with the origin's response and the host serving:
//!
//! - `trap`: panics in `on-response` (a wasm trap).
//! - `trap-request`: panics in `on-request`.
//! - `loop`: spins forever in `on-response` (stopped by the epoch deadline).
//! - `oom`: allocates without bound (stopped by the memory limit).
//! - `bad-selector`: returns a plan with an invalid CSS selector.
//! - `trap-element`: subscribes to `a` and panics in the element callback, mid-stream.
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
            "trap-element" => {
                plan.subscribe("a");
            }
            _ => {
                plan.select("h1").set_inner_text("chaos was here");
            }
        }
        plan.build()
    }

    fn on_element(_subscription: u32, _element: &Element) {
        panic!("chaos: trap in on-element");
    }
}

export_plugin!(Chaos);
