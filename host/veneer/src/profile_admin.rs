//! The admin API's profile routes: CRM import, and a customer's or visitor's data on request
//! (export and erasure, for data-subject requests). Each is recorded in the audit log; an
//! erasure names the subject there only by a hash, so the log keeps no trace of them.

use http::StatusCode;
use serde_json::{Value, json};

use crate::control::{ApiError, Control, Principal, blocking};
use crate::profile::{Subject, valid_customer_id};

/// Largest import body (the CLI sends a file in parts of at most this).
pub const MAX_IMPORT_BYTES: usize = 16 << 20;

/// The subject a route names: `customers/ID` or `visitors/ID`.
pub fn subject(kind: &str, id: &str) -> Result<Subject, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a usable id"),
        )
    };
    match kind {
        "customers" if valid_customer_id(id) => Ok(Subject::Customer(id.to_owned())),
        "visitors" if valid_customer_id(id) => Ok(Subject::Visitor(id.to_owned())),
        "customers" | "visitors" => Err(bad()),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "use profiles/customers/ID or profiles/visitors/ID",
        )),
    }
}

/// Imports CRM attributes from JSON lines; `first_line` numbers the body's first line.
pub async fn import(
    c: &Control,
    who: &Principal,
    tenant: &str,
    body: Vec<u8>,
    first_line: usize,
) -> Result<Value, ApiError> {
    c.record(tenant)?;
    if first_line == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "first_line: lines are numbered from 1",
        ));
    }
    let (profiles, t) = (c.app().profiles.clone(), tenant.to_owned());
    let report = blocking(move || Ok(profiles.import(&t, &body, first_line))).await?;
    c.store.audit_action(
        &who.actor,
        "profiles.import",
        tenant,
        None,
        Some(format!(
            "{} imported, {} refused",
            report.imported, report.refused_count
        )),
    )?;
    Ok(json!(report))
}

/// Everything kept about a subject: the profile, the visitors linked to a customer, and
/// their rows in the experiment ledger. 404 when nothing is known.
pub async fn export(
    c: &Control,
    who: &Principal,
    tenant: &str,
    s: Subject,
) -> Result<Value, ApiError> {
    c.record(tenant)?;
    let app = c.app().clone();
    let t = tenant.to_owned();
    let found = blocking(move || -> Result<Option<Value>, ApiError> {
        let profile = app.profiles.export(&t, &s);
        let visitors = match (&s, &profile) {
            (Subject::Customer(_), Some(p)) => p.visitors.clone(),
            (Subject::Customer(_), None) => Vec::new(),
            (Subject::Visitor(v), _) => vec![v.clone()],
        };
        let ledger = match &app.ledger {
            Some(l) => l
                .visitor_rows(&t, &visitors)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?,
            None => json!({}),
        };
        let recorded = ledger.as_object().is_some_and(|o| {
            o.values()
                .any(|rows| rows.as_array().is_some_and(|r| !r.is_empty()))
        });
        if profile.is_none() && !recorded {
            return Ok(None);
        }
        let who = match &s {
            Subject::Customer(id) => json!({"customer": id}),
            Subject::Visitor(id) => json!({"visitor": id}),
        };
        Ok(Some(json!({
            "subject": who,
            "profile": profile,
            "visitors": visitors,
            "ledger": ledger,
        })))
    })
    .await?;
    c.store
        .audit_action(&who.actor, "profiles.export", tenant, None, None)?;
    found.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "nothing is kept about them"))
}

/// Forgets a subject: their profile, the profiles of the visitors linked to a customer, those
/// visitors' rows in the experiment ledger, and their events in the analytics log (and the
/// customer's own, which e-mail opens and clicks are logged under).
pub async fn erase(
    c: &Control,
    who: &Principal,
    tenant: &str,
    s: Subject,
) -> Result<Value, ApiError> {
    c.record(tenant)?;
    let app = c.app().clone();
    let t = tenant.to_owned();
    let hashed = crate::store::sha256_hex(s.key().as_bytes());
    let visitors = {
        let (app, t, s) = (app.clone(), t.clone(), s.clone());
        blocking(move || {
            Ok(match &s {
                Subject::Customer(_) => app
                    .profiles
                    .export(&t, &s)
                    .map(|p| p.visitors)
                    .unwrap_or_default(),
                Subject::Visitor(v) => vec![v.clone()],
            })
        })
        .await?
    };
    // The log first: if it cannot be rewritten nothing is erased yet, and asking again finds
    // the same linked visitors.
    let mut logged_as = visitors.clone();
    if let Subject::Customer(id) = &s {
        logged_as.push(id.clone());
    }
    app.analytics
        .erase(tenant, logged_as.clone())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "the analytics log could not be rewritten ({e}); the profiles were not erased: \
                 ask again"
                ),
            )
        })?;
    let erased = visitors.len();
    blocking(move || {
        let mut subjects = vec![s.clone()];
        subjects.extend(
            visitors
                .iter()
                .filter(|v| !matches!(&s, Subject::Visitor(me) if me == *v))
                .map(|v| Subject::Visitor(v.clone())),
        );
        app.profiles.erase(&t, &subjects);
        // E-mail opens and clicks are in the ledger under the customer's own id.
        if let Some(ledger) = &app.ledger {
            ledger.erase_visitors(&t, logged_as);
        }
        Ok(())
    })
    .await?;
    c.store.audit_action(
        &who.actor,
        "profiles.erase",
        tenant,
        Some(&format!("sha256:{hashed}")),
        None,
    )?;
    Ok(json!({"erased": true, "visitors": erased}))
}
