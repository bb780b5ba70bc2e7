//! `warren import-nginx`: an NGINX config (with its `include`s) turned into the equivalent warren
//! TOML. It owns a small NGINX tokenizer and parser (directives, blocks, quoted strings, comments,
//! `include` with globs), and the translation of the `stream` block: `upstream` → `[pool.NAME]`,
//! `server` → `[[listener]]`. Every directive it cannot translate becomes a [`Warning`] with its
//! file and line; none is dropped silently. Directives whose value is what warren always does
//! (`tcp_nodelay on`, `proxy_half_close on`) are taken as translated and produce no warning.
//! What NGINX lacks and `warren ctl upgrade` needs is added, each with a comment saying why: an
//! `[admin]` section on loopback and a probe on every pool. A pool no listener uses is written
//! commented out.
//!
//! The translation is pure: files are read through the [`Files`] trait ([`FsFiles`] for the real
//! file system), so tests feed strings; only [`run`], the CLI edge, prints. It must not touch
//! sockets, the runtime or shared state, and does not resolve host names (`warren check` does,
//! when it loads the output).
//!
//! The stages, one file each: `parse` (tokens and directives), `include` (the whole tree
//! with its includes), `translate`, `upstream` and `proxy_ssl` (the `stream` block and its pools
//! into warren's terms, reading values through `values`), `reasons` (why something is not
//! translated) and `render` (the TOML text).

use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Balance;

/// NGINX's passive health defaults (`max_fails=1 fail_timeout=10s`), which warren's passive
/// hold-down matches for pools without a probe; other values become the probe's `fall`.
const NGINX_MAX_FAILS: u32 = 1;
const NGINX_FAIL_TIMEOUT: Duration = crate::config::DEFAULT_HOLD_DOWN;

/// Deepest chain of `include`s followed; deeper is almost certainly a cycle.
const MAX_INCLUDE_DEPTH: usize = 16;

/// Longest rendering of a directive in warnings and comments.
const DIRECTIVE_SHOWN_MAX: usize = 72;

mod include;
mod parse;
mod proxy_ssl;
mod reasons;
mod render;
mod translate;
mod upstream;
mod values;

#[cfg(test)]
mod tests;

use include::*;
use parse::*;
use proxy_ssl::*;
use reasons::*;
use translate::*;
use values::*;

/// A place in an NGINX file: `FILE:LINE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: Arc<Path>,
    /// 1-based.
    pub line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A directive that was not translated (or not exactly), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub loc: Loc,
    /// The directive as written, e.g. `ssl_certificate /etc/ssl/rabbit.pem;` (shortened).
    pub directive: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: `{}`: {}", self.loc, self.directive, self.message)
    }
}

/// The result of an import: the TOML text and what did not translate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// A complete warren config; `warren check` accepts it (host names must resolve).
    pub toml: String,
    /// In file order (files in the order they were read).
    pub warnings: Vec<Warning>,
}

/// Why an NGINX config could not be imported. `Display` names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The main file could not be read.
    #[error("{}: cannot read: {source}", .file.display())]
    Read { file: PathBuf, source: io::Error },
    /// An included file could not be read.
    #[error("{at}: cannot read included file {}: {source}", .included.display())]
    Include {
        at: Loc,
        included: PathBuf,
        source: io::Error,
    },
    /// The text is not NGINX config syntax (unbalanced braces, unterminated quote, ...).
    #[error("{at}: {message}")]
    Syntax { at: Loc, message: String },
    /// A directive NGINX itself would reject (wrong arguments, bad value, duplicate).
    #[error("{at}: `{directive}`: {message}")]
    Invalid {
        at: Loc,
        directive: String,
        message: String,
    },
    /// No `stream { ... }` block in the file or its includes.
    #[error(
        "{}: no `stream {{ ... }}` block found (in it or its includes); warren translates only \
         NGINX's TCP stream proxy",
        .file.display()
    )]
    NoStream { file: PathBuf },
    /// The stream block has no `server` that becomes a listener.
    #[error(
        "{at}: the stream block has no server with a TCP listen and a proxy_pass that warren can \
         take (see the warnings above)"
    )]
    NoListener { at: Loc },
}

/// How the importer reads files; [`FsFiles`] reads the real file system, tests use a map.
pub trait Files {
    /// The whole file as UTF-8.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Names of the entries of a directory (files and subdirectories), in any order;
    /// `NotFound` when there is no such directory, no names when `dir` is a file.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
}

/// [`Files`] on the real file system.
pub struct FsFiles;

impl Files for FsFiles {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        // A file where the pattern wants a directory matches nothing, as with glob(3).
        if dir.exists() && !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
}

/// `warren import-nginx FILE`: TOML on stdout, warnings on stderr; exit 1 on an error.
pub fn run(file: &Path) -> ExitCode {
    use std::io::Write as _;
    let import = match import(file, &FsFiles) {
        Ok(import) => import,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for warning in &import.warnings {
        eprintln!("warning: {warning}");
    }
    if !import.warnings.is_empty() {
        eprintln!(
            "{} NGINX directive(s) not translated exactly; review the warnings, then run \
             `warren check --config FILE` on the output",
            import.warnings.len()
        );
    }
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout
        .write_all(import.toml.as_bytes())
        .and_then(|()| stdout.flush())
    {
        eprintln!("error: cannot write the output: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Read `path` (and its includes, relative paths taken from `path`'s directory as NGINX takes
/// them from its configuration prefix) and translate its `stream` block.
pub fn import(path: &Path, files: &dyn Files) -> Result<Import, ImportError> {
    let text = files.read(path).map_err(|source| ImportError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let file: Arc<Path> = Arc::from(path);
    let loader = Loader { files, base };
    let top = parse(&text, &file)?;
    let mut top = loader.expand(top, 0, false)?;
    number(&mut top, &mut 0);
    let mut translator = Translator::default();
    translator.translate(&top, path)?;
    // Translation visits upstreams before servers; the operator reads in document order.
    translator.warnings.sort_by_key(|(seq, _)| *seq);
    let warnings: Vec<Warning> = translator.warnings.drain(..).map(|(_, w)| w).collect();
    let toml = translator.render(path, &warnings);
    Ok(Import { toml, warnings })
}
