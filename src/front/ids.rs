//! Container ids as the ledger writes them, and the front's question
//! about a `delete`: has gpushare ever recorded this container?

/// The bytes the ledger writes as they are (runc's id alphabet); every
/// other byte is percent-encoded there.
pub fn plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-')
}

/// Whether the ledger bytes (snapshot or journal) record container `id`,
/// which must be plain (`None` otherwise: the caller cannot be sure): an
/// entry line `E <id> …` or a release `X <id> $` at a line's start, or a
/// record of the earlier JSON form (`"id":"<id>"`).
pub fn mentions(ledger: &[u8], id: &[u8]) -> Option<bool> {
    if id.is_empty() || !id.iter().all(|&b| plain_byte(b)) {
        return None;
    }
    let last = id[id.len() - 1];
    let mut legacy = false;
    for line in ledger.split(|&b| b == b'\n') {
        // Cheap tests first: the kind, the separators, the id's last byte.
        if line.len() > id.len() + 2
            && matches!(line[0], b'E' | b'X')
            && line[1] == b' '
            && line[2 + id.len()] == b' '
            && line[1 + id.len()] == last
            && &line[2..2 + id.len()] == id
        {
            return Some(true);
        }
        legacy |= line.first() == Some(&b'{');
    }
    // The earlier JSON form, only where there is any.
    Some(
        legacy && {
            let key = b"\"id\":\"";
            let n = key.len() + id.len() + 1;
            ledger.len() >= n
                && (0..=ledger.len() - n).any(|i| {
                    ledger[i] == b'"'
                        && ledger[i + n - 1] == b'"'
                        && ledger[i + n - 2] == last
                        && &ledger[i..i + key.len()] == key
                        && &ledger[i + key.len()..i + n - 1] == id
                })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_ids_at_line_starts_and_in_the_earlier_form() {
        let l = b"gpushare-ledger 2\nE abc 1 - - - GPU-1 2 {}\nX de.f $\n";
        assert_eq!(mentions(l, b"abc"), Some(true));
        assert_eq!(mentions(l, b"de.f"), Some(true));
        assert_eq!(mentions(l, b"ab"), Some(false));
        assert_eq!(mentions(l, b"abcd"), Some(false));
        assert_eq!(mentions(l, b"GPU-1"), Some(false));
        assert_eq!(
            mentions(b"{\"version\":1,\"entries\":[{\"id\":\"old\"}]}", b"old"),
            Some(true)
        );
        assert_eq!(mentions(b"{\"id\":\"older\"}", b"old"), Some(false));
        assert_eq!(mentions(l, b"a b"), None);
        assert_eq!(mentions(l, b""), None);
    }
}
