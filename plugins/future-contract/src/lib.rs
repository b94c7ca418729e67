//! Test fixture: a plugin built for `veneer:plugin@0.3.0`, a contract version this host does
//! not implement. The host must refuse it at load, naming its version and the supported ones,
//! instead of failing it on every request. Its WIT is inline and minimal on purpose: only the
//! version of the hooks export matters.

wit_bindgen::generate!({
    inline: r#"
        package veneer:plugin@0.3.0;
        interface hooks {
            on-text: func(subscription: u32, text: string) -> option<string>;
        }
        world personalizer {
            export hooks;
        }
    "#,
});

struct Future;

impl exports::veneer::plugin::hooks::Guest for Future {
    fn on_text(_subscription: u32, text: String) -> Option<String> {
        Some(text)
    }
}

export!(Future);
