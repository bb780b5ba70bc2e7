//! Hook-script fixtures: a `/bin/sh` script written to a file, a hook that records one line per
//! run, and the `[[hook]]` entry that runs a script.

use std::path::{Path, PathBuf};
use std::time::Duration;

use warren::config::{HookAction, HookConfig, HookEvent};

/// Write `body` as a `/bin/sh` script at `path`, executable (for configs that name it in
/// `exec` directly). Returns the argv that runs it through /bin/sh instead, so exec never races
/// the writer for ETXTBSY.
pub fn write_hook_script(path: &Path, body: &str) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write hook script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .expect("make hook script executable");
    vec!["/bin/sh".to_string(), path.display().to_string()]
}

/// A `[[hook]]` entry that runs `argv` on the events `on`.
pub fn exec_hook(on: &[HookEvent], argv: Vec<String>, timeout: Duration) -> HookConfig {
    HookConfig {
        on: on.to_vec(),
        action: HookAction::Exec(argv),
        timeout,
    }
}

/// The lines of a file, none when it does not exist (yet).
pub fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A hook script in a directory that appends one line per run to `events.log` there: `line`
/// as the shell expands it (e.g. `$WARREN_EVENT $WARREN_BACKEND`).
pub struct HookRecorder {
    argv: Vec<String>,
    /// The file the runs are recorded in.
    pub log: PathBuf,
}

impl HookRecorder {
    pub fn new(dir: &Path, line: &str) -> HookRecorder {
        let log = dir.join("events.log");
        let argv = write_hook_script(
            &dir.join("hook.sh"),
            &format!("echo \"{line}\" >> {}", log.display()),
        );
        HookRecorder { argv, log }
    }

    /// A `[[hook]]` entry running the recorder on `on`.
    pub fn hook(&self, on: &[HookEvent], timeout: Duration) -> HookConfig {
        exec_hook(on, self.argv.clone(), timeout)
    }

    /// The runs recorded so far, one line each.
    pub fn lines(&self) -> Vec<String> {
        file_lines(&self.log)
    }
}
