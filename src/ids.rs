//! The syntax of the names gpushare reads: container ids (runc's rule),
//! GPU UUIDs and PCI bus ids. A leaf: it imports nothing of the crate, and
//! says only whether a name is well formed; which GPU a name means is the
//! decision's business, against the inventory.

use std::fmt;

/// The bytes of runc's id alphabet.
pub fn plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-')
}

/// The longest id gpushare takes: a file name's length, since runtimes name
/// their state directories by it.
pub const MAX_ID: usize = 255;

/// A container id gpushare will not hold: it would name files (the
/// runtime's state directory) and show in `status`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("container id {shown} is refused: {why}; use letters, digits and _ + - . only (runc's rule), at most 255 bytes")]
pub struct IdError {
    /// The id as a message may show it (quoted and made visible).
    pub shown: String,
    pub why: &'static str,
}

/// Checks a container id by runc's own rule (`validateID`: the bytes
/// `[A-Za-z0-9_+.-]`, and `/<id>` already a clean path, so not `.` or
/// `..`), plus a file name's length. `shown` renders the id for the error.
///
/// Ref: runc libcontainer/factory_linux.go, validateID.
pub fn check_id(id: &str, shown: impl FnOnce(&str) -> String) -> Result<(), IdError> {
    let why = if id.is_empty() {
        "it is empty"
    } else if !id.bytes().all(plain_byte) {
        "it holds a byte outside letters, digits and _ + - ."
    } else if id == "." || id == ".." {
        "it names a directory (. or ..)"
    } else if id.len() > MAX_ID {
        "it is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(IdError {
        shown: shown(id),
        why,
    })
}

/// Whether `s` is written as a GPU UUID or a prefix of one: `GPU-` (any
/// case) and then hex digits and dashes.
pub fn is_uuid_or_prefix(s: &str) -> bool {
    s.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("GPU-"))
        && s.len() > 4
        && s[4..].bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Whether `s` names a MIG device (`MIG-…`), which gpushare does not place.
pub fn is_mig(s: &str) -> bool {
    s.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("MIG-"))
}

/// A PCI address as numbers (domain, bus, device, function): sorts in PCI
/// order, and prints in NVML's spelling (`00000000:00:1E.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciAddress {
    /// Parses `[domain:]bus:device.function` in any case, with a domain of
    /// up to 8 hex digits.
    pub fn parse(s: &str) -> Option<PciAddress> {
        let (rest, function) = s.rsplit_once('.')?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, v] => (*d, *b, *v),
            [b, v] => ("0", *b, *v),
            _ => return None,
        };
        let hex = |s: &str, max: usize| {
            (!s.is_empty() && s.len() <= max && s.bytes().all(|c| c.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(s, 16).ok())
                .flatten()
        };
        let address = PciAddress {
            domain: hex(domain, 8)?,
            bus: hex(bus, 2)? as u8,
            device: u8::try_from(hex(device, 2)?).ok()?,
            function: u8::try_from(hex(function, 1)?).ok()?,
        };
        (address.device < 32 && address.function < 8).then_some(address)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:08X}:{:02X}:{:02X}.{:X}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(s: &str) -> String {
        format!("{s:?}")
    }

    #[test]
    fn ids_by_runcs_rule() {
        let long = "x".repeat(255);
        for ok in ["c1", "a.b", "...", "a..b", "A_b+c-9", long.as_str()] {
            assert_eq!(check_id(ok, quoted), Ok(()), "{ok}");
        }
        let too_long = "x".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "\x1b[2J",
            "a\nGPU 9 FAKE",
            "a b",
            "café",
            too_long.as_str(),
        ] {
            let e = check_id(bad, quoted).unwrap_err();
            assert_eq!(e.shown, quoted(bad));
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

    #[test]
    fn uuid_and_mig_syntax() {
        for ok in [
            "GPU-4a1c",
            "gpu-4A1C-00",
            "GPU-4a1c9d20-5a7e-4d00-8000-000000000000",
        ] {
            assert!(is_uuid_or_prefix(ok), "{ok}");
        }
        for bad in ["GPU-", "GPU-xyz", "4a1c", "GPU_4a1c", "MIG-4a1c"] {
            assert!(!is_uuid_or_prefix(bad), "{bad}");
        }
        assert!(is_mig("mig-1") && !is_mig("GPU-1"));
    }

    #[test]
    fn pci_ids_in_every_spelling() {
        let want = PciAddress {
            domain: 0,
            bus: 0,
            device: 0x1e,
            function: 0,
        };
        for s in ["00000000:00:1E.0", "0000:00:1e.0", "00:1e.0", "0:0:1E.0"] {
            assert_eq!(PciAddress::parse(s), Some(want), "{s}");
        }
        assert_eq!(want.to_string(), "00000000:00:1E.0");
        for s in [
            "",
            "00:1e",
            "00:00:1e.8",
            "zz:00:1e.0",
            "00:00:20.0",
            "1:2:3:4.0",
            "00:100:1e.0",
        ] {
            assert_eq!(PciAddress::parse(s), None, "{s}");
        }
    }
}
