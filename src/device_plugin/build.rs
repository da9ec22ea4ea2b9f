//! The build script (Cargo.toml `build`): the code of the two protocols
//! gpushare speaks as a resident service, generated from the `.proto` files
//! beside their modules by protobuf compilers written in Rust (no system
//! `protoc` needed): the kubelet device-plugin API (gRPC, prost and tonic)
//! and NRI's plugin API (ttrpc, rust-protobuf, as the ttrpc crate takes).

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    let proto = "src/device_plugin/v1beta1.proto";
    println!("cargo:rerun-if-changed={proto}");
    let files =
        protox::compile([proto], ["src/device_plugin"]).unwrap_or_else(|e| panic!("{proto}: {e}"));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(files)
        .unwrap_or_else(|e| panic!("generating the code of {proto}: {e}"));

    let proto = "src/nri/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let nri = out.join("nri");
    std::fs::create_dir_all(&nri).expect("OUT_DIR is writable");
    ttrpc_codegen::Codegen::new()
        .out_dir(&nri)
        .input(proto)
        .include("src/nri")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .unwrap_or_else(|e| panic!("generating the code of {proto}: {e}"));
    // The generated files open with inner attributes (#![allow(...)]) and
    // inner doc comments, which a file included into a module may not
    // have: the module that includes them carries the attributes instead.
    for name in ["api.rs", "api_ttrpc.rs"] {
        let path = nri.join(name);
        let text = std::fs::read_to_string(&path).expect("generated");
        let kept: Vec<String> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("#!["))
            .map(|l| match l.strip_prefix("//!") {
                Some(rest) => format!("//{rest}"),
                None => l.to_owned(),
            })
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("OUT_DIR is writable");
    }
}
