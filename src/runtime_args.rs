//! runc's command line as the runtime needs it: the subcommand, a create's
//! bundle, id and pid file, a delete's id, and the log settings for
//! refusals, owned. The rules are `front::args`'s, which the runtime's
//! front applies too; the arguments are always passed on unchanged.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::front::args;

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

fn path(b: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Parses the arguments after argv[0]. Anything runc would reject leaves
/// `create` unset, so the line goes to runc untouched and runc reports it.
pub fn parse(args: &[OsString]) -> Invocation {
    let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    let line = args::parse(&bytes);
    Invocation {
        log: line.log.map(path),
        log_format_json: line.log_format_json,
        subcommand: line.subcommand.map(|(_, s)| text(s)),
        create: line.create.map(|c| CreateArgs {
            id: text(c.id),
            bundle: path(c.bundle),
            run: c.run,
            detach: c.detach,
            pid_file: c.pid_file.map(path),
            subcommand_at: c.subcommand_at,
        }),
        delete: line.delete.map(text),
        exec_process: line.exec.and_then(|e| Some((text(e.id), path(e.process?)))),
        version: line.version,
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
