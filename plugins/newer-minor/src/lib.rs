//! Test fixture: a plugin built for `veneer:plugin@0.2.9`, a newer minor version than this
//! host's 0.2.0, that calls a function 0.2.0 does not have (`host.region`). Semver lets a
//! 0.2.9 component link to a 0.2.0 host only when it uses nothing newer, so the host must
//! refuse this one at load with a message saying so.

wit_bindgen::generate!({
    inline: r#"
        package veneer:plugin@0.2.9;
        interface host {
            region: func() -> option<string>;
        }
        interface hooks {
            on-text: func(subscription: u32, text: string) -> option<string>;
        }
        world personalizer {
            import host;
            export hooks;
        }
    "#,
});

struct Newer;

impl exports::veneer::plugin::hooks::Guest for Newer {
    fn on_text(_subscription: u32, text: String) -> Option<String> {
        veneer::plugin::host::region().map(|r| format!("{text} ({r})"))
    }
}

export!(Newer);
