//! Link settings of the two programs that run at every container start.
//!
//! `gpushare-runtime`'s front (src/bin/gpushare-runtime.rs): no C library
//! and no start files (it has its own `_start`), linked statically at a
//! fixed address, so the kernel maps it and jumps in with nothing to
//! relocate or initialise.
//!
//! `gpushare-hook` (also the full runtime): when GPUSHARE_MUSL_LIB names
//! musl's library directory (install/build.sh sets it for the node build on
//! x86_64) and the build is static, it is linked against musl's C library
//! and start files instead of glibc's. Static glibc's start-up probes the
//! CPU and its caches with `cpuid` dozens of times, each a trap to the
//! hypervisor on a VM (about 0.3 ms per start on the development VMs);
//! musl's does not. The standard library stays the one built for glibc's
//! target, whose symbols musl also provides on x86_64 with the same
//! layouts; src/bin/musl-glue.s carries the glue this needs and
//! src/bin/gpushare-hook.rs includes it, with an allocator (cfg
//! `gpushare_musl`).
use std::path::Path;

fn main() {
    for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie"] {
        println!("cargo:rustc-link-arg-bin=gpushare-runtime={arg}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/bin/musl-glue.s");
    println!("cargo::rustc-check-cfg=cfg(gpushare_musl)");
    println!("cargo:rerun-if-env-changed=GPUSHARE_MUSL_LIB");
    let Some(musl) = std::env::var_os("GPUSHARE_MUSL_LIB").filter(|v| !v.is_empty()) else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let static_gnu_x86_64 = var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && var("CARGO_CFG_TARGET_FEATURE")
            .split(',')
            .any(|f| f == "crt-static");
    if !static_gnu_x86_64 {
        // Only the static x86_64 build has the glue; others keep glibc.
        return;
    }
    let musl = Path::new(&musl);
    let file = |name: &str| {
        let p = musl.join(name);
        if !p.is_file() {
            panic!(
                "GPUSHARE_MUSL_LIB={}: no {name} there; install musl's development files (Debian: musl-dev) or unset it to link with glibc",
                musl.display()
            );
        }
        p.display().to_string()
    };
    // gcc's own begin/end files (they define __dso_handle), as musl-gcc uses.
    let gcc_file = |name: &str| {
        let out = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .arg(format!("-print-file-name={name}"))
            .output()
            .unwrap_or_else(|e| panic!("cc -print-file-name={name}: {e}"));
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !Path::new(&p).is_absolute() {
            panic!("cc does not know its {name}: a C compiler (gcc) is needed to link gpushare-hook against musl");
        }
        p
    };
    let args = [
        "-nostartfiles".to_owned(),
        format!("-L{}", musl.display()),
        file("rcrt1.o"),
        file("crti.o"),
        gcc_file("crtbeginS.o"),
        gcc_file("crtendS.o"),
        file("crtn.o"),
    ];
    file("libc.a");
    for arg in args {
        println!("cargo:rustc-link-arg-bin=gpushare-hook={arg}");
    }
    println!("cargo:rustc-cfg=gpushare_musl");
}
