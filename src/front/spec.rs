//! Whether a bundle's config.json asks for a GPU, read without allocating:
//! the whole document is checked to be JSON that serde_json would take
//! (an object at the top, strings valid UTF-8 with valid escapes, finite
//! numbers, nesting under serde_json's limit, nothing after it), and
//! `process.env` is read with the request's own rule: the last
//! `NVIDIA_VISIBLE_DEVICES` entry decides; unset, empty or naming `void`
//! means not a GPU container.
//!
//! The answer is `None` wherever the full runtime could read the document
//! differently: a key or an env entry with escapes, a key given twice, an
//! env that is not an array of strings, a value with non-ASCII bytes.

/// What the spec asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Not a GPU container: the spec is to be left exactly as it is.
    NotGpu,
    /// A GPU container (or `none`): the full runtime decides.
    Gpu,
}

/// serde_json refuses documents nested deeper than 128; stop well before.
const MAX_DEPTH: usize = 100;

const VISIBLE_DEVICES: &[u8] = b"NVIDIA_VISIBLE_DEVICES";

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
    depth: usize,
}

/// A string's raw bytes between its quotes, and whether it held escapes.
struct Str<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    fn hex4(&mut self) -> Option<u16> {
        let h = self.b.get(self.i..self.i + 4)?;
        let mut v = 0u16;
        for &c in h {
            v = v * 16 + (c as char).to_digit(16)? as u16;
        }
        self.i += 4;
        Some(v)
    }

    fn string(&mut self) -> Option<Str<'a>> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            self.i += 1;
                            let u = self.hex4()?;
                            if (0xD800..0xDC00).contains(&u) {
                                // A high surrogate needs its low half.
                                self.literal(b"\\u")?;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return None;
                                }
                            } else if (0xDC00..0xE000).contains(&u) {
                                return None;
                            }
                        }
                        _ => return None,
                    }
                }
                0x00..=0x1f => return None,
                _ => {}
            }
        }
        Some(Str {
            raw: &self.b[start..self.i - 1],
            escaped,
        })
    }

    fn number(&mut self) -> Option<()> {
        let start = self.i;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        // serde_json refuses what does not fit a finite f64.
        let text = core::str::from_utf8(&self.b[start..self.i]).ok()?;
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|_| ())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    /// Skips one value, checking it.
    fn value(&mut self) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'{' => self.object(|_, r| r.value()),
            b'[' => self.array(|r| r.value()),
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    /// An object, `member` reading each member's value after its key.
    fn object(&mut self, mut member: impl FnMut(Str<'a>, &mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        if self.eat(b'}').is_none() {
            loop {
                self.ws();
                let key = self.string()?;
                self.ws();
                self.eat(b':')?;
                member(key, self)?;
                self.ws();
                if self.eat(b',').is_none() {
                    self.eat(b'}')?;
                    break;
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        if self.eat(b']').is_none() {
            loop {
                item(self)?;
                self.ws();
                if self.eat(b',').is_none() {
                    self.eat(b']')?;
                    break;
                }
            }
        }
        self.depth -= 1;
        Some(())
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_space(b)).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| !is_space(b))
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// The request rule on the last `NVIDIA_VISIBLE_DEVICES` value: unset,
/// empty or naming `void` is not a GPU container.
fn ask_of(value: Option<&[u8]>) -> Ask {
    match value.map(trim) {
        None | Some(b"") => Ask::NotGpu,
        Some(v) if v.split(|&b| b == b',').any(|t| trim(t) == b"void") => Ask::NotGpu,
        Some(_) => Ask::Gpu,
    }
}

/// What the spec asks, when that is certain.
pub fn ask(json: &[u8]) -> Option<Ask> {
    core::str::from_utf8(json).ok()?;
    let mut r = Reader {
        b: json,
        i: 0,
        depth: 0,
    };
    r.ws();
    if r.peek()? != b'{' {
        return None;
    }
    let mut seen_process = false;
    let mut devices: Option<&[u8]> = None;
    r.object(|key, r| {
        if key.escaped {
            return None;
        }
        if key.raw != b"process" {
            return r.value();
        }
        if seen_process {
            return None;
        }
        seen_process = true;
        r.ws();
        if r.peek()? != b'{' {
            return None;
        }
        let mut seen_env = false;
        r.object(|key, r| {
            if key.escaped {
                return None;
            }
            if key.raw != b"env" {
                return r.value();
            }
            if seen_env {
                return None;
            }
            seen_env = true;
            r.ws();
            if r.literal(b"null").is_some() {
                return Some(());
            }
            r.array(|r| {
                r.ws();
                let s = r.string()?;
                if s.escaped {
                    return None;
                }
                let eq = s.raw.iter().position(|&b| b == b'=');
                if let Some(eq) = eq {
                    if &s.raw[..eq] == VISIBLE_DEVICES {
                        let v = &s.raw[eq + 1..];
                        if !v.is_ascii() {
                            return None;
                        }
                        devices = Some(v);
                    }
                }
                Some(())
            })
        })
    })?;
    r.ws();
    (r.i == json.len()).then(|| ask_of(devices))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(env: &str) -> String {
        format!(
            r#"{{"ociVersion":"1.0.2","process":{{"terminal":false,"user":{{"uid":0,"gid":0}},"args":["sh"],"env":{env},"cwd":"/"}},"root":{{"path":"rootfs"}},"linux":{{"resources":{{"devices":[{{"allow":false,"access":"rwm"}}]}}}},"annotations":{{"a":"\u003cb\u003e \ud83d\ude00","n":-1.5e3}}}}"#
        )
    }

    #[test]
    fn the_request_rule() {
        let cases = [
            (r#"["PATH=/bin"]"#, Ask::NotGpu),
            (r#"["NVIDIA_VISIBLE_DEVICES="]"#, Ask::NotGpu),
            (r#"["NVIDIA_VISIBLE_DEVICES=  "]"#, Ask::NotGpu),
            (r#"["NVIDIA_VISIBLE_DEVICES=0,void"]"#, Ask::NotGpu),
            (r#"["NVIDIA_VISIBLE_DEVICES=0"]"#, Ask::Gpu),
            (r#"["NVIDIA_VISIBLE_DEVICES=none"]"#, Ask::Gpu),
            (r#"["NVIDIA_VISIBLE_DEVICES=junk"]"#, Ask::Gpu),
            (
                r#"["NVIDIA_VISIBLE_DEVICES=0","NVIDIA_VISIBLE_DEVICES="]"#,
                Ask::NotGpu,
            ),
            (
                r#"["NVIDIA_VISIBLE_DEVICES=","NVIDIA_VISIBLE_DEVICES=1"]"#,
                Ask::Gpu,
            ),
            (r#"["NVIDIA_VISIBLE_DEVICES"]"#, Ask::NotGpu),
            (r#"["NVIDIA_VISIBLE_DEVICESX=0"]"#, Ask::NotGpu),
            ("null", Ask::NotGpu),
            ("[]", Ask::NotGpu),
        ];
        for (env, want) in cases {
            assert_eq!(ask(spec(env).as_bytes()), Some(want), "{env}");
        }
        assert_eq!(ask(br#"{"process":{}}"#), Some(Ask::NotGpu));
        assert_eq!(ask(b" {} "), Some(Ask::NotGpu));
    }

    #[test]
    fn anything_uncertain_is_left_to_the_full_runtime() {
        for doc in [
            spec(r#"["NVIDIA\u005fVISIBLE_DEVICES=0"]"#),
            spec(r#"["NVIDIA_VISIBLE_DEVICES=\u0030"]"#),
            spec(r#"["NVIDIA_VISIBLE_DEVICES=0\u00a0"]"#),
            spec(r#"["NVIDIA_VISIBLE_DEVICES=0 "]"#).replace("=0 ", "=0\u{a0}"),
            spec(r#"["PATH=/bin", 3]"#),
            spec(r#""PATH=/bin""#),
            r#"{"process":{"env":[]},"process":{"env":[]}}"#.into(),
            r#"{"process":{"env":[],"env":[]}}"#.into(),
            r#"{"pro\u0063ess":{"env":[]}}"#.into(),
            r#"{"process":"x"}"#.into(),
            r#"["process"]"#.into(),
            r#"{"process":{"env":[]}} x"#.into(),
            r#"{"process":{"env":[]}"#.into(),
            r#"{"a":01}"#.into(),
            r#"{"a":1e999}"#.into(),
            r#"{"a":"\ud800"}"#.into(),
            r#"{"a":"\x"}"#.into(),
            "{\"a\":\"tab\there\"}".into(),
            r#"{"a":tru}"#.into(),
            r#"{"a":[1,]}"#.into(),
            format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200)),
            String::new(),
        ] {
            assert_eq!(ask(doc.as_bytes()), None, "{doc}");
        }
        assert_eq!(ask(b"{\"a\":\"\xff\"}"), None);
    }
}
