//! runc's command line, read the way runc reads it, to find the subcommand,
//! the bundle and the container id, and the log settings for refusals. The
//! arguments themselves are always passed on unchanged.
//!
//! Ref: runc uses urfave/cli v1 over Go's `flag` package: a flag is `-name`
//! or `--name`, its value `=value` or the next argument (booleans take only
//! `=value`), and a subcommand's flags may come after its positional
//! arguments (urfave reorders them) unless a `--` ends the flags.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Global flags that take a value.
const GLOBAL_VALUE: &[&str] = &["root", "log", "log-format", "criu", "rootless"];
/// Global boolean flags.
const GLOBAL_BOOL: &[&str] = &["debug", "systemd-cgroup", "help", "h", "version", "v"];

/// `create` and `run` flags that take a value (aliases included).
const CREATE_VALUE: &[&str] = &["bundle", "b", "console-socket", "pid-file", "preserve-fds"];
const CREATE_BOOL: &[&str] = &[
    "no-pivot",
    "no-new-keyring",
    "detach",
    "d",
    "keep",
    "no-subreaper",
    "help",
    "h",
];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Invocation {
    pub log: Option<PathBuf>,
    /// `json` or `text` (runc's default).
    pub log_format_json: bool,
    pub subcommand: Option<String>,
    /// Set for `create` and `run` when the line parses as runc would take it.
    pub create: Option<CreateArgs>,
    /// The container id of a `delete` that parses as runc would take it.
    pub delete: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateArgs {
    pub id: String,
    /// As given; relative to the current directory; "" when not given.
    pub bundle: PathBuf,
    /// `run` (create, start and, unless detached, wait) rather than `create`.
    pub run: bool,
    /// `run --detach`: runc returns once the container started.
    pub detach: bool,
    /// `--pid-file` as given (relative to the current directory).
    pub pid_file: Option<PathBuf>,
    /// Where the subcommand is in the arguments: a flag inserted right after
    /// it is the subcommand's.
    pub subcommand_at: usize,
}

/// Go's strconv.ParseBool, which urfave/cli uses for `--flag=value`.
fn go_bool(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"t" | b"T" | b"true" | b"TRUE" | b"True" => Some(true),
        b"0" | b"f" | b"F" | b"false" | b"FALSE" | b"False" => Some(false),
        _ => None,
    }
}

/// Splits `-name=value`/`--name=value`/`-name`/`--name`; `None` for a
/// positional argument (including a lone `-`).
fn flag_name(arg: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let body = arg.strip_prefix(b"--").or_else(|| arg.strip_prefix(b"-"))?;
    if body.is_empty() || body[0] == b'-' || body[0] == b'=' {
        return None;
    }
    Some(match body.iter().position(|&b| b == b'=') {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    })
}

fn is(name: &[u8], list: &[&str]) -> bool {
    list.iter().any(|n| n.as_bytes() == name)
}

fn os(b: &[u8]) -> OsString {
    std::ffi::OsStr::from_bytes(b).to_owned()
}

/// Parses the arguments after argv[0]. Anything runc would reject leaves
/// `create` unset, so the line goes to runc untouched and runc reports it.
pub fn parse(args: &[OsString]) -> Invocation {
    let mut inv = Invocation::default();
    let mut i = 0;
    // Global flags up to the first positional argument (Go's flag stops there).
    while i < args.len() {
        let a = args[i].as_bytes();
        if a == b"--" {
            i += 1;
            break;
        }
        let Some((name, value)) = flag_name(a) else {
            break;
        };
        if is(name, GLOBAL_VALUE) {
            let v = match value {
                Some(v) => v.to_vec(),
                None => {
                    i += 1;
                    match args.get(i) {
                        Some(v) => v.as_bytes().to_vec(),
                        None => return inv,
                    }
                }
            };
            match name {
                b"log" => inv.log = Some(PathBuf::from(os(&v))),
                b"log-format" => inv.log_format_json = v == b"json",
                _ => {}
            }
        } else if !is(name, GLOBAL_BOOL) {
            return inv; // runc: "flag provided but not defined"
        }
        i += 1;
    }
    let Some(sub) = args.get(i) else {
        return inv;
    };
    let sub = sub.to_string_lossy().into_owned();
    let subcommand_at = i;
    i += 1;
    inv.subcommand = Some(sub.clone());
    if sub == "delete" {
        inv.delete = parse_delete(&args[i..]);
        return inv;
    }
    if sub != "create" && sub != "run" {
        return inv;
    }
    let mut bundle = PathBuf::new();
    let mut pid_file = None;
    let mut detach = false;
    let mut positional: Vec<&OsString> = Vec::new();
    let mut help = false;
    while i < args.len() {
        let a = args[i].as_bytes();
        if a == b"--" {
            positional.extend(&args[i + 1..]);
            break;
        }
        match flag_name(a) {
            None => positional.push(&args[i]),
            Some((name, value)) if is(name, CREATE_VALUE) => {
                let v = match value {
                    Some(v) => os(v),
                    None => {
                        i += 1;
                        match args.get(i) {
                            Some(v) => v.clone(),
                            None => return inv,
                        }
                    }
                };
                if name == b"bundle" || name == b"b" {
                    bundle = PathBuf::from(v);
                } else if name == b"pid-file" {
                    pid_file = Some(PathBuf::from(v));
                }
            }
            Some((name, value)) if is(name, CREATE_BOOL) => {
                let on = match value {
                    None => true,
                    Some(v) => match go_bool(v) {
                        Some(b) => b,
                        None => return inv, // runc: invalid boolean value
                    },
                };
                help |= on && (name == b"help" || name == b"h");
                if name == b"detach" || name == b"d" {
                    detach = on;
                }
            }
            Some(_) => return inv,
        }
        i += 1;
    }
    // runc create/run take exactly one argument, the container id.
    if help || positional.len() != 1 || positional[0].is_empty() {
        return inv;
    }
    inv.create = Some(CreateArgs {
        id: positional[0].to_string_lossy().into_owned(),
        bundle,
        run: sub == "run",
        detach,
        pid_file,
        subcommand_at,
    });
    inv
}

