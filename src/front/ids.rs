//! Container ids as the ledger writes them (and names their markers,
//! `<state_dir>/held/<id>`, which the front looks for at a `delete`).

/// The bytes the ledger writes as they are (runc's id alphabet); every
/// other byte is percent-encoded there.
pub fn plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

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
