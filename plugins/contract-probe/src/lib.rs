//! Test fixture for contract 0.2.0's host side: on-response puts what each getter returned
//! into the page (`<pre id="probe">`, one `name=value` per line), and reports impressions of
//! campaign `sale` (twice: the host records one) and of `no-such-campaign` (ignored).
//! It declares itself deterministic though it reads the visitor's own inputs (visit count,
//! UTM parameters, a request header, the clock): the host must see that and never serve one
//! visitor's answer to another. With `probe = "wasi-clock"` it shows only the time, read
//! through WASI's wall clock. With `probe = "element"` it subscribes to `a[href]` and writes
//! what the element's getters returned into each link's `data-probe` attribute
//! (`tag|attribute("HREF")|attribute("no-such")|name=value;...`). With `probe = "hash-map"` it
//! counts the visitor's segments' letters in a `HashMap` (seeded through WASI's insecure seed)
//! and shows them sorted: a deterministic answer the host must still keep.

use veneer_sdk::prelude::*;

struct Probe;

fn show(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

impl Plugin for Probe {
    fn on_response(request: &Request, response: &Response, visitor: &Visitor) -> ResponsePlan {
        let mut plan = Plan::new();
        let probe = config("probe");
        if probe.as_deref() == Some("element") {
            plan.subscribe("a[href]");
            return plan.build();
        }
        if probe.as_deref() == Some("hash-map") {
            let mut letters = std::collections::HashMap::new();
            for c in visitor.segments().concat().chars() {
                *letters.entry(c).or_insert(0u32) += 1;
            }
            let mut counted: Vec<String> = letters.iter().map(|(c, n)| format!("{c}{n}")).collect();
            counted.sort();
            plan.select("body").append_html(&format!(
                "<pre id=\"probe\">letters={}</pre>",
                counted.join(",")
            ));
            return plan.build();
        }
        // With `probe = "wasi-clock"` it reads nothing but the time, through WASI (not the
        // host's now-ms).
        if probe.as_deref() == Some("wasi-clock") {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            plan.select("body")
                .append_html(&format!("<pre id=\"probe\">wasi-clock={nanos}</pre>"));
            return plan.build();
        }
        let live = campaigns::active();
        let sale = live.iter().find(|c| c.id() == "sale");
        let lines = [
            format!("method={}", request.method()),
            format!("path={}", request.path()),
            format!("ua={}", show(request.header("User-Agent"))),
            format!("status={}", response.status()),
            format!("type={}", show(response.header("content-type"))),
            format!("visits={}", visitor.visit_count()),
            format!("device={:?}", visitor.device()),
            format!("segments={}", visitor.segments().join(",")),
            format!("returning={}", visitor.in_segment("returning")),
            format!("utm-source={}", show(visitor.utm("source"))),
            format!("attr-visitCount={}", show(visitor.attribute("visitCount"))),
            format!("attr-utm={}", show(visitor.attribute("utm"))),
            format!("attr-missing={}", show(visitor.attribute("no-such"))),
            format!("consent-marketing={}", visitor.consents("marketing")),
            format!("consent-unknown={}", visitor.consents("telepathy")),
            format!("now-ms-positive={}", now_ms() > 1_700_000_000_000),
            format!("campaigns={}", live.len()),
            format!(
                "sale={}",
                sale.map_or("-".into(), |c| format!(
                    "{}|{}|{}",
                    c.name(),
                    c.starts_at(),
                    show(c.param("discount"))
                ))
            ),
        ];
        campaigns::impression("sale");
        campaigns::impression("sale");
        campaigns::impression("no-such-campaign");
        // Events are written in order: once this one is on disk, so is every impression.
        analytics::track("probe_done", &[]);
        plan.select("body")
            .append_html(&format!("<pre id=\"probe\">{}</pre>", lines.join("\n")));
        plan.build()
    }

    fn on_element(_subscription: u32, element: &Element) {
        let all: String = element
            .attributes()
            .iter()
            .map(|(name, value)| format!("{name}={value};"))
            .collect();
        element.set_attribute(
            "data-probe",
            &format!(
                "{}|{}|{}|{all}",
                element.tag(),
                show(element.attribute("HREF")),
                show(element.attribute("no-such"))
            ),
        );
    }
}

export_plugin!(Probe, deterministic);
