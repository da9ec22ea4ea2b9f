//! runc's command line, read the way runc reads it, to find the subcommand,
//! the bundle and the container id, and the log settings for refusals. The
//! arguments themselves are always passed on unchanged. Core only (no
//! allocation): the runtime's front and the library both use it.
//!
//! Ref: runc uses urfave/cli v1 over Go's `flag` package: a flag is `-name`
//! or `--name`, its value `=value` or the next argument (booleans take only
//! `=value`), and a subcommand's flags may come after its positional
//! arguments (urfave reorders them) unless a `--` ends the flags.

/// Global flags that take a value.
const GLOBAL_VALUE: &[&[u8]] = &[b"root", b"log", b"log-format", b"criu", b"rootless"];
/// Global boolean flags.
const GLOBAL_BOOL: &[&[u8]] = &[b"debug", b"systemd-cgroup", b"help", b"h", b"version", b"v"];

/// `create` and `run` flags that take a value (aliases included).
const CREATE_VALUE: &[&[u8]] = &[
    b"bundle",
    b"b",
    b"console-socket",
    b"pid-file",
    b"preserve-fds",
];
const CREATE_BOOL: &[&[u8]] = &[
    b"no-pivot",
    b"no-new-keyring",
    b"detach",
    b"d",
    b"keep",
    b"no-subreaper",
    b"help",
    b"h",
];

/// `exec` flags that take a value (aliases included; runc 1.1 and 1.2).
const EXEC_VALUE: &[&[u8]] = &[
    b"console-socket",
    b"pidfd-socket",
    b"cwd",
    b"env",
    b"e",
    b"user",
    b"u",
    b"additional-gids",
    b"g",
    b"process",
    b"p",
    b"pid-file",
    b"process-label",
    b"apparmor",
    b"cap",
    b"c",
    b"preserve-fds",
    b"cgroup",
];
const EXEC_BOOL: &[&[u8]] = &[
    b"tty",
    b"t",
    b"detach",
    b"d",
    b"no-new-privs",
    b"ignore-paused",
    b"help",
    b"h",
];

/// A runtime command line as runc would take it. Slices borrow the
/// arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Line<'a> {
    pub log: Option<&'a [u8]>,
    /// `json` or `text` (runc's default).
    pub log_format_json: bool,
    /// The subcommand and where it is in the arguments.
    pub subcommand: Option<(usize, &'a [u8])>,
    /// Set for `create` and `run` when the line parses as runc would take it.
    pub create: Option<Create<'a>>,
    /// The container id of a `delete` that parses as runc would take it.
    pub delete: Option<&'a [u8]>,
    /// An `exec` that parses as runc would take it.
    pub exec: Option<Exec<'a>>,
    /// `--version` (or `-v`) among the global flags: runc prints its
    /// version and does nothing else.
    pub version: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exec<'a> {
    pub id: &'a [u8],
    /// `--process` as given: the process to run, as JSON (engines use it;
    /// without it runc takes the process from the bundle's config.json).
    pub process: Option<&'a [u8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Create<'a> {
    pub id: &'a [u8],
    /// As given; relative to the current directory; empty when not given.
    pub bundle: &'a [u8],
    /// `run` (create, start and, unless detached, wait) rather than `create`.
    pub run: bool,
    /// `run --detach`: runc returns once the container started.
    pub detach: bool,
    /// `--pid-file` as given.
    pub pid_file: Option<&'a [u8]>,
    /// Where the subcommand is in the arguments: a flag inserted right after
    /// it is the subcommand's.
    pub subcommand_at: usize,
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

fn is(name: &[u8], list: &[&[u8]]) -> bool {
    list.contains(&name)
}

/// A value flag's value: after its `=`, or the next argument (`i` moves
/// past it). `None`: the line ends first, which runc refuses.
fn value_of<'a>(args: &[&'a [u8]], i: &mut usize, inline: Option<&'a [u8]>) -> Option<&'a [u8]> {
    match inline {
        Some(v) => Some(v),
        None => {
            *i += 1;
            args.get(*i).copied()
        }
    }
}

/// Go's strconv.ParseBool, which urfave/cli uses for `--flag=value`.
fn go_bool(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"t" | b"T" | b"true" | b"TRUE" | b"True" => Some(true),
        b"0" | b"f" | b"F" | b"false" | b"FALSE" | b"False" => Some(false),
        _ => None,
    }
}

