//! The glue of the musl build of gpushare-hook (src/bin/musl-glue.s),
//! assembled on its own and linked into a small C program that checks it
//! against the C library: memcpy and memmove over every size to 600 bytes,
//! misaligned both ends, overlapping both ways; the arguments, as the
//! standard library's start-up entry receives them. Needs a C compiler
//! (gcc) and objcopy, as the node build does.
#![cfg(target_arch = "x86_64")]

use std::path::Path;
use std::process::{Command, Stdio};

const HARNESS: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
void *glue_memcpy(void *, const void *, size_t);
void *glue_memmove(void *, const void *, size_t);
int main(int argc, char **argv, char **envp) {
    long a; char **v, **e;
    __asm__ volatile("call gpushare_musl_args" : "=D"(a), "=S"(v), "=d"(e) : : "memory", "cc");
    if (a != argc || v != argv || e != envp) {
        printf("arguments: %ld %p %p, not %d %p %p\n", a, (void *)v, (void *)e, argc, (void *)argv, (void *)envp);
        return 1;
    }
    static unsigned char x[1400], y[1400], want[1400];
    unsigned seed = 7;
    #define RAND() (seed = seed * 1103515245u + 12345u, (unsigned char)(seed >> 16))
    for (size_t n = 0; n <= 600; n++)
        for (int s = 0; s < 9; s++)
            for (int d = 0; d < 9; d++) {
                for (int i = 0; i < 1400; i++) { x[i] = RAND(); y[i] = RAND(); }
                memcpy(want, y, sizeof y);
                memcpy(want + d, x + s, n);
                if (glue_memcpy(y + d, x + s, n) != y + d || memcmp(y, want, sizeof y)) {
                    printf("memcpy of %zu bytes, source +%d, destination +%d\n", n, s, d);
                    return 1;
                }
                for (int shift = -20; shift <= 20; shift += 5) {
                    for (int i = 0; i < 1400; i++) x[i] = RAND();
                    memcpy(want, x, sizeof x);
                    int from = 400 + s, to = 400 + s + shift + d;
                    memmove(want + to, want + from, n);
                    if (glue_memmove(x + to, x + from, n) != x + to || memcmp(x, want, sizeof x)) {
                        printf("memmove of %zu bytes from %d to %d\n", n, from, to);
                        return 1;
                    }
                }
            }
    puts("ok");
    return 0;
}
"#;

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}: the glue test needs gcc and objcopy"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_musl_builds_memcpy_memmove_and_arguments_match_the_c_librarys() {
    let dir = tempfile::tempdir().unwrap();
    let glue =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin/musl-glue.s"))
            .unwrap();
    let object = dir.path().join("glue.o");
    let mut cc = Command::new("cc")
        .args(["-x", "assembler", "-c", "-o"])
        .arg(&object)
        .arg("-")
        .stdin(Stdio::piped())
        .spawn()
        .expect("cc: the glue test needs gcc");
    use std::io::Write;
    let mut stdin = cc.stdin.take().unwrap();
    stdin.write_all(b".intel_syntax noprefix\n").unwrap();
    stdin.write_all(glue.as_bytes()).unwrap();
    drop(stdin);
    assert!(cc.wait().unwrap().success(), "the glue assembles");
    // Renamed, so the harness compares them with the C library's own.
    run(Command::new("objcopy")
        .args([
            "--redefine-sym",
            "memcpy=glue_memcpy",
            "--redefine-sym",
            "memmove=glue_memmove",
            "--redefine-sym",
            "_dl_find_object=glue_dl_find_object",
        ])
        .arg(&object));
    let harness = dir.path().join("harness.c");
    std::fs::write(&harness, HARNESS).unwrap();
    let exe = dir.path().join("harness");
    run(Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&exe)
        .arg(&harness)
        .arg(&object));
    let out = Command::new(&exe).args(["one", "two"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}
