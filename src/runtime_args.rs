//! runc's command line, read the way runc reads it: the runtime root, the
//! subcommand, a create's bundle, id and pid file, a delete's or an exec's
//! id, and the log settings for refusals. The one reader of it, for every
//! path; the arguments themselves are always passed on unchanged.
//!
//! Ref: runc uses urfave/cli v1 over Go's `flag` package: a flag is `-name`
//! or `--name`, its value `=value` or the next argument (booleans take only
//! `=value`), and a subcommand's flags may come after its positional
//! arguments (urfave reorders them) unless a `--` ends the flags. runc's
//! exec does not reorder: its flags come first.

use std::ffi::{OsStr, OsString};
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

/// `exec` flags that take a value (aliases included; runc 1.1 and 1.2).
const EXEC_VALUE: &[&str] = &[
    "console-socket",
    "pidfd-socket",
    "cwd",
    "env",
    "e",
    "user",
    "u",
    "additional-gids",
    "g",
    "process",
    "p",
    "pid-file",
    "process-label",
    "apparmor",
    "cap",
    "c",
    "preserve-fds",
    "cgroup",
];
const EXEC_BOOL: &[&str] = &[
    "tty",
    "t",
    "detach",
    "d",
    "no-new-privs",
    "ignore-paused",
    "help",
    "h",
];

/// `delete` flags (all boolean).
const DELETE_BOOL: &[&str] = &["force", "f", "help", "h"];

/// A runtime command line as runc would take it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Invocation {
    /// `--root` as given (relative to the current directory); `None`: the
    /// runtime's default.
    pub root: Option<PathBuf>,
    pub log: Option<PathBuf>,
    /// `json` or `text` (runc's default).
    pub log_format_json: bool,
    pub subcommand: Option<String>,
    /// Set for `create` and `run` when the line parses as runc would take it.
    pub create: Option<CreateArgs>,
    /// The container id of a `delete` that parses as runc would take it.
    pub delete: Option<String>,
    /// An `exec` with `--process`: the container id and the process file.
    pub exec_process: Option<(String, PathBuf)>,
    /// `--version`: gpushare's version is printed before the runtime's.
    pub version: bool,
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

/// One argument as a flag: `-name=value`/`--name=value`/`-name`/`--name`;
/// `None` for a positional argument (including a lone `-` and `--`).
fn flag(arg: &OsStr) -> Option<(&str, Option<&OsStr>)> {
    let bytes = arg.as_bytes();
    let body = bytes
        .strip_prefix(b"--")
        .or_else(|| bytes.strip_prefix(b"-"))?;
    if body.is_empty() || body[0] == b'-' || body[0] == b'=' {
        return None;
    }
    let (name, value) = match body.iter().position(|&b| b == b'=') {
        Some(i) => (&body[..i], Some(OsStr::from_bytes(&body[i + 1..]))),
        None => (body, None),
    };
    // A name that is not text is no flag runc knows: it refuses the line.
    Some((std::str::from_utf8(name).unwrap_or("\u{0}"), value))
}

/// Go's strconv.ParseBool, which urfave/cli uses for `--flag=value`.
fn go_bool(v: &OsStr) -> Option<bool> {
    match v.as_bytes() {
        b"1" | b"t" | b"T" | b"true" | b"TRUE" | b"True" => Some(true),
        b"0" | b"f" | b"F" | b"false" | b"FALSE" | b"False" => Some(false),
        _ => None,
    }
}

/// The arguments, walked as Go's flag package walks them.
struct Walk<'a> {
    args: &'a [OsString],
    i: usize,
}