/// Parses the arguments after argv[0]. Anything runc would reject leaves
/// `create` and `delete` unset, so the line goes to runc untouched and runc
/// reports it.
pub fn parse<'a>(args: &[&'a [u8]]) -> Line<'a> {
    let mut line = Line::default();
    let mut i = 0;
    // Global flags up to the first positional argument (Go's flag stops there).
    while i < args.len() {
        let a = args[i];
        if a == b"--" {
            i += 1;
            break;
        }
        let Some((name, value)) = flag_name(a) else {
            break;
        };
        if is(name, GLOBAL_VALUE) {
            let Some(v) = value_of(args, &mut i, value) else {
                return line;
            };
            match name {
                b"log" => line.log = Some(v),
                b"log-format" => line.log_format_json = v == b"json",
                _ => {}
            }
        } else if !is(name, GLOBAL_BOOL) {
            return line; // runc: "flag provided but not defined"
        } else if name == b"version" || name == b"v" {
            line.version = value.is_none_or(|v| go_bool(v) == Some(true));
        }
        i += 1;
    }
    let Some(&sub) = args.get(i) else {
        return line;
    };
    line.subcommand = Some((i, sub));
    let rest = &args[i + 1..];
    match sub {
        b"delete" => line.delete = parse_delete(rest),
        b"create" | b"run" => line.create = parse_create(rest, sub == b"run", i),
        b"exec" => line.exec = parse_exec(rest),
        _ => {}
    }
    line
}

fn parse_create<'a>(args: &[&'a [u8]], run: bool, subcommand_at: usize) -> Option<Create<'a>> {
    let mut bundle: &[u8] = b"";
    let mut pid_file = None;
    let mut detach = false;
    let mut help = false;
    let (mut positionals, mut first): (usize, &[u8]) = (0, b"");
    let mut positional = |a: &'a [u8]| {
        if positionals == 0 {
            first = a;
        }
        positionals += 1;
    };
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        if a == b"--" {
            args[i + 1..].iter().for_each(|a| positional(a));
            break;
        }
        match flag_name(a) {
            None => positional(a),
            Some((name, value)) if is(name, CREATE_VALUE) => {
                let v = value_of(args, &mut i, value)?;
                if name == b"bundle" || name == b"b" {
                    bundle = v;
                } else if name == b"pid-file" {
                    pid_file = Some(v);
                }
            }
            Some((name, value)) if is(name, CREATE_BOOL) => {
                // runc refuses an invalid boolean value.
                let on = match value {
                    None => true,
                    Some(v) => go_bool(v)?,
                };
                help |= on && (name == b"help" || name == b"h");
                if name == b"detach" || name == b"d" {
                    detach = on;
                }
            }
            Some(_) => return None,
        }
        i += 1;
    }
    // runc create/run take exactly one argument, the container id.
    if help || positionals != 1 || first.is_empty() {
        return None;
    }
    Some(Create {
        id: first,
        bundle,
        run,
        detach,
        pid_file,
        subcommand_at,
    })
}

/// `exec [flags] <id> [command…]`: runc's exec does not reorder its
/// arguments, so its flags come first and the first positional argument is
/// the id (everything after it is the command).
fn parse_exec<'a>(args: &[&'a [u8]]) -> Option<Exec<'a>> {
    let mut process = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        if a == b"--" {
            i += 1;
            break;
        }
        match flag_name(a) {
            None => break,
            Some((name, value)) if is(name, EXEC_VALUE) => {
                let v = value_of(args, &mut i, value)?;
                if name == b"process" || name == b"p" {
                    process = Some(v);
                }
            }
            Some((name, value)) if is(name, EXEC_BOOL) => {
                let on = match value {
                    None => true,
                    Some(v) => go_bool(v)?,
                };
                if on && (name == b"help" || name == b"h") {
                    return None;
                }
            }
            Some(_) => return None,
        }
        i += 1;
    }
    let id = *args.get(i)?;
    (!id.is_empty()).then_some(Exec { id, process })
}

/// `delete [--force|-f] <id>`: runc takes exactly one id.
fn parse_delete<'a>(args: &[&'a [u8]]) -> Option<&'a [u8]> {
    let (mut positionals, mut first): (usize, &[u8]) = (0, b"");
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        if a == b"--" {
            for a in &args[i + 1..] {
                if positionals == 0 {
                    first = a;
                }
                positionals += 1;
            }
            break;
        }
        match flag_name(a) {
            None => {
                if positionals == 0 {
                    first = a;
                }
                positionals += 1;
            }
            Some((b"force" | b"f", _)) => {}
            Some(_) => return None,
        }
        i += 1;
    }
    (positionals == 1 && !first.is_empty()).then_some(first)
}
