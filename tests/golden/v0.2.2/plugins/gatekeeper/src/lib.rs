//! The `on-request` hook: decide before the origin is contacted.
//!
//! - `/old/...` is redirected (301) to `/new/...`;
//! - `/gone` is answered by the plugin itself: 410 with a short HTML body;
//! - every other request continues to the origin with `x-segment` set to the visitor's first
//!   segment (or `none`) and `x-remove-me` removed.
//!
//! The same behaviour as the golden 0.1.0 `gatekeeper`, so the contract tests can compare them.

use veneer_sdk::prelude::*;

struct Gatekeeper;

impl Plugin for Gatekeeper {
    fn on_request(request: &Request, visitor: &Visitor) -> RequestAction {
        let path = request.path();
        if let Some(rest) = path.strip_prefix("/old/") {
            return RequestAction::Redirect((301, format!("/new/{rest}")));
        }
        if path == "/gone" {
            return RequestAction::Respond(SyntheticResponse {
                status: 410,
                headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
                body: b"<h1>This page is gone</h1>".to_vec(),
            });
        }
        let segment = visitor
            .segments()
            .into_iter()
            .next()
            .unwrap_or_else(|| "none".into());
        RequestAction::Continue(HeaderEdits {
            set: vec![("x-segment".into(), segment)],
            remove: vec!["x-remove-me".into()],
        })
    }
}

export_plugin!(Gatekeeper);
