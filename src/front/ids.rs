//! Container ids as the ledger writes them (and names their markers,
//! `<state_dir>/held/<id>`, which the front looks for at a `delete`).

/// The bytes the ledger writes as they are (runc's id alphabet); every
/// other byte is percent-encoded there.
pub fn plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-')
}

/// The longest id gpushare takes: a file name's length, since the
/// runtime's state directory and gpushare's marker are named by it.
pub const MAX_ID: usize = 255;

/// Why a container id is refused, by runc's own rule (`validateID`: the
/// bytes `[A-Za-z0-9_+.-]`, and `/<id>` already a clean path, so not `.`
/// or `..`), plus a file name's length. `None`: the id is valid.
///
/// Ref: runc libcontainer/factory_linux.go, validateID.
pub fn id_fault(id: &[u8]) -> Option<&'static str> {
    if id.is_empty() {
        Some("it is empty")
    } else if !id.iter().all(|&b| plain_byte(b)) {
        Some("it holds a byte outside letters, digits and _ + - .")
    } else if id == b"." || id == b".." {
        Some("it names a directory (. or ..)")
    } else if id.len() > MAX_ID {
        Some("it is longer than 255 bytes")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_by_runcs_rule() {
        for ok in [
            &b"c1"[..],
            b"a.b",
            b"...",
            b"a..b",
            b"A_b+c-9",
            &[b'x'; 255],
        ] {
            assert_eq!(id_fault(ok), None, "{:?}", core::str::from_utf8(ok));
        }
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"../x",
            b"a/b",
            b"\x1b[2J",
            b"a\nGPU 9 FAKE",
            b"a b",
            b"caf\xc3\xa9",
            &[b'x'; 256],
        ] {
            assert!(id_fault(bad).is_some(), "{:?}", bad);
        }
    }

    #[test]
    fn runc_ids_are_plain_and_nothing_else_is() {
        for b in b"abcXYZ019_.+-" {
            assert!(plain_byte(*b));
        }
        for b in b" /%\n\0$\"'" {
            assert!(!plain_byte(*b), "{b}");
        }
    }
}
