//! Not a test: a notice. The end-to-end tests (integration/) need root,
//! runc, the engines and NVIDIA's user-space, so they are built only with
//! the `root-tests` feature, which install/test.sh turns on (and where a
//! missing prerequisite fails them loudly). A plain `cargo test` runs
//! everything else and prints this one line, so nothing is left out
//! silently.

fn main() {
    if !cfg!(feature = "root-tests") {
        println!(
            "gpushare: the end-to-end tests (runc, the hook alone, MPS, the driver's files, Docker, containerd and its CRI, podman, the adversarial table) need root and were not built: run install/test.sh as root (cargo test --features root-tests)"
        );
    }
}