/// What one step of a walk found.
enum Step<'a> {
    /// A known flag that takes a value, with it.
    Value(&'a str, &'a OsStr),
    /// A known boolean flag, with its value.
    Bool(&'a str, bool),
    Positional(&'a OsStr),
    /// `--`: every argument after it is positional.
    EndOfFlags,
}

impl<'a> Walk<'a> {
    /// The next step; `Some(Err(()))` for what runc refuses (an unknown
    /// flag, a missing value, a boolean that is not one).
    fn next(
        &mut self,
        value: &'static [&'static str],
        boolean: &'static [&'static str],
    ) -> Option<Result<Step<'a>, ()>> {
        let a = self.args.get(self.i)?;
        self.i += 1;
        if a.as_bytes() == b"--" {
            return Some(Ok(Step::EndOfFlags));
        }
        let Some((name, inline)) = flag(a) else {
            return Some(Ok(Step::Positional(a)));
        };
        Some(if let Some(known) = value.iter().find(|n| **n == name) {
            match inline.or_else(|| {
                let v = self.args.get(self.i)?;
                self.i += 1;
                Some(v.as_os_str())
            }) {
                Some(v) => Ok(Step::Value(known, v)),
                None => Err(()),
            }
        } else if let Some(known) = boolean.iter().find(|n| **n == name) {
            match inline.map(go_bool) {
                None => Ok(Step::Bool(known, true)),
                Some(Some(on)) => Ok(Step::Bool(known, on)),
                Some(None) => Err(()),
            }
        } else {
            Err(())
        })
    }

    fn rest(&self) -> &'a [OsString] {
        &self.args[self.i.min(self.args.len())..]
    }
}

fn text(s: &OsStr) -> String {
    String::from_utf8_lossy(s.as_bytes()).into_owned()
}

/// Parses the arguments after argv[0]. Anything runc would reject leaves
/// `create`, `delete` and `exec_process` unset, so the line goes to runc
/// untouched and runc reports it.
pub fn parse(args: &[OsString]) -> Invocation {
    let mut inv = Invocation::default();
    let mut walk = Walk { args, i: 0 };
    // Global flags up to the first positional argument (Go's flag stops there).
    let sub = loop {
        match walk.next(GLOBAL_VALUE, GLOBAL_BOOL) {
            None => return inv,
            Some(Err(())) => return inv, // runc: "flag provided but not defined"
            Some(Ok(Step::EndOfFlags)) => match walk.args.get(walk.i) {
                Some(s) => {
                    walk.i += 1;
                    break s.as_os_str();
                }
                None => return inv,
            },
            Some(Ok(Step::Positional(s))) => break s,
            Some(Ok(Step::Value(name, v))) => match name {
                "root" => inv.root = Some(PathBuf::from(v)),
                "log" => inv.log = Some(PathBuf::from(v)),
                "log-format" => inv.log_format_json = v.as_bytes() == b"json",
                _ => {}
            },
            Some(Ok(Step::Bool(name, on))) => {
                if name == "version" || name == "v" {
                    inv.version = on;
                }
            }
        }
    };
    let subcommand_at = walk.i - 1;
    inv.subcommand = Some(text(sub));
    let rest = Walk {
        args: walk.rest(),
        i: 0,
    };
    match sub.as_bytes() {
        b"create" | b"run" => {
            inv.create = parse_create(rest, sub.as_bytes() == b"run", subcommand_at)
        }
        b"delete" => inv.delete = parse_delete(rest),
        b"exec" => inv.exec_process = parse_exec(rest),
        _ => {}
    }
    inv
}

/// The positional arguments of a subcommand whose flags may come anywhere
/// (urfave reorders them), each flag passed to `on_flag`; `None` for what
/// runc refuses.
fn positionals<'a>(
    mut walk: Walk<'a>,
    value: &'static [&'static str],
    boolean: &'static [&'static str],
    mut on_flag: impl FnMut(Step<'a>),
) -> Option<Vec<&'a OsStr>> {
    let mut found = Vec::new();
    while let Some(step) = walk.next(value, boolean) {
        match step.ok()? {
            Step::EndOfFlags => {
                found.extend(walk.rest().iter().map(OsString::as_os_str));
                break;
            }
            Step::Positional(p) => found.push(p),
            // Help prints and does nothing else.
            Step::Bool("help" | "h", true) => return None,
            flag => on_flag(flag),
        }
    }
    Some(found)
}

/// `create|run [flags] <id>`: exactly one argument, the container id.
fn parse_create(walk: Walk, run: bool, subcommand_at: usize) -> Option<CreateArgs> {
    let mut bundle = PathBuf::new();
    let mut pid_file = None;
    let mut detach = false;
    let ids = positionals(walk, CREATE_VALUE, CREATE_BOOL, |step| match step {
        Step::Value("bundle" | "b", v) => bundle = PathBuf::from(v),
        Step::Value("pid-file", v) => pid_file = Some(PathBuf::from(v)),
        Step::Bool("detach" | "d", on) => detach = on,
        _ => {}
    })?;
    match ids.as_slice() {
        [id] if !id.is_empty() => Some(CreateArgs {
            id: text(id),
            bundle,
            run,
            detach,
            pid_file,
            subcommand_at,
        }),
        _ => None,
    }
}

