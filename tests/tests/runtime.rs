//! The plugin runtime on its own: the compile cache survives a restart, limits are per tenant.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use veneer::plugin::{Limits, PluginFault, RequestHead, Runtime, RuntimeOptions};
use veneer_tests::{NoServices, TempDir};

fn options(dir: &TempDir) -> RuntimeOptions {
    RuntimeOptions {
        cache_dir: dir.0.clone(),
        max_memory_bytes: 64 << 20,
        max_instances: 16,
    }
}

fn limits() -> Limits {
    Limits {
        time_budget: Duration::from_millis(50),
        memory_bytes: 16 << 20,
        ..Limits::default()
    }
}

#[test]
fn a_restart_loads_compiled_plugins_from_the_cache() {
    let dir = TempDir::new();
    let first = Runtime::new(&options(&dir)).expect("runtime");
    let plugin = first
        .load(
            "hero",
            &veneer_tests::plugin("hero"),
            HashMap::new(),
            limits(),
        )
        .expect("load");
    assert!(!plugin.from_cache(), "a fresh cache compiles");
    drop((plugin, first));
    let entries = std::fs::read_dir(&dir.0).expect("cache dir").count();
    assert_eq!(entries, 1, "one cache entry per plugin");

    let restarted = Runtime::new(&options(&dir)).expect("runtime");
    let plugin = restarted
        .load(
            "hero",
            &veneer_tests::plugin("hero"),
            HashMap::new(),
            limits(),
        )
        .expect("load");
    assert!(plugin.from_cache(), "a restart must not recompile");
}

#[test]
fn tenants_deploying_the_same_component_share_one_loaded_copy() {
    let dir = TempDir::new();
    let rt = Runtime::new(&options(&dir)).expect("runtime");
    let path = veneer_tests::plugin("hero");
    let first = rt
        .load("hero", &path, HashMap::new(), limits())
        .expect("load");
    assert!(!first.from_cache());
    // With the compile cache gone, only the copy already in memory can avoid a compile.
    for entry in std::fs::read_dir(&dir.0).expect("dir") {
        std::fs::remove_file(entry.expect("entry").path()).expect("remove");
    }
    let params = HashMap::from([("selector".to_owned(), "h1".to_owned())]);
    let second = rt.load("hero-b", &path, params, limits()).expect("load");
    assert!(
        second.from_cache(),
        "the second tenant reuses the linked component"
    );
    assert_eq!(
        second.name(),
        "hero-b",
        "each tenant keeps its own name and params"
    );
    drop((first, second));
    let third = rt
        .load("hero", &path, HashMap::new(), limits())
        .expect("load");
    assert!(
        !third.from_cache(),
        "once no tenant holds it, the shared copy is released"
    );
}

#[test]
fn a_corrupt_cache_entry_is_recompiled_not_trusted_blindly() {
    let dir = TempDir::new();
    let rt = Runtime::new(&options(&dir)).expect("runtime");
    rt.load(
        "noop",
        &veneer_tests::plugin("noop"),
        HashMap::new(),
        limits(),
    )
    .expect("load");
    for entry in std::fs::read_dir(&dir.0).expect("dir") {
        std::fs::write(entry.expect("entry").path(), b"not a compiled module").expect("corrupt");
    }
    let plugin = rt
        .load(
            "noop",
            &veneer_tests::plugin("noop"),
            HashMap::new(),
            limits(),
        )
        .expect("recompiles");
    assert!(!plugin.from_cache());
}

#[test]
fn a_file_that_is_not_a_plugin_is_a_clear_load_error() {
    let dir = TempDir::new();
    let rt = Runtime::new(&options(&dir)).expect("runtime");
    let bogus = dir.0.join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x01\0\0\0").expect("write");
    let err = rt
        .load("bogus", &bogus, HashMap::new(), limits())
        .err()
        .expect("must fail");
    assert!(format!("{err:#}").contains("bogus.wasm"), "{err:#}");
}

#[tokio::test]
async fn each_request_gets_a_fresh_instance_and_a_spent_one_stays_faulted() {
    let dir = TempDir::new();
    let rt = Runtime::new(&options(&dir)).expect("runtime");
    let params = HashMap::from([("mode".to_owned(), "trap-request".to_owned())]);
    let chaos = rt
        .load("chaos", &veneer_tests::plugin("chaos"), params, limits())
        .expect("load");
    let head = Arc::new(RequestHead {
        method: "GET".into(),
        path: "/".into(),
        host: "x".into(),
        headers: vec![],
    });
    let visitor = veneer_tests::test_visitor(veneer::plugin::DeviceClass::Desktop, &[]);
    for _ in 0..3 {
        let mut instance = chaos
            .instantiate(Arc::new(NoServices), veneer::plugin::Admission::Run)
            .await
            .expect("instance");
        match instance.on_request(&head, &visitor).await {
            Err(PluginFault::Trap(message)) => assert!(
                message.contains("panicked at") && message.contains("chaos: trap in on-request"),
                "the fault carries the guest's panic message: {message}"
            ),
            other => panic!("expected a trap, got {other:?}"),
        }
        assert!(matches!(
            instance.on_request(&head, &visitor).await,
            Err(PluginFault::AlreadyFaulted)
        ));
    }
}
