//! Property tests of every reader of outside input: the request parser,
//! runc's argument parser, the OCI state reader, the bundle reader and the
//! node config. Arbitrary input never panics, a refusal is one line that
//! names what was refused, and what is accepted means what it says. (The
//! fuzzing of this issue, run for a bounded number of cases in CI; proptest
//! keeps failing cases under tests/properties.proptest-regressions.)

use std::ffi::OsString;
use std::path::Path;

use gpushare::config::Config;
use gpushare::request::{self, Devices, Request};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2000,
        ..ProptestConfig::default()
    }
}

/// Values that look like what people write, and bytes that do not.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9, ]{0,12}",
        "(GPU-|gpu-)[0-9a-fA-F-]{0,40}",
        "[0-9]{1,4}(\\.[0-9]{0,3})?",
        "([0-9]=)?[0-9]{0,10}[KMGTkmgtXB]{0,2}(,[0-9]=[0-9]{1,3}[MG])?",
        "(all|none|void|NaN|inf|1e3|-1|0|101|50\\.5)",
        any::<String>(),
        "\\PC{0,300}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn requests_never_panic_and_refusals_are_one_line(
        devices in value(), percent in value(), limit in value(), dup in value()
    ) {
        let env = [
            format!("NVIDIA_VISIBLE_DEVICES={dup}"),
            format!("NVIDIA_VISIBLE_DEVICES={devices}"),
            format!("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={percent}"),
            format!("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT={limit}"),
        ];
        match Request::from_env(env.iter().map(String::as_str)) {
            Ok(r) => {
                // The later variable wins, as in a shell.
                prop_assert_eq!(r.devices, request::parse_devices(&devices).unwrap());
                if let Some(p) = r.thread_percentage {
                    prop_assert!(p.value > 0.0 && p.value <= 100.0);
                }
                if let Some(l) = r.pinned_mem_limit {
                    prop_assert!(l.entries.iter().all(|(_, bytes, _)| *bytes > 0));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!msg.contains('\n') && !msg.contains('\0'), "{:?}", msg);
                prop_assert!(msg.starts_with(e.var) && msg.contains("accepted:"), "{}", msg);
                prop_assert!(msg.len() < 1024, "cut to a readable length: {}", msg.len());
            }
        }
    }

    #[test]
    fn accepted_device_lists_hold_only_well_formed_ids(devices in value()) {
        if let Ok(Devices::List(ids)) = request::parse_devices(&devices) {
            prop_assert!(!ids.is_empty());
            for id in ids {
                let text = id.to_string();
                prop_assert!(!text.is_empty() && !text.contains(',') && !text.contains(char::is_whitespace), "{:?}", text);
            }
        }
    }

    #[test]
    fn runc_command_lines_never_panic(args in proptest::collection::vec(
        prop_oneof![
            Just("create".to_owned()), Just("run".to_owned()), Just("delete".to_owned()),
            Just("--bundle".to_owned()), Just("-b".to_owned()), Just("--root".to_owned()),
            Just("--log".to_owned()), Just("--log-format".to_owned()), Just("json".to_owned()),
            Just("--".to_owned()), Just("-d".to_owned()), Just("--force".to_owned()),
            "[-a-z=/.]{0,12}", any::<String>(),
        ],
        0..10,
    )) {
        let os: Vec<OsString> = args.iter().map(OsString::from).collect();
        let inv = gpushare::runtime_args::parse(&os);
        if let Some(root) = &inv.root {
            prop_assert!(args.iter().any(|a| a.ends_with(root.to_str().unwrap_or("\0"))));
        }
        if let Some(c) = inv.create {
            // The id it found is one of the arguments, never made up.
            prop_assert!(args.contains(&c.id));
            prop_assert!(inv.subcommand.as_deref() == Some("create") || inv.subcommand.as_deref() == Some("run"));
        }
    }

    #[test]
    fn oci_states_never_panic(text in prop_oneof![
        any::<String>(),
        "\\{\"ociVersion\":\"1.0.2\",\"id\":\"[a-z0-9]{0,8}\",\"status\":\"(creating|created|running|stopped|bogus)\",\"pid\":-?[0-9]{0,6}(,\"bundle\":\"/b\")?(,\"annotations\":\\{\"gpushare/gpus\":\"[^\"]{0,10}\"\\})?\\}",
    ]) {
        if let Ok(state) = gpushare::hook::read_state(text.as_bytes()) {
            prop_assert!(!state.id().is_empty());
        }
    }

    #[test]
    fn node_configs_never_panic_and_refusals_name_a_key(text in prop_oneof![
        any::<String>(),
        "(\\[(runtime|devices|policy|mps|bogus)\\]\n)?(path|state_dir|root|inventory|max_gpus_per_container|all|control|x) = (\"[a-z/:]{0,10}\"|-?[0-9]{1,3}|true|\\[\\])\n{0,3}",
    ]) {
        if let Err(e) = Config::parse(&text, Path::new("/etc/gpushare/config.toml")) {
            let msg = e.to_string();
            prop_assert!(!msg.contains('\n'), "{:?}", msg);
            prop_assert!(msg.contains("/etc/gpushare/config.toml"), "{}", msg);
        }
    }

    #[test]
    fn bundles_of_any_shape_are_read_or_refused_cleanly(text in prop_oneof![
        any::<String>(),
        "\\{(\"process\":(\\{\"env\":(\\[(\"[A-Z_]{1,8}=[^\"]{0,8}\",?){0,3}\\]|\"x\"|null|3)\\}|null|\\[\\]))?\\}",
    ]) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), &text).unwrap();
        match gpushare::bundle::Bundle::open(dir.path()) {
            Ok(b) => {
                let _ = b.env();
            }
            Err(e) => prop_assert!(!e.to_string().contains('\n')),
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// The runtime reads a spec's environment through a partial spec (a
    /// filter before the whole document is built): wherever both read it,
    /// they read the same entries, and the partial reading never calls a
    /// document that is not JSON anything but refused.
    #[test]
    fn the_partial_reading_of_a_spec_agrees_with_the_whole_one(
        env in proptest::collection::vec(
            prop_oneof![
                value().prop_map(|v| format!("NVIDIA_VISIBLE_DEVICES={v}")),
                "[A-Z_]{1,12}=[ -~]{0,12}",
                "NVIDIA_VISIBLE_DEVICES",
                any::<String>(),
            ],
            0..6,
        ),
        extra in prop_oneof![Just(String::new()), Just(",\"x\":[1,2.5e3,-0,{}]".into()), "\\PC{0,20}"],
    ) {
        let doc = serde_json::json!({"ociVersion": "1.0.2", "process": {"env": env, "args": ["sh"]}});
        let mut text = doc.to_string();
        text.insert_str(text.len() - 1, &extra);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), &text).unwrap();
        let raw = gpushare::bundle::Raw::read(dir.path()).unwrap();
        let partial: Option<Vec<String>> = raw.env().ok().map(|e| e.iter().map(|s| s.to_string()).collect());
        let whole: Option<Vec<String>> = raw
            .parse()
            .ok()
            .and_then(|b| b.env().ok().map(|e| e.iter().map(|s| s.to_string()).collect()));
        prop_assert_eq!(partial, whole, "{}", text);
    }
}
