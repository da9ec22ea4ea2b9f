//! Link settings of `gpushare-runtime`'s front (src/bin/gpushare-runtime.rs):
//! no C library and no start files (it has its own `_start`), linked
//! statically at a fixed address, so the kernel maps it and jumps in with
//! nothing to relocate or initialise.
fn main() {
    for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie"] {
        println!("cargo:rustc-link-arg-bin=gpushare-runtime={arg}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