/// `delete [--force|-f] <id>`: runc takes exactly one id.
fn parse_delete(args: &[OsString]) -> Option<String> {
    let mut positional = Vec::new();
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match flag_name(a.as_bytes()) {
            _ if a.as_bytes() == b"--" => positional.extend(rest.by_ref()),
            None => positional.push(a),
            Some((b"force" | b"f", _)) => {}
            Some(_) => return None,
        }
    }
    match positional.as_slice() {
        [id] if !id.is_empty() => Some(id.to_string_lossy().into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Invocation {
        let args: Vec<OsString> = line.split_whitespace().map(OsString::from).collect();
        parse(&args)
    }

    fn created(line: &str) -> (String, String) {
        let c = p(line)
            .create
            .unwrap_or_else(|| panic!("{line}: not a create"));
        (c.id, c.bundle.display().to_string())
    }

    #[test]
    fn create_lines_runc_accepts() {
        let table = [
            ("create --bundle /b c1", ("c1", "/b")),
            ("create --bundle=/b c1", ("c1", "/b")),
            ("create -b /b c1", ("c1", "/b")),
            ("create -b=/b c1", ("c1", "/b")),
            ("create -bundle /b c1", ("c1", "/b")),
            ("create c1", ("c1", "")),
            ("create c1 --bundle /b", ("c1", "/b")),
            ("create create", ("create", "")),
            ("create --bundle run run", ("run", "run")),
            ("--root /run/x --log /l.json --log-format json create --pid-file /p --bundle /b c1", ("c1", "/b")),
            ("--root=/run/x --debug --systemd-cgroup create --console-socket /s --no-pivot -b /b c1", ("c1", "/b")),
            ("--rootless false --criu /usr/sbin/criu create -b /b c1", ("c1", "/b")),
            ("--debug=false create -b /b c1", ("c1", "/b")),
            ("run -d --bundle /b c1", ("c1", "/b")),
            ("run --detach --keep --no-subreaper --preserve-fds 2 -b /b c1", ("c1", "/b")),
            ("create --bundle /b -- c1", ("c1", "/b")),
            ("--log create create c1", ("c1", "")),
        ];
        for (line, (id, bundle)) in table {
            assert_eq!(
                created(line),
                (id.to_string(), bundle.to_string()),
                "{line}"
            );
        }
    }

    #[test]
    fn run_detach_and_pid_file() {
        let c = p("--root /r run -d --pid-file /p -b /b c1").create.unwrap();
        assert!(c.run && c.detach);
        assert_eq!(c.pid_file, Some(PathBuf::from("/p")));
        assert_eq!(c.subcommand_at, 2);
        let c = p("run --detach=false c1").create.unwrap();
        assert!(c.run && !c.detach);
        let c = p("create --pid-file=rel.pid c1").create.unwrap();
        assert!(!c.run && !c.detach);
        assert_eq!(c.pid_file, Some(PathBuf::from("rel.pid")));
        assert_eq!(c.subcommand_at, 0);
        assert!(p("run --detach=maybe c1").create.is_none());
        assert!(p("create --help=false c1").create.is_some());
    }

    #[test]
    fn delete_lines() {
        for (line, id) in [
            ("delete c1", Some("c1")),
            ("--root /r delete --force c1", Some("c1")),
            ("delete c1 -f", Some("c1")),
            ("delete -- create", Some("create")),
            ("delete", None),
            ("delete a b", None),
            ("delete --now c1", None),
            ("kill c1", None),
        ] {
            assert_eq!(p(line).delete.as_deref(), id, "{line}");
        }
    }

    #[test]
    fn log_settings() {
        let i = p("--log /x/log.json --log-format json create c1");
        assert_eq!(i.log, Some(PathBuf::from("/x/log.json")));
        assert!(i.log_format_json);
        let i = p("--log=/x/log --log-format=text create c1");
        assert!(!i.log_format_json);
        assert!(!p("create c1").log_format_json);
    }

    #[test]
    fn everything_else_is_not_a_create() {
        for line in [
            "",
            "start c1",
            "delete --force c1",
            "state create",
            "kill create KILL",
            "exec --tty c1 sh",
            "create",
            "create a b",
            "create --bundle",
            "create --unknown-flag c1",
            "create --help",
            "--unknown create c1",
            "--root",
            "--version",
            "create --bundle /b",
        ] {
            assert!(p(line).create.is_none(), "{line}");
        }
        assert_eq!(p("state create").subcommand.as_deref(), Some("state"));
        assert!(p("delete c1").create.is_none());
        assert_eq!(
            p("--root /r delete c1").subcommand.as_deref(),
            Some("delete")
        );
    }
}
