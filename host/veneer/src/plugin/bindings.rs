#![expect(
    missing_docs,
    reason = "generated bindings; the WIT file documents every item"
)]

//! The one place `bindgen!` runs. Generated code stays in this private module; the rest of
//! the crate sees only the types re-exported from [`super`].

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "personalizer",
    // Calls into plugins are driven as futures (see `Instance`): wasmtime-wasi's synchronous
    // host code would try to block on tokio from inside a tokio worker.
    exports: { default: async },
});
