//! The build script (Cargo.toml `build`): the kubelet device-plugin API's
//! code, generated from `v1beta1.proto` beside it, client and server, with
//! a protobuf compiler written in Rust (no system `protoc` needed).

fn main() {
    let proto = "src/device_plugin/v1beta1.proto";
    println!("cargo:rerun-if-changed={proto}");
    let files =
        protox::compile([proto], ["src/device_plugin"]).unwrap_or_else(|e| panic!("{proto}: {e}"));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(files)
        .unwrap_or_else(|e| panic!("generating the code of {proto}: {e}"));
}
