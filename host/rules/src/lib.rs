//! Veneer's rules engine: who sees what.
//!
//! - [`condition`]: segment conditions in GrowthBook's condition language, compiled once and
//!   evaluated without allocating on the common path.
//! - [`hash`]: deterministic bucketing compatible with every GrowthBook SDK.
//! - [`experiment`]: the reference `run` semantics, with sticky bucketing.
//! - [`campaign`]: campaigns with exact start and end instants.
//! - [`caps`]: frequency caps across channels (per channel or any, per tag, per window).
//! - [`ruleset`]: a tenant's segments, experiments and campaigns checked as one document.
//! - [`cli`]: the JSON-lines protocol behind `veneer rules eval`.
//!
//! The crate does no I/O, so it is fast to test, fuzz and benchmark. JavaScript's coercion
//! rules, which the reference semantics depend on, are confined to one private module.

pub mod campaign;
pub mod caps;
pub mod cli;
pub mod condition;
pub mod experiment;
pub mod hash;
mod js;
pub mod ruleset;
mod version;

pub use campaign::Campaign;
pub use caps::CapRule;
pub use condition::{Condition, ConditionError, SavedGroups};
pub use experiment::{Assignment, Context, Experiment, ExperimentSpec, StickyDoc, StickyDocs};
pub use ruleset::{RuleError, RuleSet, SegmentSet};
