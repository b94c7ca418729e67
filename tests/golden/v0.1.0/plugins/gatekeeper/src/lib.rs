//! Golden fixture for the `on-request` hook of veneer:plugin@0.1.0:
//!
//! - `/old/...` is redirected (301) to `/new/...`;
//! - `/gone` is answered by the plugin itself: 410 with a short HTML body;
//! - every other request continues to the origin with `x-segment` set to the visitor's first
//!   segment (or `none`) and `x-remove-me` removed.

use veneer_sdk::prelude::*;

struct Gatekeeper;

impl Plugin for Gatekeeper {
    fn on_request(request: &Request, visitor: &Visitor) -> RequestAction {
        if let Some(rest) = request.path.strip_prefix("/old/") {
            return RequestAction::Redirect((301, format!("/new/{rest}")));
        }
        if request.path == "/gone" {
            return RequestAction::Respond(veneer_sdk::SyntheticResponse {
                status: 410,
                headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
                body: b"<h1>This page is gone</h1>".to_vec(),
            });
        }
        let segment = visitor.segments.first().map_or("none", String::as_str);
        RequestAction::Continue(veneer_sdk::HeaderEdits {
            set: vec![("x-segment".into(), segment.into())],
            remove: vec!["x-remove-me".into()],
        })
    }
}

export_plugin!(Gatekeeper);
