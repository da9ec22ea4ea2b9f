//! The node config's `runtime.path` and `runtime.state_dir`, read from a
//! config written the plain way (`[runtime]` then `key = "value"` lines).
//! Anything else TOML allows (quoted or dotted keys, escapes, multi-line
//! strings, arrays, inline tables) is not read here: the answer is `None`
//! and the full runtime reads the file with a real TOML parser, reporting
//! any mistake by name.

/// Every table and key the node config knows (the full parser refuses
/// others by name; the front hands a config with others to it).
pub const SECTIONS: &[(&str, &[&str])] = &[
    (
        "runtime",
        &["path", "state_dir", "reservation_timeout_seconds"],
    ),
    ("devices", &["root", "inventory"]),
    (
        "policy",
        &[
            "max_gpus_per_container",
            "all",
            "max_thread_percentage_per_gpu",
            "default_thread_percentage",
            "percentage_without_mps",
        ],
    ),
    ("driver", &["inject", "root"]),
    (
        "mps",
        &[
            "root",
            "container_pipe_dir",
            "control",
            "compute_mode",
            "shm_size",
        ],
    ),
];

/// What the front needs of the config; slices borrow its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runtime<'a> {
    /// A name on PATH, or a path.
    pub path: &'a [u8],
    pub state_dir: &'a [u8],
}

/// The defaults, as `Config::default` has them.
pub const DEFAULT: Runtime<'static> = Runtime {
    path: b"runc",
    state_dir: b"/run/gpushare",
};

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &s[start..end]
}

fn bare_key(k: &[u8]) -> bool {
    !k.is_empty()
        && k.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// After a value: nothing, or a comment.
fn only_comment(rest: &[u8]) -> bool {
    let rest = trim(rest);
    rest.is_empty() || rest[0] == b'#'
}

/// A one-line string value with nothing to unescape, or `None`.
fn simple_string(v: &[u8]) -> Option<&[u8]> {
    let quote = *v.first()?;
    if quote != b'"' && quote != b'\'' {
        return None;
    }
    let body = &v[1..];
    let end = body.iter().position(|&b| b == quote)?;
    let s = &body[..end];
    if end == 0 && body.get(1) == Some(&quote) {
        return None; // """ or ''': a multi-line string
    }
    if s.iter().any(|&b| b == b'\\' || b < 0x20 || b == 0x7f) {
        return None;
    }
    only_comment(&body[end + 1..]).then_some(s)
}

/// A scalar that is not a string (number, boolean, date): one token.
fn simple_scalar(v: &[u8]) -> bool {
    let end = v
        .iter()
        .position(|&b| b == b' ' || b == b'\t' || b == b'#')
        .unwrap_or(v.len());
    let token = &v[..end];
    !token.is_empty()
        && token
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-' | b':'))
        && only_comment(&v[end..])
}

/// The runtime table of `text`; `None` when the text is not plain enough
/// to be sure what a TOML parser would make of it.
pub fn runtime(text: &[u8]) -> Option<Runtime<'_>> {
    core::str::from_utf8(text).ok()?;
    let mut out = DEFAULT;
    let (mut seen_path, mut seen_state) = (false, false);
    let mut in_runtime = false;
    let mut keys: &[&str] = &[];
    let mut runtime_tables = 0;
    for raw in text.split(|&b| b == b'\n') {
        let line = trim(raw.strip_suffix(b"\r").unwrap_or(raw));
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        if line[0] == b'[' {
            if line.get(1) == Some(&b'[') {
                return None;
            }
            let close = line.iter().position(|&b| b == b']')?;
            let name = trim(&line[1..close]);
            if !bare_key(name) || !only_comment(&line[close + 1..]) {
                return None;
            }
            keys = SECTIONS
                .iter()
                .find(|(section, _)| section.as_bytes() == name)?
                .1;
            in_runtime = name == b"runtime";
            runtime_tables += usize::from(in_runtime);
            if runtime_tables > 1 {
                return None;
            }
            continue;
        }
        let eq = line.iter().position(|&b| b == b'=')?;
        let key = trim(&line[..eq]);
        let value = trim(&line[eq + 1..]);
        // A key outside every table, or one its table does not know, is
        // the full parser's to refuse by name.
        if !bare_key(key) || !keys.iter().any(|k| k.as_bytes() == key) {
            return None;
        }
        let string = simple_string(value);
        if string.is_none() && !simple_scalar(value) {
            return None;
        }
        if !in_runtime {
            continue;
        }
        match key {
            b"path" => {
                let s = string.filter(|s| !s.is_empty())?;
                if seen_path {
                    return None;
                }
                seen_path = true;
                out.path = s;
            }
            b"state_dir" => {
                let s = string.filter(|s| s.first() == Some(&b'/'))?;
                if seen_state {
                    return None;
                }
                seen_state = true;
                out.state_dir = s;
            }
            _ => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_configs_are_read() {
        assert_eq!(runtime(b""), Some(DEFAULT));
        let r = runtime(
            b"# node config\n[runtime]\npath = \"/usr/sbin/runc\"   # low-level\nstate_dir = '/run/x'\nreservation_timeout_seconds = 120\n\n[devices]\nroot = \"/\"\ninventory = \"file:/x/inv.toml\"\n[policy]\nmax_thread_percentage_per_gpu = 100.0\nall = \"least-loaded\"\n",
        )
        .unwrap();
        assert_eq!(r.path, b"/usr/sbin/runc");
        assert_eq!(r.state_dir, b"/run/x");
        let r = runtime(b"[ runtime ]\r\npath=\"runc\"\r\n").unwrap();
        assert_eq!(r.path, b"runc");
        assert_eq!(r.state_dir, DEFAULT.state_dir);
        // What `gpushare simulate` writes.
        let sim = b"# A simulated node written by `gpushare simulate`.\n[runtime]\nstate_dir = \"/tmp/n/state\"\n\n[devices]\nroot = \"/tmp/n\"\ninventory = \"file:/tmp/n/inventory.toml\"\n\n# comment\n[driver]\nroot = \"/\"\n\n[mps]\nroot = \"/tmp/n/mps\"\n";
        assert_eq!(runtime(sim).unwrap().state_dir, b"/tmp/n/state");
    }

    #[test]
    fn anything_less_plain_is_left_to_the_full_parser() {
        for text in [
            &b"[runtime]\npath = \"run\\u0063\"\n"[..],
            b"[runtime]\npath = \"\"\"runc\"\"\"\n",
            b"[runtime]\npath = '''runc'''\n",
            b"runtime.path = \"/x\"\n",
            b"[runtime]\n\"path\" = \"/x\"\n",
            b"[runtime]\npath = [\"a\"]\n",
            b"[runtime]\npath = { a = 1 }\n",
            b"[runtime]\npath = 3\n",
            b"[runtime]\npath = \"\"\n",
            b"[runtime]\npath = \"a\"\npath = \"b\"\n",
            b"[runtime]\n[runtime]\n",
            b"[runtime.sub]\npath = \"x\"\n",
            b"[[gpu]]\nindex = 0\n",
            b"[runtime]\nstate_dir = \"relative\"\n",
            b"[runtime]\npath = \"a\" junk\n",
            b"[runtime\npath = \"a\"\n",
            b"[runtime]\njust words\n",
            b"[runtime]\npath = \"\xff\"\n",
            b"[runtime]\npath = \"a\tb\"\n",
            b"[runtime]\npth = \"/x\"\n",
            b"[runtme]\npath = \"/x\"\n",
            b"path = \"/x\"\n",
        ] {
            assert_eq!(runtime(text), None, "{:?}", String::from_utf8_lossy(text));
        }
    }
}
