//! A plugin that changes nothing. Pages through it must be byte-identical to the origin's,
//! and its cost is the host's fixed per-request plugin overhead.

use veneer_sdk::prelude::*;

struct Noop;

impl Plugin for Noop {}

export_plugin!(Noop);