/// `delete [--force|-f] <id>`: runc takes exactly one id.
fn parse_delete(walk: Walk) -> Option<String> {
    let ids = positionals(walk, &[], DELETE_BOOL, |_| {})?;
    match ids.as_slice() {
        [id] if !id.is_empty() => Some(text(id)),
        _ => None,
    }
}

/// `exec [flags] <id> [command…]`: the first positional argument is the
/// id, everything after it the command. Only an exec with `--process` is
/// returned: without one runc takes the process from config.json, which
/// the runtime already rewrote.
fn parse_exec(mut walk: Walk) -> Option<(String, PathBuf)> {
    let mut process = None;
    let id = loop {
        match walk.next(EXEC_VALUE, EXEC_BOOL)?.ok()? {
            Step::EndOfFlags => break walk.args.get(walk.i)?.as_os_str(),
            Step::Positional(p) => break p,
            Step::Value("process" | "p", v) => process = Some(PathBuf::from(v)),
            Step::Bool("help" | "h", true) => return None,
            _ => {}
        }
    };
    if id.is_empty() {
        return None;
    }
    Some((text(id), process?))
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
            ("-- create c1", ("c1", "")),
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
    fn the_root_is_read_in_every_form() {
        assert_eq!(p("create c1").root, None);
        for line in [
            "--root /run/x create c1",
            "--root=/run/x create c1",
            "-root /run/x delete c1",
        ] {
            assert_eq!(p(line).root, Some(PathBuf::from("/run/x")), "{line}");
        }
        // A later --root wins, as Go's flag package has it.
        assert_eq!(
            p("--root /a --root /b start c1").root,
            Some(PathBuf::from("/b"))
        );
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
            ("delete --force=maybe c1", None),
            ("delete --help c1", None),
            ("kill c1", None),
        ] {
            assert_eq!(p(line).delete.as_deref(), id, "{line}");
        }
    }

    #[test]
    fn exec_lines() {
        let ex = |line: &str| {
            p(line)
                .exec_process
                .map(|(id, f)| (id, f.display().to_string()))
        };
        let some = |id: &str, f: &str| Some((id.to_owned(), f.to_owned()));
        // How containerd's and Docker's shims call it.
        assert_eq!(
            ex("--root /r --log /l exec --process /tmp/p.json --detach --pid-file /x c1"),
            some("c1", "/tmp/p.json")
        );
        assert_eq!(ex("exec -p=/p.json -d c1"), some("c1", "/p.json"));
        assert_eq!(ex("exec --tty=false -e A=1 -p /p c1"), some("c1", "/p"));
        assert_eq!(ex("exec -p /p -- c1"), some("c1", "/p"));
        assert_eq!(
            ex("exec -- c1"),
            None,
            "no process file: runc reads the bundle"
        );
        // The command after the id is the process's, never a flag of exec.
        assert_eq!(ex("exec c1 sh -p /p.json"), None);
        for bad in [
            "exec",
            "exec -p /p",
            "exec --unknown -p /p c1",
            "exec --help -p /p c1",
            "exec --tty=maybe -p /p c1",
        ] {
            assert_eq!(ex(bad), None, "{bad}");
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
    fn versions() {
        assert!(p("--version").version);
        assert!(p("-v").version);
        assert!(p("--version=true").version);
        assert!(!p("--version=false").version);
        assert!(!p("create c1").version);
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

    #[test]
    fn arguments_that_are_not_text_pass_through() {
        use std::os::unix::ffi::OsStringExt;
        let args = vec![
            OsString::from("create"),
            OsString::from("--bundle"),
            OsString::from_vec(b"/b\xff".to_vec()),
            OsString::from("c1"),
        ];
        let c = parse(&args).create.unwrap();
        assert_eq!(c.bundle.as_os_str().as_bytes(), b"/b\xff");
        let args = vec![
            OsString::from_vec(b"--\xff".to_vec()),
            OsString::from("create"),
            OsString::from("c1"),
        ];
        assert!(parse(&args).create.is_none(), "an unknown flag");
    }
}
