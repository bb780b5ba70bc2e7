//! `warren import-nginx`: an NGINX config (with its `include`s) turned into the equivalent warren
//! TOML. It owns a small NGINX tokenizer and parser (directives, blocks, quoted strings, comments,
//! `include` with globs), and the translation of the `stream` block: `upstream` → `[pool.NAME]`,
//! `server` → `[[listener]]`. Every directive it cannot translate becomes a [`Warning`] with its
//! file and line; none is dropped silently. Directives whose value is what warren always does
//! (`tcp_nodelay on`, `proxy_half_close on`) are taken as translated and produce no warning.
//!
//! The translation is pure: files are read through the [`Files`] trait ([`FsFiles`] for the real
//! file system), so tests feed strings; only [`run`], the CLI edge, prints. It must not touch
//! sockets, the runtime or shared state, and does not resolve host names (`warren check` does,
//! when it loads the output).

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
/// hold-down matches for pools without a probe.
const NGINX_MAX_FAILS: u32 = 1;
const NGINX_FAIL_TIMEOUT: Duration = crate::config::DEFAULT_HOLD_DOWN;

/// Deepest chain of `include`s followed; deeper is almost certainly a cycle.
const MAX_INCLUDE_DEPTH: usize = 16;

/// Longest rendering of a directive in warnings and comments.
const DIRECTIVE_SHOWN_MAX: usize = 72;

// ---------------------------------------------------------------------------------------------
// Public types.

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

// ---------------------------------------------------------------------------------------------
// Tokenizer and parser.

/// One NGINX directive: `name args...;` or `name args... { block }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub loc: Loc,
    /// `Some` for a block directive (`stream { ... }`), even an empty one.
    pub block: Option<Vec<Directive>>,
    /// Position in document order with includes expanded (set by [`number`]).
    seq: usize,
}

/// Number directives in document order, includes expanded, to sort warnings by.
fn number(directives: &mut [Directive], next: &mut usize) {
    for d in directives {
        d.seq = *next;
        *next += 1;
        if let Some(block) = &mut d.block {
            number(block, next);
        }
    }
}

impl Directive {
    /// As written, shortened: `server 10.0.0.1:5672 weight=2;` or `upstream rabbits { ... }`.
    fn shown(&self) -> String {
        let mut out = self.name.clone();
        for arg in &self.args {
            out.push(' ');
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == ';') {
                let _ = write!(out, "{arg:?}");
            } else {
                out.push_str(arg);
            }
        }
        out.push_str(if self.block.is_some() {
            " { ... }"
        } else {
            ";"
        });
        match out.char_indices().nth(DIRECTIVE_SHOWN_MAX) {
            Some((end, _)) => format!("{}...", &out[..end]),
            None => out,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Semicolon,
    Open,
    Close,
}

fn syntax(file: &Arc<Path>, line: usize, message: impl Into<String>) -> ImportError {
    ImportError::Syntax {
        at: Loc {
            file: file.clone(),
            line,
        },
        message: message.into(),
    }
}

/// Split NGINX config text into words and `;`, `{`, `}`, each with its line.
fn tokenize(text: &str, file: &Arc<Path>) -> Result<Vec<(Token, usize)>, ImportError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => while chars.next_if(|&c| c != '\n').is_some() {},
            ';' | '{' | '}' => {
                chars.next();
                let token = match c {
                    ';' => Token::Semicolon,
                    '{' => Token::Open,
                    _ => Token::Close,
                };
                tokens.push((token, line));
            }
            '"' | '\'' => {
                let start = line;
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(syntax(
                                file,
                                start,
                                format!("unterminated {c}-quoted string"),
                            ))
                        }
                        Some(q) if q == c => break,
                        Some('\\') => match chars.next() {
                            Some(next) => {
                                if next == '\n' {
                                    line += 1;
                                }
                                push_escaped(&mut word, next);
                            }
                            None => {
                                return Err(syntax(
                                    file,
                                    start,
                                    format!("unterminated {c}-quoted string"),
                                ))
                            }
                        },
                        Some(other) => {
                            if other == '\n' {
                                line += 1;
                            }
                            word.push(other);
                        }
                    }
                }
                // NGINX wants a separator after a closing quote: `"a"b` is an error there too.
                if let Some(&next) = chars.peek() {
                    if !(next.is_whitespace() || matches!(next, ';' | '{' | '}')) {
                        return Err(syntax(
                            file,
                            line,
                            format!("unexpected {next:?} right after a quoted string"),
                        ));
                    }
                }
                tokens.push((Token::Word(word), start));
            }
            _ => {
                let start = line;
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, ';' | '{' | '}') {
                        break;
                    }
                    chars.next();
                    match c {
                        '\\' => match chars.next() {
                            Some(next) => push_escaped(&mut word, next),
                            None => word.push('\\'),
                        },
                        // `${name}`: the braces belong to the variable, not to a block.
                        '$' if chars.peek() == Some(&'{') => {
                            word.push('$');
                            for c in chars.by_ref() {
                                word.push(c);
                                if c == '}' {
                                    break;
                                }
                            }
                            if !word.ends_with('}') {
                                return Err(syntax(file, start, "unterminated ${variable}"));
                            }
                        }
                        _ => word.push(c),
                    }
                }
                tokens.push((Token::Word(word), start));
            }
        }
    }
    Ok(tokens)
}

/// NGINX's escapes: `\"`, `\'`, `\\`, `\t`, `\r`, `\n`; any other backslash stays as written.
fn push_escaped(word: &mut String, c: char) {
    match c {
        '"' | '\'' | '\\' => word.push(c),
        't' => word.push('\t'),
        'r' => word.push('\r'),
        'n' => word.push('\n'),
        other => {
            word.push('\\');
            word.push(other);
        }
    }
}

/// Parse one file's text into its directives (includes not followed).
pub fn parse(text: &str, file: &Arc<Path>) -> Result<Vec<Directive>, ImportError> {
    let tokens = tokenize(text, file)?;
    let mut pos = 0;
    let directives = parse_block(&tokens, &mut pos, file, None)?;
    Ok(directives)
}

/// Directives up to the `}` closing a block opened on `open` (or to the end of the file).
fn parse_block(
    tokens: &[(Token, usize)],
    pos: &mut usize,
    file: &Arc<Path>,
    open: Option<usize>,
) -> Result<Vec<Directive>, ImportError> {
    let mut directives = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut start = 0;
    while let Some((token, line)) = tokens.get(*pos) {
        *pos += 1;
        match token {
            Token::Word(w) => {
                if words.is_empty() {
                    start = *line;
                }
                words.push(w.clone());
            }
            Token::Semicolon | Token::Open => {
                if words.is_empty() {
                    let c = if *token == Token::Semicolon { ';' } else { '{' };
                    return Err(syntax(file, *line, format!("unexpected \"{c}\"")));
                }
                let mut args = std::mem::take(&mut words);
                let name = args.remove(0);
                let block = if *token == Token::Open {
                    Some(parse_block(tokens, pos, file, Some(*line))?)
                } else {
                    None
                };
                directives.push(Directive {
                    name,
                    args,
                    loc: Loc {
                        file: file.clone(),
                        line: start,
                    },
                    block,
                    seq: 0,
                });
            }
            Token::Close => {
                if !words.is_empty() {
                    return Err(syntax(
                        file,
                        *line,
                        format!("unexpected \"}}\": `{}` needs a \";\" first", words[0]),
                    ));
                }
                if open.is_none() {
                    return Err(syntax(file, *line, "unexpected \"}\" without a block"));
                }
                return Ok(directives);
            }
        }
    }
    if !words.is_empty() {
        return Err(syntax(
            file,
            start,
            format!(
                "unexpected end of file: `{}` needs a \";\" or a block",
                words[0]
            ),
        ));
    }
    if let Some(open) = open {
        return Err(syntax(
            file,
            open,
            "unexpected end of file: the block opened here has no closing \"}\"",
        ));
    }
    Ok(directives)
}

// ---------------------------------------------------------------------------------------------
// Includes.

struct Loader<'a> {
    files: &'a dyn Files,
    /// Relative include paths start here (NGINX: the configuration prefix).
    base: PathBuf,
}

impl Loader<'_> {
    /// Replace `include` directives by the directives of the files they name. Only the main
    /// context and everything inside `stream` are expanded: the rest is reported, not read, so a
    /// missing `mime.types` of the `http` block is no reason to fail.
    fn expand(
        &self,
        directives: Vec<Directive>,
        depth: usize,
        in_stream: bool,
    ) -> Result<Vec<Directive>, ImportError> {
        let mut out = Vec::with_capacity(directives.len());
        for mut d in directives {
            if d.name == "include" && d.block.is_none() {
                if d.args.len() != 1 {
                    return Err(invalid(&d, "needs exactly one argument: a file or a glob"));
                }
                if depth >= MAX_INCLUDE_DEPTH {
                    return Err(invalid(
                        &d,
                        format!(
                            "includes nested deeper than {MAX_INCLUDE_DEPTH} levels (an include \
                             cycle?)"
                        ),
                    ));
                }
                for path in self.resolve(&d)? {
                    let text = self
                        .files
                        .read(&path)
                        .map_err(|source| ImportError::Include {
                            at: d.loc.clone(),
                            included: path.clone(),
                            source,
                        })?;
                    let file: Arc<Path> = Arc::from(path.as_path());
                    let included = parse(&text, &file)?;
                    out.extend(self.expand(included, depth + 1, in_stream)?);
                }
                continue;
            }
            if in_stream || d.name == "stream" {
                if let Some(block) = d.block.take() {
                    d.block = Some(self.expand(block, depth, true)?);
                }
            }
            out.push(d);
        }
        Ok(out)
    }

    /// The files an `include` names, in the sorted order NGINX reads a glob in.
    fn resolve(&self, d: &Directive) -> Result<Vec<PathBuf>, ImportError> {
        let pattern = Path::new(&d.args[0]);
        let pattern = if pattern.is_absolute() {
            pattern.to_path_buf()
        } else {
            self.base.join(pattern)
        };
        if !d.args[0].contains(['*', '?', '[']) {
            return Ok(vec![pattern]);
        }
        glob(self.files, &pattern).map_err(|source| ImportError::Include {
            at: d.loc.clone(),
            included: pattern.clone(),
            source,
        })
    }
}

/// Paths matching a glob pattern (wildcards in any component), sorted. A directory that does
/// not exist matches nothing, as with glob(3).
fn glob(files: &dyn Files, pattern: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = vec![PathBuf::new()];
    let mut wild = false;
    for component in pattern.components() {
        let part = match component {
            Component::Normal(part) => part.to_string_lossy(),
            other => {
                for path in &mut found {
                    path.push(other.as_os_str());
                }
                continue;
            }
        };
        wild |= part.contains(['*', '?', '[']);
        if !wild {
            for path in &mut found {
                path.push(part.as_ref());
            }
            continue;
        }
        // From the first wildcard on, every component is matched against real entries.
        let mut next = Vec::new();
        for dir in &found {
            let names = match files.list_dir(dir) {
                Ok(names) => names,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for name in names {
                if glob_match(&part, &name) {
                    next.push(dir.join(name));
                }
            }
        }
        found = next;
    }
    found.sort();
    Ok(found)
}

/// glob(3) matching of one path component: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`; a leading `.`
/// is matched only by a literal `.`.
fn glob_match(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    match_from(&pattern, &name)
}

fn match_from(pattern: &[char], name: &[char]) -> bool {
    match pattern.first() {
        None => name.is_empty(),
        Some('*') => (0..=name.len()).any(|skip| match_from(&pattern[1..], &name[skip..])),
        Some('?') => !name.is_empty() && match_from(&pattern[1..], &name[1..]),
        Some('[') => {
            let Some((&c, rest)) = name.split_first() else {
                return false;
            };
            match class_match(&pattern[1..], c) {
                Some((true, after)) => match_from(after, rest),
                Some((false, _)) => false,
                // No closing ']': the '[' is literal.
                None => c == '[' && match_from(&pattern[1..], rest),
            }
        }
        Some(&p) => name.first() == Some(&p) && match_from(&pattern[1..], &name[1..]),
    }
}

/// Matches `c` against a class body (after `[`); returns the verdict and the pattern after `]`.
fn class_match(body: &[char], c: char) -> Option<(bool, &[char])> {
    let (negated, mut i) = match body.first() {
        Some('!' | '^') => (true, 1),
        _ => (false, 0),
    };
    let mut hit = false;
    let mut first = true;
    while i < body.len() {
        if body[i] == ']' && !first {
            return Some((hit != negated, &body[i + 1..]));
        }
        first = false;
        if i + 2 < body.len() && body[i + 1] == '-' && body[i + 2] != ']' {
            hit |= body[i] <= c && c <= body[i + 2];
            i += 3;
        } else {
            hit |= body[i] == c;
            i += 1;
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Values.

fn invalid(d: &Directive, message: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        at: d.loc.clone(),
        directive: d.shown(),
        message: message.into(),
    }
}

/// NGINX time: "120s", "5m", "1h30m", "500ms", "90" (seconds); units ms s m h d w M y.
fn nginx_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("{s:?} is not an NGINX time; expected a number with a unit, like \"5s\", \"2m\" or \"500ms\"")
    };
    let mut total: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit_ms, len): (u64, usize) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.chars().next() {
                None => (1000, 0),
                Some('s') => (1000, 1),
                Some('m') => (60_000, 1),
                Some('h') => (3_600_000, 1),
                Some('d') => (86_400_000, 1),
                Some('w') => (7 * 86_400_000, 1),
                Some('M') => (30 * 86_400_000, 1),
                Some('y') => (365 * 86_400_000, 1),
                Some(_) => return Err(bad()),
            }
        };
        rest = rest[len..].trim_start();
        total = n
            .checked_mul(unit_ms)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_millis(total))
}

/// A duration as warren writes it: "120s", "250ms", "2h".
fn warren_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    if s >= 3600 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else {
        format!("{s}s")
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("invalid port {port:?}: expected 1-65535")),
        Ok(p) => Ok(p),
    }
}

/// Where a `listen` goes in warren.
#[derive(Debug, PartialEq, Eq)]
enum ListenAddr {
    /// An address warren's `listen` accepts, e.g. "0.0.0.0:5672", plus a note for the operator.
    Addr(String, Option<String>),
    /// Cannot be taken; why.
    Unsupported(String),
}

/// A `listen` address: "5672", "*:5672", "10.0.0.5:5672", "[::]:5672", "localhost:5672".
fn listen_addr(s: &str) -> Result<ListenAddr, String> {
    if s.starts_with("unix:") {
        return Ok(ListenAddr::Unsupported(
            "unix sockets are not supported; warren listens on TCP only".to_string(),
        ));
    }
    if s.contains('$') {
        return Ok(ListenAddr::Unsupported(
            "variables are not supported".to_string(),
        ));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(ListenAddr::Addr(
            format!("0.0.0.0:{}", parse_port(s)?),
            None,
        ));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']'"))?;
        let ip: Ipv6Addr = host
            .parse()
            .map_err(|_| format!("{host:?} is not an IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("{s:?}: no port"))?;
        return Ok(ListenAddr::Addr(
            format!("[{ip}]:{}", parse_port(port)?),
            None,
        ));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: no port (a stream listen needs one)"))?;
    let port = parse_port(port)?;
    if host == "*" {
        return Ok(ListenAddr::Addr(format!("0.0.0.0:{port}"), None));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(ListenAddr::Addr(format!("{ip}:{port}"), None));
    }
    if host == "localhost" {
        return Ok(ListenAddr::Addr(
            format!("127.0.0.1:{port}"),
            Some("warren listens on IP addresses only: \"localhost\" became 127.0.0.1".to_string()),
        ));
    }
    Ok(ListenAddr::Unsupported(format!(
        "warren listens on IP addresses only, not on host name {host:?}; write the address"
    )))
}

/// A backend address from `server` or `proxy_pass`.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// Host as written (IPv6 without brackets), port, and warren's `addr`.
    Addr { host: String, addr: String },
    /// Cannot be taken; why.
    Unsupported(String),
}

/// `10.0.0.1:5672`, `rabbit-a:5672`, `[fd00::1]:5672`; `unix:` and variables are unsupported.
fn target(s: &str) -> Result<Target, String> {
    if s.starts_with("unix:") {
        return Ok(Target::Unsupported(
            "unix sockets are not supported; warren connects over TCP only".to_string(),
        ));
    }
    if s.contains('$') {
        return Ok(Target::Unsupported(
            "variables are not supported".to_string(),
        ));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']'"))?;
        let ip: Ipv6Addr = host
            .parse()
            .map_err(|_| format!("{host:?} is not an IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("no port in {s:?} (a stream upstream needs one)"))?;
        let port = parse_port(port)?;
        return Ok(Target::Addr {
            host: ip.to_string(),
            addr: format!("[{ip}]:{port}"),
        });
    }
    let (host, port) = s
        .split_once(':')
        .ok_or_else(|| format!("no port in {s:?} (a stream upstream needs one)"))?;
    if port.contains(':') {
        return Err(format!(
            "{s:?}: IPv6 addresses need brackets, like \"[fd00::1]:5672\""
        ));
    }
    let port = parse_port(port)?;
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    Ok(Target::Addr {
        host: host.to_string(),
        addr: format!("{host}:{port}"),
    })
}

/// A name warren accepts (letters, digits, '.', '_', '-'), made from an NGINX name or address.
fn sanitize(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let out = out.trim_matches('-');
    if out.is_empty() {
        "unnamed".to_string()
    } else {
        out.to_string()
    }
}

/// `base`, or `base-2`, `base-3`, ... when taken; the result is marked taken.
fn unique(base: &str, taken: &mut HashSet<String>) -> String {
    let mut name = base.to_string();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    taken.insert(name.clone());
    name
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML key: bare when it can be, quoted otherwise (a '.' would split it into tables).
fn toml_key(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        s.to_string()
    } else {
        toml_str(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Translation.

/// A value together with the directive it came from, for the comment in the output.
#[derive(Debug, Clone)]
struct Sourced<T> {
    value: T,
    note: String,
}

fn sourced<T>(value: T, d: &Directive) -> Sourced<T> {
    Sourced {
        value,
        note: note(d),
    }
}

fn note(d: &Directive) -> String {
    format!("{}  ({})", d.shown(), d.loc)
}

/// The `proxy_*` settings of a `server`, inherited from the `stream` level.
#[derive(Debug, Clone, Default)]
struct ProxySettings {
    connect_timeout: Option<Sourced<Duration>>,
    idle_timeout: Option<Sourced<Duration>>,
    next_upstream: Option<Sourced<bool>>,
    next_upstream_tries: Option<Sourced<u32>>,
    next_upstream_timeout: Option<Sourced<Duration>>,
    proxy_protocol: Option<Sourced<bool>>,
    proxy_protocol_timeout: Option<Sourced<Duration>>,
}

#[derive(Debug)]
struct OutListener {
    name: String,
    listen: Sourced<String>,
    pool: Sourced<String>,
    /// `key = value` lines (value already TOML) with their notes.
    keys: Vec<(String, String, String)>,
}

#[derive(Debug)]
struct OutPool {
    name: String,
    /// The NGINX name it came from (`upstream NAME` or the `proxy_pass` address).
    nginx_name: String,
    note: String,
    balance: Sourced<Balance>,
    /// Comment lines printed under the pool header (without the leading '#').
    comments: Vec<String>,
    backends: Vec<OutBackend>,
}

#[derive(Debug)]
struct OutBackend {
    name: String,
    addr: String,
    weight: Option<u32>,
    backup: bool,
    note: String,
    /// `down` in NGINX: printed commented out.
    commented_out: bool,
}

/// One `server` line of an upstream, parsed.
struct UpstreamServer<'d> {
    directive: &'d Directive,
    host: String,
    addr: String,
    weight: Option<u32>,
    max_fails: u32,
    fail_timeout: Duration,
    backup: bool,
    down: bool,
}

/// A `listen` warren can take.
struct Listen<'d> {
    directive: &'d Directive,
    /// warren's `listen` value.
    addr: String,
    /// The `proxy_protocol` parameter: a PROXY header is expected from the client side.
    accept_proxy_protocol: bool,
    /// How the address was changed, if it was.
    note: Option<String>,
}

#[derive(Default)]
struct Translator {
    /// With the directive's document position.
    warnings: Vec<(usize, Warning)>,
    listeners: Vec<OutListener>,
    pools: Vec<OutPool>,
    pool_names: HashSet<String>,
    listener_names: HashSet<String>,
    /// Listen addresses taken so far, with where.
    listens: Vec<(std::net::SocketAddr, Loc)>,
}

impl Translator {
    fn warn(&mut self, d: &Directive, message: impl Into<String>) {
        self.warnings.push((
            d.seq,
            Warning {
                loc: d.loc.clone(),
                directive: d.shown(),
                message: message.into(),
            },
        ));
    }

    fn translate(&mut self, top: &[Directive], main: &Path) -> Result<(), ImportError> {
        let mut stream: Option<&Directive> = None;
        for d in top {
            if d.name == "stream" {
                if d.block.is_none() {
                    return Err(invalid(d, "needs a block: stream { ... }"));
                }
                if let Some(first) = stream {
                    return Err(invalid(
                        d,
                        format!("duplicate stream block (the first is at {})", first.loc),
                    ));
                }
                stream = Some(d);
            } else {
                self.warn(
                    d,
                    format!("outside the stream block: {}", outside_reason(&d.name)),
                );
            }
        }
        let Some(stream) = stream else {
            return Err(ImportError::NoStream {
                file: main.to_path_buf(),
            });
        };
        let children = stream.block.as_deref().unwrap_or_default();

        // Stream-level proxy_* settings apply to every server wherever they are written, and an
        // upstream may be defined after the server that uses it: settings and upstreams first.
        let mut settings = ProxySettings::default();
        let mut seen = HashSet::new();
        let mut upstreams: Vec<(String, &Directive)> = Vec::new();
        for d in children {
            match d.name.as_str() {
                "server" => {}
                "upstream" => {
                    if d.args.len() != 1 || d.block.is_none() {
                        return Err(invalid(d, "expected `upstream NAME { ... }`"));
                    }
                    if let Some((_, first)) = upstreams.iter().find(|(n, _)| *n == d.args[0]) {
                        return Err(invalid(
                            d,
                            format!("duplicate upstream (the first is at {})", first.loc),
                        ));
                    }
                    upstreams.push((d.args[0].clone(), d));
                }
                _ => {
                    if !self.proxy_setting(&mut settings, &mut seen, d)? {
                        self.unsupported(d);
                    }
                }
            }
        }
        for (_, d) in &upstreams {
            self.upstream(d)?;
        }
        for d in children.iter().filter(|d| d.name == "server") {
            self.server(d, &settings)?;
        }
        if self.listeners.is_empty() {
            return Err(ImportError::NoListener {
                at: stream.loc.clone(),
            });
        }
        Ok(())
    }

    /// A directive with no translation: a warning that says why.
    fn unsupported(&mut self, d: &Directive) {
        let message = if d.block.is_some() && block_reason(&d.name).is_none() {
            format!(
                "block not translated ({} directive(s) inside): {}",
                d.block.as_ref().map_or(0, Vec::len),
                stream_reason(&d.name)
            )
        } else {
            block_reason(&d.name)
                .unwrap_or_else(|| stream_reason(&d.name))
                .to_string()
        };
        self.warn(d, message);
    }

    /// A `proxy_*` directive warren has a key for (or matches by its fixed behaviour): applied
    /// to `settings`; false when it is not one of those.
    fn proxy_setting(
        &mut self,
        settings: &mut ProxySettings,
        seen: &mut HashSet<String>,
        d: &Directive,
    ) -> Result<bool, ImportError> {
        let known = matches!(
            d.name.as_str(),
            "proxy_connect_timeout"
                | "proxy_timeout"
                | "proxy_next_upstream"
                | "proxy_next_upstream_tries"
                | "proxy_next_upstream_timeout"
                | "proxy_protocol"
                | "proxy_protocol_timeout"
                | "tcp_nodelay"
                | "proxy_half_close"
        );
        if !known || d.block.is_some() {
            return Ok(false);
        }
        if d.args.len() != 1 {
            return Err(invalid(d, "needs exactly one argument"));
        }
        if !seen.insert(d.name.clone()) {
            return Err(invalid(d, "is duplicate in this block"));
        }
        let arg = d.args[0].as_str();
        match d.name.as_str() {
            "proxy_connect_timeout" | "proxy_timeout" => {
                let value = nginx_duration(arg).map_err(|m| invalid(d, m))?;
                if value.is_zero() {
                    self.warn(
                        d,
                        "0 is not accepted by warren (timeouts must be longer than 0); the \
                         default is used",
                    );
                } else if d.name == "proxy_timeout" {
                    settings.idle_timeout = Some(sourced(value, d));
                } else {
                    settings.connect_timeout = Some(sourced(value, d));
                }
            }
            "proxy_next_upstream_timeout" => {
                let value = nginx_duration(arg).map_err(|m| invalid(d, m))?;
                settings.next_upstream_timeout = Some(sourced(value, d));
            }
            "proxy_next_upstream_tries" => {
                let value = arg.parse::<u32>().map_err(|_| {
                    invalid(
                        d,
                        format!("{arg:?} is not a number of tries (0 = no limit)"),
                    )
                })?;
                settings.next_upstream_tries = Some(sourced(value, d));
            }
            "proxy_next_upstream" | "proxy_protocol" => {
                let value = on_off(d)?;
                if d.name == "proxy_protocol" {
                    settings.proxy_protocol = Some(sourced(value, d));
                } else {
                    settings.next_upstream = Some(sourced(value, d));
                }
            }
            "proxy_protocol_timeout" => {
                let value = nginx_duration(arg).map_err(|m| invalid(d, m))?;
                if value.is_zero() {
                    self.warn(
                        d,
                        "0 is not accepted by warren (timeouts must be longer than 0); the \
                         default is used",
                    );
                } else {
                    settings.proxy_protocol_timeout = Some(sourced(value, d));
                }
            }
            "tcp_nodelay" => {
                if !on_off(d)? {
                    self.warn(
                        d,
                        "warren always sets TCP_NODELAY (AMQP frames are small); cannot be \
                         turned off",
                    );
                }
            }
            _ => {
                // proxy_half_close: warren always forwards a half-close and lets both
                // directions finish, which is what `on` asks for.
                if !on_off(d)? {
                    self.warn(
                        d,
                        "warren always forwards a half-close (shutdown of one direction) and \
                         keeps the other direction open until it finishes too",
                    );
                }
            }
        }
        Ok(true)
    }

    fn upstream(&mut self, d: &Directive) -> Result<(), ImportError> {
        let nginx_name = d.args[0].clone();
        let base = sanitize(&nginx_name);
        if base != nginx_name {
            self.warn(
                d,
                format!(
                    "pool named {base:?}: warren names may contain only letters, digits, '.', \
                     '_' and '-'"
                ),
            );
        }
        let name = unique(&base, &mut self.pool_names);
        let mut balance: Option<Sourced<Balance>> = None;
        let mut comments = Vec::new();
        let mut servers = Vec::new();
        for c in d.block.as_deref().unwrap_or_default() {
            let chosen = match c.name.as_str() {
                "server" => {
                    if let Some(server) = self.upstream_server(c)? {
                        servers.push(server);
                    }
                    continue;
                }
                "least_conn" => {
                    no_args(c)?;
                    Some(Balance::LeastConn)
                }
                "hash" => self.hash(c, &mut comments)?,
                "random" => Some(self.random(c)?),
                _ => {
                    self.unsupported(c);
                    continue;
                }
            };
            if let Some(previous) = &balance {
                self.warn(
                    c,
                    format!(
                        "load balancing method redefined (also {}); the last one wins, as in NGINX",
                        previous.note
                    ),
                );
            }
            if let Some(value) = chosen {
                balance = Some(Sourced {
                    value,
                    note: note(c),
                });
            }
        }
        if servers.is_empty() {
            return Err(invalid(
                d,
                "no servers warren can take are inside the upstream (see the warnings)",
            ));
        }
        self.passive_health(&name, &servers, &mut comments);
        let backends = self.backends(&name, servers);
        self.pools.push(OutPool {
            name,
            nginx_name,
            note: note(d),
            balance: balance.unwrap_or(Sourced {
                value: crate::config::DEFAULT_BALANCE,
                note: "NGINX's default".to_string(),
            }),
            comments,
            backends,
        });
        Ok(())
    }

    /// `hash KEY [consistent]`: source_hash when the key is the client address.
    fn hash(
        &mut self,
        c: &Directive,
        comments: &mut Vec<String>,
    ) -> Result<Option<Balance>, ImportError> {
        let consistent = match c.args.as_slice() {
            [_] => false,
            [_, flag] if flag == "consistent" => true,
            _ => return Err(invalid(c, "expected `hash KEY [consistent]`")),
        };
        if !matches!(c.args[0].as_str(), "$remote_addr" | "$binary_remote_addr") {
            self.warn(
                c,
                "warren hashes only on the client address (source_hash); this key is not \
                 translated and the pool uses round_robin",
            );
            return Ok(None);
        }
        comments.push(if consistent {
            "source_hash is consistent (rendezvous hashing), like `consistent`: a backend coming \
             or going moves only its own clients. The client → node mapping differs from \
             NGINX's, so clients move once at the switch."
                .to_string()
        } else {
            "source_hash is always consistent (rendezvous hashing): unlike NGINX's plain hash, a \
             backend coming or going moves only its own clients. The client → node mapping \
             differs from NGINX's, so clients move once at the switch."
                .to_string()
        });
        Ok(Some(Balance::SourceHash))
    }

    /// `random [two [METHOD]]` → random_two.
    fn random(&mut self, c: &Directive) -> Result<Balance, ImportError> {
        match c.args.as_slice() {
            [] => self.warn(
                c,
                "warren has no plain random; random_two (two random picks, the less loaded \
                 wins) is used",
            ),
            [two] if two == "two" => {}
            [two, method] if two == "two" && method == "least_conn" => {}
            [two, method] if two == "two" => self.warn(
                c,
                format!(
                    "{method:?} is not supported; random_two compares active connections (as \
                     least_conn does)"
                ),
            ),
            _ => return Err(invalid(c, "expected `random [two [least_conn]]`")),
        }
        Ok(Balance::RandomTwo)
    }

    /// `server ADDR [weight=N] [max_fails=N] [fail_timeout=T] [backup] [down] ...`.
    fn upstream_server<'d>(
        &mut self,
        d: &'d Directive,
    ) -> Result<Option<UpstreamServer<'d>>, ImportError> {
        if d.block.is_some() || d.args.is_empty() {
            return Err(invalid(d, "expected `server ADDRESS [PARAMETERS];`"));
        }
        let (host, addr) = match target(&d.args[0]).map_err(|m| invalid(d, m))? {
            Target::Addr { host, addr } => (host, addr),
            Target::Unsupported(why) => {
                self.warn(d, format!("{why}; this server is left out"));
                return Ok(None);
            }
        };
        let mut server = UpstreamServer {
            directive: d,
            host,
            addr,
            weight: None,
            max_fails: NGINX_MAX_FAILS,
            fail_timeout: NGINX_FAIL_TIMEOUT,
            backup: false,
            down: false,
        };
        for param in &d.args[1..] {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match (key, value.is_empty()) {
                ("weight", false) => match value.parse::<u32>() {
                    Ok(w) if w >= 1 => server.weight = Some(w),
                    _ => return Err(invalid(d, format!("invalid weight {value:?}"))),
                },
                ("max_fails", false) => {
                    server.max_fails = value
                        .parse()
                        .map_err(|_| invalid(d, format!("invalid max_fails {value:?}")))?;
                }
                ("fail_timeout", false) => {
                    server.fail_timeout = nginx_duration(value).map_err(|m| invalid(d, m))?;
                }
                ("backup", true) => server.backup = true,
                ("down", true) => server.down = true,
                ("max_conns", false) => self.warn(
                    d,
                    "max_conns is not supported per backend; the closest is the listener's \
                     max_connections",
                ),
                ("slow_start", false) => self.warn(
                    d,
                    "slow_start is not supported; the backend gets its full share at once",
                ),
                ("resolve", true) => self.warn(
                    d,
                    "resolve: warren resolves host names when it loads the config and on reload, \
                     not while running",
                ),
                _ => self.warn(
                    d,
                    format!("parameter {param:?} is not supported and was left out"),
                ),
            }
        }
        Ok(Some(server))
    }

    /// max_fails / fail_timeout against warren's passive rule: without a probe, one failed
    /// connect takes a backend out for 10 s — exactly NGINX's defaults.
    fn passive_health(
        &mut self,
        pool: &str,
        servers: &[UpstreamServer<'_>],
        comments: &mut Vec<String>,
    ) {
        let mut suggest_fall = 0;
        for s in servers {
            if s.max_fails == NGINX_MAX_FAILS && s.fail_timeout == NGINX_FAIL_TIMEOUT {
                continue;
            }
            if s.max_fails == 0 {
                self.warn(
                    s.directive,
                    format!(
                        "max_fails=0 turns NGINX's failure accounting off; warren cannot: without a \
                         probe, one failed connect takes a backend out for {}",
                        warren_duration(NGINX_FAIL_TIMEOUT)
                    ),
                );
                continue;
            }
            suggest_fall = suggest_fall.max(s.max_fails);
            self.warn(
                s.directive,
                format!(
                    "max_fails={} fail_timeout={} has no exact equivalent: without a probe warren \
                     takes a backend out for {} after one failed connect; with a probe, `fall` \
                     consecutive failures (failed connects count) take it down until `rise` \
                     probes pass. A commented [pool.{pool}.health] with fall = {} is in the output",
                    s.max_fails,
                    warren_duration(s.fail_timeout),
                    warren_duration(NGINX_FAIL_TIMEOUT),
                    s.max_fails
                ),
            );
        }
        if suggest_fall > 0 {
            let key = toml_key(pool);
            comments.push(
                "NGINX max_fails/fail_timeout differ from the defaults (see the warnings). The \
                 closest warren has is an active probe, whose `fall` counts failed connects too \
                 (uncomment to use it; \"amqp\" probes RabbitMQ itself, see config/warren.toml):"
                    .to_string(),
            );
            comments.push(format!("[pool.{key}.health]"));
            comments.push("kind = \"tcp\"".to_string());
            comments.push(format!("fall = {suggest_fall}"));
        }
    }

    fn backends(&mut self, pool: &str, servers: Vec<UpstreamServer<'_>>) -> Vec<OutBackend> {
        let live_primaries = servers.iter().filter(|s| !s.down && !s.backup).count();
        let any_primary = servers.iter().any(|s| !s.backup);
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for s in servers {
            let d = s.directive;
            let mut backup = s.backup;
            if !any_primary && backup {
                self.warn(
                    d,
                    "every server of the upstream is a backup; warren needs a primary, so the \
                     backups are primaries here",
                );
                backup = false;
            }
            let mut commented_out = false;
            if s.down {
                if live_primaries == 0 {
                    self.warn(
                        d,
                        format!(
                            "`down` has no config key in warren, and no other primary server is \
                             left, so it is kept as a backend: drain it after starting warren \
                             (`warren ctl drain NAME --pool {pool}`; with admin.state_file the \
                             drain survives restarts)"
                        ),
                    );
                } else {
                    commented_out = true;
                    self.warn(
                        d,
                        format!(
                            "`down` has no config key in warren: the backend is in the output \
                             commented out; to keep it known but unused, uncomment it and drain \
                             it (`warren ctl drain NAME --pool {pool}`)"
                        ),
                    );
                }
            }
            let base = sanitize(&s.host);
            let name = if names.contains(&base) {
                let port = s.addr.rsplit(':').next().unwrap_or_default();
                unique(&format!("{base}-{port}"), &mut names)
            } else {
                unique(&base, &mut names)
            };
            out.push(OutBackend {
                name,
                addr: s.addr,
                weight: s.weight,
                backup,
                note: note(d),
                commented_out,
            });
        }
        out
    }

    fn server(&mut self, d: &Directive, inherited: &ProxySettings) -> Result<(), ImportError> {
        let Some(children) = d.block.as_deref() else {
            return Err(invalid(
                d,
                "a server in stream needs a block: server { ... }",
            ));
        };
        let mut settings = inherited.clone();
        let mut seen = HashSet::new();
        let mut listens: Vec<Listen<'_>> = Vec::new();
        let mut proxy_pass: Option<&Directive> = None;
        for c in children {
            match c.name.as_str() {
                "listen" => {
                    if let Some(listen) = self.listen(c)? {
                        listens.push(listen);
                    }
                }
                "proxy_pass" => {
                    if c.args.len() != 1 || c.block.is_some() {
                        return Err(invalid(c, "expected `proxy_pass UPSTREAM_OR_ADDRESS;`"));
                    }
                    if let Some(first) = proxy_pass {
                        return Err(invalid(
                            c,
                            format!("is duplicate (the first is at {})", first.loc),
                        ));
                    }
                    proxy_pass = Some(c);
                }
                _ => {
                    if !self.proxy_setting(&mut settings, &mut seen, c)? {
                        self.unsupported(c);
                    }
                }
            }
        }
        let Some(pass) = proxy_pass else {
            self.warn(
                d,
                "server without proxy_pass: warren only proxies, so this server is left out",
            );
            return Ok(());
        };
        if listens.is_empty() {
            self.warn(
                d,
                "no listen warren can take (see the warnings); this server and its proxy_pass \
                 are left out",
            );
            return Ok(());
        }
        let Some(pool) = self.pass_pool(pass)? else {
            self.warn(
                d,
                "its proxy_pass cannot be translated; this server is left out",
            );
            return Ok(());
        };
        let keys = listener_keys(&settings, pass, &mut self.warnings);
        for Listen {
            directive: listen,
            addr,
            accept_proxy_protocol: accept_pp,
            note: addr_note,
        } in listens
        {
            let port = addr.rsplit(':').next().unwrap_or_default();
            let name = if self.listener_names.contains(&pool) {
                unique(&format!("{pool}-{port}"), &mut self.listener_names)
            } else {
                unique(&pool, &mut self.listener_names)
            };
            let mut keys = keys.clone();
            if accept_pp {
                keys.push((
                    "accept_proxy_protocol".to_string(),
                    "true".to_string(),
                    format!("listen ... proxy_protocol  ({})", listen.loc),
                ));
            }
            let mut listen_note = note(listen);
            if let Some(extra) = addr_note {
                let _ = write!(listen_note, "; {extra}");
            }
            self.listeners.push(OutListener {
                name,
                listen: Sourced {
                    value: addr,
                    note: listen_note,
                },
                pool: Sourced {
                    value: pool.clone(),
                    note: note(pass),
                },
                keys,
            });
        }
        Ok(())
    }

    /// `listen ADDR [proxy_protocol] [...]`: the address, whether a PROXY header is expected,
    /// and a note; `None` (with a warning) when warren cannot take it.
    fn listen<'d>(&mut self, d: &'d Directive) -> Result<Option<Listen<'d>>, ImportError> {
        if d.args.is_empty() || d.block.is_some() {
            return Err(invalid(d, "expected `listen ADDRESS [PARAMETERS];`"));
        }
        let (addr, addr_note) = match listen_addr(&d.args[0]).map_err(|m| invalid(d, m))? {
            ListenAddr::Addr(addr, note) => (addr, note),
            ListenAddr::Unsupported(why) => {
                self.warn(d, format!("{why}; this listen is left out"));
                return Ok(None);
            }
        };
        let mut accept_pp = false;
        for param in &d.args[1..] {
            let key = param.split_once('=').map_or(param.as_str(), |(k, _)| k);
            match key {
                "proxy_protocol" => accept_pp = true,
                "ssl" => {
                    self.warn(
                        d,
                        "warren does not terminate TLS, so this listen is left out; let RabbitMQ \
                         terminate TLS (listeners.ssl) and forward its TLS port as plain TCP",
                    );
                    return Ok(None);
                }
                "udp" => {
                    self.warn(d, "warren proxies TCP only; this UDP listen is left out");
                    return Ok(None);
                }
                "backlog" | "reuseport" | "so_keepalive" | "fastopen" | "rcvbuf" | "sndbuf"
                | "deferred" | "bind" | "ipv6only" | "setfib" | "accept_filter" => self.warn(
                    d,
                    format!(
                        "parameter {param:?} is not configurable in warren (it binds each listen \
                         address itself, IPv6 addresses IPv6-only, with a backlog of 4096)"
                    ),
                ),
                _ => self.warn(d, format!("parameter {param:?} is not supported")),
            }
        }
        let socket: std::net::SocketAddr = addr
            .parse()
            .map_err(|_| invalid(d, format!("{addr:?} is not an address")))?;
        let clash = self.listens.iter().find(|(other, _)| {
            *other == socket
                || (other.port() == socket.port()
                    && other.is_ipv4() == socket.is_ipv4()
                    && (other.ip().is_unspecified() || socket.ip().is_unspecified()))
        });
        if let Some((other, at)) = clash.cloned() {
            if other == socket {
                return Err(invalid(
                    d,
                    format!("duplicate listen {addr} (also at {at})"),
                ));
            }
            let message = format!(
                "overlaps listen {other} at {at}: NGINX picks the server by local address, \
                 warren binds each listen address itself and cannot; this listen is left out"
            );
            self.warn(d, message);
            return Ok(None);
        }
        self.listens.push((socket, d.loc.clone()));
        Ok(Some(Listen {
            directive: d,
            addr,
            accept_proxy_protocol: accept_pp,
            note: addr_note,
        }))
    }

    /// The pool a `proxy_pass` names: an upstream, or a one-backend pool for `host:port`.
    fn pass_pool(&mut self, pass: &Directive) -> Result<Option<String>, ImportError> {
        let arg = &pass.args[0];
        if let Some(pool) = self.pools.iter().find(|p| p.nginx_name == *arg) {
            return Ok(Some(pool.name.clone()));
        }
        if !arg.contains(':') && !arg.contains('$') && !arg.starts_with('[') {
            return Err(invalid(
                pass,
                format!("no upstream named {arg:?} in the stream block, and no port"),
            ));
        }
        let (host, addr) = match target(arg).map_err(|m| invalid(pass, m))? {
            Target::Addr { host, addr } => (host, addr),
            Target::Unsupported(why) => {
                self.warn(pass, why);
                return Ok(None);
            }
        };
        let base = sanitize(&addr);
        let name = unique(&base, &mut self.pool_names);
        self.pools.push(OutPool {
            name: name.clone(),
            nginx_name: arg.clone(),
            note: format!("proxy_pass {arg} without an upstream  ({})", pass.loc),
            balance: Sourced {
                value: crate::config::DEFAULT_BALANCE,
                note: "one backend".to_string(),
            },
            comments: Vec::new(),
            backends: vec![OutBackend {
                name: sanitize(&host),
                addr,
                weight: None,
                backup: false,
                note: note(pass),
                commented_out: false,
            }],
        });
        Ok(Some(name))
    }

    /// The TOML text.
    fn render(&self, main: &Path, warnings: &[Warning]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# warren config translated by `warren import-nginx` from {}.",
            main.display()
        );
        out.push_str(
            "# Check it with `warren check --config FILE`. Keys that are not set keep warren's \
             defaults,\n# which are NGINX's (connect_timeout 60s, idle_timeout 10m, round_robin, \
             every backend tried).\n",
        );
        if warnings.is_empty() {
            out.push_str("# Every NGINX directive was translated.\n");
        } else {
            let _ = writeln!(
                out,
                "# {} NGINX directive(s) not translated exactly (also printed on stderr):",
                warnings.len()
            );
            for w in warnings {
                let _ = writeln!(out, "#   {}", one_line(&w.to_string()));
            }
        }
        out.push_str(
            "#\n# No [admin] section, as NGINX has none. Add one for /metrics, /readyz and \
             drain/undrain:\n# [admin]\n# listen = \"127.0.0.1:9901\"\n",
        );
        for l in &self.listeners {
            out.push_str("\n[[listener]]\n");
            line(&mut out, "name", &toml_str(&l.name), "");
            line(
                &mut out,
                "listen",
                &toml_str(&l.listen.value),
                &l.listen.note,
            );
            line(&mut out, "pool", &toml_str(&l.pool.value), &l.pool.note);
            for (key, value, note) in &l.keys {
                line(&mut out, key, value, note);
            }
        }
        for p in &self.pools {
            let key = toml_key(&p.name);
            let header = format!("[pool.{key}]");
            let _ = writeln!(out, "\n{header:<32}# {}", one_line(&p.note));
            line(
                &mut out,
                "balance",
                &toml_str(p.balance.value.as_str()),
                &p.balance.note,
            );
            for c in &p.comments {
                for l in wrap(&one_line(c), COMMENT_WIDTH) {
                    let _ = writeln!(out, "# {l}");
                }
            }
            for b in &p.backends {
                let prefix = if b.commented_out { "# " } else { "" };
                if b.commented_out {
                    let _ = writeln!(
                        out,
                        "\n# `down` in NGINX; uncomment and drain it to keep it known:"
                    );
                } else {
                    out.push('\n');
                }
                let _ = writeln!(out, "{prefix}[[pool.{key}.backend]]");
                let mut body = String::new();
                line(&mut body, "name", &toml_str(&b.name), "");
                line(&mut body, "addr", &toml_str(&b.addr), &b.note);
                if let Some(weight) = b.weight {
                    line(&mut body, "weight", &weight.to_string(), "");
                }
                if b.backup {
                    line(&mut body, "backup", "true", "");
                }
                for l in body.lines() {
                    let _ = writeln!(out, "{prefix}{l}");
                }
            }
        }
        out
    }
}

/// `on` / `off`.
fn on_off(d: &Directive) -> Result<bool, ImportError> {
    match d.args.as_slice() {
        [v] if v == "on" => Ok(true),
        [v] if v == "off" => Ok(false),
        _ => Err(invalid(d, "expected \"on\" or \"off\"")),
    }
}

fn no_args(d: &Directive) -> Result<(), ImportError> {
    if d.args.is_empty() && d.block.is_none() {
        Ok(())
    } else {
        Err(invalid(d, "takes no arguments"))
    }
}

/// The listener keys a server's proxy settings give, as (key, TOML value, note).
fn listener_keys(
    s: &ProxySettings,
    pass: &Directive,
    warnings: &mut Vec<(usize, Warning)>,
) -> Vec<(String, String, String)> {
    let mut keys = Vec::new();
    let mut push = |key: &str, value: String, note: &str| {
        keys.push((key.to_string(), value, note.to_string()));
    };
    if let Some(t) = &s.connect_timeout {
        push(
            "connect_timeout",
            toml_str(&warren_duration(t.value)),
            &t.note,
        );
    }
    if let Some(t) = &s.idle_timeout {
        push("idle_timeout", toml_str(&warren_duration(t.value)), &t.note);
    }
    if let Some(t) = &s.proxy_protocol_timeout {
        push(
            "proxy_protocol_timeout",
            toml_str(&warren_duration(t.value)),
            &t.note,
        );
    }
    match (&s.next_upstream, &s.next_upstream_tries) {
        (Some(off), tries) if !off.value => {
            push("next_upstream_tries", "1".to_string(), &off.note);
            if let Some(tries) = tries {
                warnings.push((
                    pass.seq,
                    Warning {
                        loc: pass.loc.clone(),
                        directive: pass.shown(),
                        message: format!(
                            "{} has no effect with `proxy_next_upstream off`; one backend is tried",
                            tries.note
                        ),
                    },
                ));
            }
        }
        (_, Some(tries)) => push("next_upstream_tries", tries.value.to_string(), &tries.note),
        _ => {}
    }
    if let Some(t) = &s.next_upstream_timeout {
        push(
            "next_upstream_timeout",
            toml_str(&warren_duration(t.value)),
            &t.note,
        );
    }
    if let Some(pp) = &s.proxy_protocol {
        if pp.value {
            let note = format!(
                "{}; NGINX sends v1; RabbitMQ needs proxy_protocol = true",
                pp.note
            );
            push("proxy_protocol", toml_str("v1"), &note);
        } else {
            push("proxy_protocol", toml_str("off"), &pp.note);
        }
    }
    keys
}

/// `key = value   # note`, the note aligned.
fn line(out: &mut String, key: &str, value: &str, note: &str) {
    let assignment = format!("{key} = {value}");
    if note.is_empty() {
        let _ = writeln!(out, "{assignment}");
    } else {
        let _ = writeln!(out, "{assignment:<32}# {}", one_line(note));
    }
}

/// Width pool comments are wrapped at (the `# ` not counted).
const COMMENT_WIDTH: usize = 96;

/// Words of `text` in lines of at most `width` characters (a longer word gets its own line).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() || lines.is_empty() {
        lines.push(current);
    }
    lines
}

/// Keeps a comment on one line: a newline inside a quoted NGINX value must not end it.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Why a top-level directive outside `stream` is not translated.
fn outside_reason(name: &str) -> &'static str {
    match name {
        "http" => "warren proxies TCP only; HTTP stays with NGINX or another proxy",
        "mail" => "mail proxying is not supported",
        "events" | "worker_connections" | "use" | "multi_accept" => {
            "NGINX event-loop settings; warren's data plane sizes itself (and caps connections \
             with the listener's max_connections)"
        }
        "worker_processes" | "worker_cpu_affinity" => {
            "see `warren run --workers N` (default: one per CPU)"
        }
        "user" => "run warren under its own user with systemd (see systemd/)",
        "worker_rlimit_nofile" => "raise LimitNOFILE in warren's systemd unit",
        "pid" => "warren writes no pid file; systemd tracks the process",
        "load_module" => "NGINX modules do not apply",
        "error_log" => "warren logs to stderr (the journal under systemd); see --log-level",
        _ => "not translated",
    }
}

/// Why a block directive inside `stream` is not translated, when it has a specific reason.
fn block_reason(name: &str) -> Option<&'static str> {
    match name {
        "map" | "geo" | "split_clients" => {
            Some("variables are not supported by warren; the config it feeds cannot be translated")
        }
        _ => None,
    }
}

/// Why a directive inside `stream` (or its server or upstream blocks) is not translated.
fn stream_reason(name: &str) -> &'static str {
    match name {
        n if n.starts_with("proxy_ssl") => {
            "warren does not open TLS connections to backends; forward to RabbitMQ's TLS port as \
             plain TCP instead"
        }
        n if n.starts_with("ssl") => {
            "warren does not terminate TLS; let RabbitMQ terminate it (listeners.ssl) and forward \
             its TLS port as plain TCP"
        }
        n if n.starts_with("js_") || n == "perl" || n == "set" => {
            "scripting and variables are not supported"
        }
        "resolver" | "resolver_timeout" => {
            "warren resolves backend host names when it loads the config and on reload; there is \
             no resolver setting"
        }
        n if n.starts_with("limit_conn") => {
            "no per-key connection limits; the closest is the listener's max_connections (one cap \
             for the whole listener)"
        }
        "access_log" | "log_format" | "open_log_file_cache" => {
            "warren logs one line per closed connection to stderr (the journal under systemd); \
             there is no access log format"
        }
        "error_log" => "warren logs to stderr (the journal under systemd); see --log-level",
        "allow" | "deny" => "warren has no access lists; use a firewall",
        "proxy_bind" => "binding a source address for backend connections is not supported",
        "proxy_buffer_size" | "preread_buffer_size" | "preread_timeout" => {
            "not configurable: warren forwards with splice(2) and a small fixed buffer"
        }
        "proxy_download_rate" | "proxy_upload_rate" => "warren has no rate limiting",
        "proxy_responses" | "proxy_requests" => "UDP settings; warren proxies TCP only",
        "proxy_socket_keepalive" => "TCP keepalive towards backends is not configurable",
        "zone" => "shared memory zone: not needed, warren's workers share one routing snapshot",
        "keepalive" | "keepalive_timeout" | "keepalive_requests" => {
            "connection reuse does not apply to a TCP proxy"
        }
        "return" => "warren only proxies; it has no fixed responses",
        "ssl_preread" => "warren does not read TLS ClientHello; no routing by SNI",
        "variables_hash_max_size" | "variables_hash_bucket_size" => "variables are not supported",
        _ => "no warren equivalent; not translated",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Files in memory: path → text.
    struct MemFiles(BTreeMap<PathBuf, String>);

    impl MemFiles {
        fn new(files: &[(&str, &str)]) -> MemFiles {
            MemFiles(
                files
                    .iter()
                    .map(|(p, t)| (PathBuf::from(p), t.to_string()))
                    .collect(),
            )
        }
    }

    impl Files for MemFiles {
        fn read(&self, path: &Path) -> io::Result<String> {
            self.0
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
        }

        fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
            let mut names: Vec<String> = self
                .0
                .keys()
                .filter_map(|p| p.strip_prefix(dir).ok())
                .filter_map(|rest| rest.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            names.dedup();
            if names.is_empty() {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
            }
            Ok(names)
        }
    }

    fn file() -> Arc<Path> {
        Arc::from(Path::new("nginx.conf"))
    }

    fn import_str(text: &str) -> Result<Import, ImportError> {
        import(
            Path::new("/etc/nginx/nginx.conf"),
            &MemFiles::new(&[("/etc/nginx/nginx.conf", text)]),
        )
    }

    /// The imported TOML loaded through warren's own config loader (IP addresses only, so no
    /// DNS is involved).
    fn load(import: &Import) -> crate::config::Config {
        crate::config::from_toml(&import.toml, Path::new("imported.toml"))
            .unwrap_or_else(|e| panic!("{e}\n--- output ---\n{}", import.toml))
    }

    fn warnings(import: &Import) -> Vec<String> {
        import.warnings.iter().map(ToString::to_string).collect()
    }

    const CLASSIC: &str = "\
stream {
    upstream rabbitmq {
        server 10.0.0.1:5672;
        server 10.0.0.2:5672;
    }
    server {
        listen 5672;
        proxy_pass rabbitmq;
        proxy_connect_timeout 5s;
        proxy_timeout 120s;
    }
}
";

    #[test]
    fn tokenizer_cases() {
        use Token::*;
        let w = |s: &str| Word(s.to_string());
        let cases: Vec<(&str, Vec<(Token, usize)>)> = vec![
            ("a b;", vec![(w("a"), 1), (w("b"), 1), (Semicolon, 1)]),
            (
                "s {\n  x 1; # comment ; {\n}",
                vec![
                    (w("s"), 1),
                    (Open, 1),
                    (w("x"), 2),
                    (w("1"), 2),
                    (Semicolon, 2),
                    (Close, 3),
                ],
            ),
            (
                "log \"a b;c\" 'd\\'e';",
                vec![
                    (w("log"), 1),
                    (w("a b;c"), 1),
                    (w("d'e"), 1),
                    (Semicolon, 1),
                ],
            ),
            (
                "map ${a}x $b {",
                vec![(w("map"), 1), (w("${a}x"), 1), (w("$b"), 1), (Open, 1)],
            ),
            (
                "x \"multi\nline\" y;",
                vec![
                    (w("x"), 1),
                    (w("multi\nline"), 1),
                    (w("y"), 2),
                    (Semicolon, 2),
                ],
            ),
            (
                "a#not-a-comment;",
                vec![(w("a#not-a-comment"), 1), (Semicolon, 1)],
            ),
            (
                "esc a\\;b;",
                vec![(w("esc"), 1), (w("a\\;b"), 1), (Semicolon, 1)],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(tokenize(text, &file()).unwrap(), want, "{text:?}");
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        // (text, line of the error, message fragment)
        let cases = [
            ("a \"open;\n\n", 1, "unterminated \"-quoted string"),
            ("stream {\n  server {\n  }\n", 1, "no closing \"}\""),
            ("a;\n}\n", 2, "unexpected \"}\" without a block"),
            ("a;\n;\n", 2, "unexpected \";\""),
            ("\n{\n", 2, "unexpected \"{\""),
            ("listen 5672\n}", 2, "`listen` needs a \";\" first"),
            ("x 1;\nlisten 5672", 2, "`listen` needs a \";\" or a block"),
            ("x \"a\"b;", 1, "right after a quoted string"),
            ("x ${a;", 1, "unterminated ${variable}"),
        ];
        for (text, line, fragment) in cases {
            match parse(text, &file()) {
                Err(ImportError::Syntax { at, message }) => {
                    assert_eq!(at.line, line, "{text:?}: {message}");
                    assert!(message.contains(fragment), "{text:?}: {message:?}");
                }
                other => panic!("{text:?}: expected a syntax error, got {other:?}"),
            }
        }
    }

    #[test]
    fn parser_builds_nested_blocks_with_lines() {
        let parsed = parse("a 1;\nb {\n  c \"x y\";\n  d { }\n}\n", &file()).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            (parsed[0].name.as_str(), parsed[0].args.as_slice()),
            ("a", &["1".to_string()][..])
        );
        let b = parsed[1].block.as_ref().unwrap();
        assert_eq!(parsed[1].loc.line, 2);
        assert_eq!(
            (b[0].name.as_str(), b[0].args[0].as_str(), b[0].loc.line),
            ("c", "x y", 3)
        );
        assert_eq!(b[1].block.as_deref(), Some(&[][..]));
        assert_eq!(b[0].shown(), "c \"x y\";");
        assert_eq!(parsed[1].shown(), "b { ... }");
    }

    #[test]
    fn glob_match_cases() {
        let cases = [
            ("*.conf", "a.conf", true),
            ("*.conf", "a.conf.bak", false),
            ("*.conf", ".hidden.conf", false),
            (".*.conf", ".hidden.conf", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[ab]*", "b1", true),
            ("[ab]*", "c1", false),
            ("[!ab]*", "c1", true),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("[]]", "]", true),
            ("[x", "[x", true),
            ("*", "", true),
            ("exact", "exact", true),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(glob_match(pattern, name), want, "{pattern:?} vs {name:?}");
        }
    }

    #[test]
    fn nginx_duration_cases() {
        let ok = [
            ("120s", 120_000),
            ("120", 120_000),
            ("5m", 300_000),
            ("500ms", 500),
            ("1h30m", 5_400_000),
            ("1h 30m", 5_400_000),
            ("1d", 86_400_000),
            ("1w", 604_800_000),
            ("1M", 2_592_000_000),
            ("1y", 31_536_000_000),
            ("0", 0),
        ];
        for (input, ms) in ok {
            assert_eq!(
                nginx_duration(input),
                Ok(Duration::from_millis(ms)),
                "{input}"
            );
        }
        for input in ["", "s", "5x", "-1s", "1.5s", "99999999999999999999s"] {
            assert!(nginx_duration(input).is_err(), "{input}");
        }
        let shown = [
            (Duration::from_secs(120), "120s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_secs(600), "600s"),
            (Duration::ZERO, "0s"),
        ];
        for (d, want) in shown {
            assert_eq!(warren_duration(d), want);
            assert_eq!(
                crate::config::parse_duration(want),
                Ok(d),
                "{want} reads back"
            );
        }
    }

    #[test]
    fn listen_addr_cases() {
        let addr = |s: &str| Ok(ListenAddr::Addr(s.to_string(), None));
        let cases: Vec<(&str, Result<ListenAddr, String>)> = vec![
            ("5672", addr("0.0.0.0:5672")),
            ("*:5672", addr("0.0.0.0:5672")),
            ("10.1.2.3:5672", addr("10.1.2.3:5672")),
            ("[::]:5672", addr("[::]:5672")),
            ("[::1]:5673", addr("[::1]:5673")),
        ];
        for (input, want) in cases {
            assert_eq!(listen_addr(input), want, "{input}");
        }
        assert!(matches!(
            listen_addr("localhost:5672"),
            Ok(ListenAddr::Addr(a, Some(_))) if a == "127.0.0.1:5672"
        ));
        for input in ["unix:/run/x.sock", "rabbit.example:5672", "$x"] {
            assert!(
                matches!(listen_addr(input), Ok(ListenAddr::Unsupported(_))),
                "{input}"
            );
        }
        for (input, fragment) in [
            ("0", "invalid port"),
            ("70000", "invalid port"),
            ("10.0.0.1", "no port"),
            ("[::1]", "no port"),
            ("[zz]:1", "not an IPv6"),
        ] {
            let err = listen_addr(input).unwrap_err();
            assert!(err.contains(fragment), "{input}: {err}");
        }
    }

    #[test]
    fn target_cases() {
        let addr = |host: &str, addr: &str| {
            Ok(Target::Addr {
                host: host.to_string(),
                addr: addr.to_string(),
            })
        };
        let cases: Vec<(&str, Result<Target, String>)> = vec![
            ("10.0.0.1:5672", addr("10.0.0.1", "10.0.0.1:5672")),
            (
                "rabbit-a.internal:5672",
                addr("rabbit-a.internal", "rabbit-a.internal:5672"),
            ),
            ("[fd00::1]:5672", addr("fd00::1", "[fd00::1]:5672")),
        ];
        for (input, want) in cases {
            assert_eq!(target(input), want, "{input}");
        }
        for input in ["unix:/tmp/s", "$upstream_addr"] {
            assert!(
                matches!(target(input), Ok(Target::Unsupported(_))),
                "{input}"
            );
        }
        for (input, fragment) in [
            ("rabbit", "no port"),
            ("fd00::1:5672", "need brackets"),
            ("a b:1", "not a host name"),
            ("h:0", "invalid port"),
        ] {
            let err = target(input).unwrap_err();
            assert!(err.contains(fragment), "{input}: {err}");
        }
    }

    #[test]
    fn names_are_sanitized_and_unique() {
        assert_eq!(sanitize("rabbit_cluster"), "rabbit_cluster");
        assert_eq!(sanitize("fd00::1"), "fd00--1");
        assert_eq!(sanitize("a b/c"), "a-b-c");
        assert_eq!(sanitize("::"), "unnamed");
        let mut taken = HashSet::new();
        assert_eq!(unique("a", &mut taken), "a");
        assert_eq!(unique("a", &mut taken), "a-2");
        assert_eq!(unique("a", &mut taken), "a-3");
        assert_eq!(toml_key("rabbits"), "rabbits");
        assert_eq!(toml_key("10.0.0.9-5672"), "\"10.0.0.9-5672\"");
        assert_eq!(toml_str("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    }

    #[test]
    fn classic_config_translates_key_for_key() {
        let import = import_str(CLASSIC).unwrap();
        assert_eq!(import.warnings, []);
        let config = load(&import);
        let l = &config.listeners[0];
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(
            (l.name.as_str(), l.listen, l.pool.as_str()),
            ("rabbitmq", "0.0.0.0:5672".parse().unwrap(), "rabbitmq")
        );
        assert_eq!(
            (l.connect_timeout, l.idle_timeout),
            (Duration::from_secs(5), Duration::from_secs(120))
        );
        let defaults = crate::config::ListenerConfig::default_for("x", l.listen, "x");
        assert_eq!(l.next_upstream_tries, defaults.next_upstream_tries);
        assert_eq!(l.proxy_protocol, crate::config::ProxyProtocol::Off);
        let pool = config.pool("rabbitmq").unwrap();
        assert_eq!(pool.balance, Balance::RoundRobin);
        assert_eq!(pool.health, None);
        let backends: Vec<(&str, String, u32, bool)> = pool
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.addr.to_string(), b.weight, b.backup))
            .collect();
        assert_eq!(
            backends,
            [
                ("10.0.0.1", "10.0.0.1:5672".to_string(), 1, false),
                ("10.0.0.2", "10.0.0.2:5672".to_string(), 1, false)
            ]
        );
        assert!(import.toml.contains("idle_timeout = \"120s\""));
        assert!(import
            .toml
            .contains("# proxy_timeout 120s;  (/etc/nginx/nginx.conf:10)"));
    }

    /// A stream block wrapped around `body`, with one upstream `u` of two IPs for servers to use.
    fn stream(body: &str) -> String {
        format!(
            "stream {{\n upstream u {{ server 10.0.0.1:5672; server 10.0.0.2:5672; }}\n{body}\n}}\n"
        )
    }

    #[test]
    fn translations_table() {
        // (stream body, fragments the TOML must contain, warning fragments in order)
        let cases: Vec<(String, Vec<&str>, Vec<&str>)> = vec![
            (
                stream("upstream lc { least_conn; server 10.0.0.3:5672 weight=3; server 10.0.0.4:5672; }\n server { listen 5672; proxy_pass lc; }"),
                vec!["balance = \"least_conn\"", "weight = 3"],
                vec![],
            ),
            (
                stream("upstream h { hash $remote_addr consistent; server 10.0.0.3:5672; server 10.0.0.4:5672 backup; }\n server { listen 5672; proxy_pass h; }"),
                vec!["balance = \"source_hash\"", "backup = true", "like `consistent`"],
                vec![],
            ),
            (
                stream("upstream h { hash $binary_remote_addr; server 10.0.0.3:5672; }\n server { listen 5672; proxy_pass h; }"),
                vec!["balance = \"source_hash\"", "always consistent"],
                vec![],
            ),
            (
                stream("upstream h { hash $server_addr; server 10.0.0.3:5672; }\n server { listen 5672; proxy_pass h; }"),
                vec!["[pool.h]", "balance = \"round_robin\""],
                vec!["nginx.conf:3: `hash $server_addr;`: warren hashes only on the client address"],
            ),
            (
                stream("upstream r { random two least_conn; server 10.0.0.3:5672; }\n server { listen 5672; proxy_pass r; }"),
                vec!["balance = \"random_two\""],
                vec![],
            ),
            (
                stream("upstream r { random; server 10.0.0.3:5672; }\n server { listen 5672; proxy_pass r; }"),
                vec!["balance = \"random_two\""],
                vec!["`random;`: warren has no plain random"],
            ),
            (
                stream("server { listen 5672; proxy_pass 10.0.0.9:5672; }"),
                vec!["pool = \"10.0.0.9-5672\"", "[pool.\"10.0.0.9-5672\"]", "[[pool.\"10.0.0.9-5672\".backend]]", "addr = \"10.0.0.9:5672\""],
                vec![],
            ),
            (
                stream("server { listen 127.0.0.1:5672 proxy_protocol; proxy_pass u; proxy_protocol on; }"),
                vec!["listen = \"127.0.0.1:5672\"", "accept_proxy_protocol = true", "proxy_protocol = \"v1\""],
                vec![],
            ),
            (
                stream("proxy_timeout 30s;\nproxy_connect_timeout 1s;\nserver { listen 5672; proxy_pass u; proxy_timeout 3m; }\nserver { listen 5673; proxy_pass u; }"),
                vec!["idle_timeout = \"180s\"", "idle_timeout = \"30s\"", "connect_timeout = \"1s\"", "name = \"u-5673\""],
                vec![],
            ),
            (
                stream("server { listen 5672; proxy_pass u; proxy_next_upstream off; }"),
                vec!["next_upstream_tries = 1"],
                vec![],
            ),
            (
                stream("server { listen 5672; proxy_pass u; proxy_next_upstream_tries 2; proxy_next_upstream_timeout 10s; }"),
                vec!["next_upstream_tries = 2", "next_upstream_timeout = \"10s\""],
                vec![],
            ),
            (
                stream("server { listen 5672; listen [::]:5672; proxy_pass u; tcp_nodelay on; proxy_half_close on; proxy_protocol_timeout 30s; }"),
                vec!["listen = \"[::]:5672\"", "name = \"u-5672\"", "proxy_protocol_timeout = \"30s\""],
                vec![],
            ),
            (
                stream("server { listen 5672; listen 127.0.0.1:5672; proxy_pass u; }"),
                vec!["listen = \"0.0.0.0:5672\""],
                vec!["`listen 127.0.0.1:5672;`: overlaps listen 0.0.0.0:5672 at /etc/nginx/nginx.conf:3"],
            ),
            (
                stream("upstream d { server 10.0.0.3:5672; server 10.0.0.4:5672 down; }\n server { listen 5672; proxy_pass d; }"),
                vec!["# [[pool.d.backend]]", "# addr = \"10.0.0.4:5672\""],
                vec!["nginx.conf:3: `server 10.0.0.4:5672 down;`: `down` has no config key in warren"],
            ),
            (
                stream("upstream d { server 10.0.0.4:5672 down; server 10.0.0.5:5672 backup; }\n server { listen 5672; proxy_pass d; }"),
                vec!["addr = \"10.0.0.4:5672\""],
                vec!["no other primary server is left, so it is kept"],
            ),
            (
                stream("upstream p { server 10.0.0.3:5672 max_fails=3 fail_timeout=30s; server 10.0.0.4:5672 max_fails=0; }\n server { listen 5672; proxy_pass p; }"),
                vec!["# [pool.p.health]", "# fall = 3"],
                vec!["max_fails=3 fail_timeout=30s has no exact equivalent", "max_fails=0 turns NGINX's failure accounting off"],
            ),
            (
                stream("upstream p { server 10.0.0.3:5672 max_fails=1 fail_timeout=10s; }\n server { listen 5672; proxy_pass p; }"),
                vec!["addr = \"10.0.0.3:5672\""],
                vec![],
            ),
            (
                stream("upstream p { zone p 64k; server 10.0.0.3:5672 max_conns=10 slow_start=30s; }\n server { listen 5672; proxy_pass p; }"),
                vec!["[pool.p]"],
                vec!["`zone p 64k;`: shared memory zone", "max_conns is not supported", "slow_start is not supported"],
            ),
            (
                stream("server { listen 5671 ssl; proxy_pass u; ssl_certificate /x.pem; }\nserver { listen 5672; proxy_pass u; }"),
                vec!["listen = \"0.0.0.0:5672\""],
                vec!["`server { ... }`: no listen warren can take", "`listen 5671 ssl;`: warren does not terminate TLS", "`ssl_certificate /x.pem;`: warren does not terminate TLS"],
            ),
            (
                stream("server { listen 5672; proxy_pass u; if ($x) { return 1; } }"),
                vec!["[[listener]]"],
                vec!["`if ($x) { ... }`: block not translated (1 directive(s) inside): no warren equivalent"],
            ),
            (
                stream("resolver 10.0.0.53;\nmap $remote_addr $x { default 1; }\nlimit_conn_zone $binary_remote_addr zone=a:1m;\nserver { listen 5672; proxy_pass u; limit_conn a 10; access_log off; }"),
                vec!["[[listener]]"],
                vec!["`resolver 10.0.0.53;`: warren resolves", "`map $remote_addr $x { ... }`: variables are not supported", "`limit_conn_zone", "`limit_conn a 10;`", "`access_log off;`"],
            ),
            (
                stream("upstream \"my:up\" { server 10.0.0.3:5672; }\n server { listen 5672; proxy_pass my:up; }"),
                vec!["[pool.my-up]"],
                vec!["pool named \"my-up\""],
            ),
        ];
        for (text, fragments, wanted) in cases {
            let import = import_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            for fragment in fragments {
                assert!(
                    import.toml.contains(fragment),
                    "{fragment:?} missing from:\n{}\nfor:\n{text}",
                    import.toml
                );
            }
            let got = warnings(&import);
            assert_eq!(got.len(), wanted.len(), "{got:#?}\nfor:\n{text}");
            for (got, want) in got.iter().zip(&wanted) {
                assert!(got.contains(want), "{got:?} lacks {want:?}");
            }
            load(&import);
        }
    }

    #[test]
    fn invalid_input_is_an_error_with_line() {
        // (stream body, line, fragment)
        let cases = [
            (
                stream("server { listen 5672; proxy_pass nope; }"),
                3,
                "no upstream named \"nope\"",
            ),
            (
                stream("server { listen 5672; proxy_pass u; proxy_timeout soon; }"),
                3,
                "is not an NGINX time",
            ),
            (
                stream("server { listen 5672; proxy_pass u; proxy_timeout 1s; proxy_timeout 2s; }"),
                3,
                "is duplicate",
            ),
            (
                stream("server { listen 5672; proxy_pass u; proxy_pass u; }"),
                3,
                "is duplicate",
            ),
            (
                stream(
                    "server { listen 5672; proxy_pass u; }\nserver { listen 5672; proxy_pass u; }",
                ),
                4,
                "duplicate listen 0.0.0.0:5672",
            ),
            (
                stream("upstream e { }\nserver { listen 5672; proxy_pass u; }"),
                3,
                "no servers",
            ),
            (
                stream("upstream w { server 10.0.0.3:5672 weight=0; }"),
                3,
                "invalid weight",
            ),
            (stream("upstream w { server rabbit; }"), 3, "no port"),
            (
                stream("server { listen 0; proxy_pass u; }"),
                3,
                "invalid port",
            ),
            (
                stream("server { listen 5672; proxy_pass u; proxy_next_upstream maybe; }"),
                3,
                "\"on\" or \"off\"",
            ),
            (
                "stream { }\nstream { }\n".to_string(),
                2,
                "duplicate stream block",
            ),
        ];
        for (text, line, fragment) in cases {
            match import_str(&text) {
                Err(ImportError::Invalid { at, message, .. }) => {
                    assert_eq!(at.line, line, "{message}\n{text}");
                    assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
                }
                other => panic!("expected Invalid for:\n{text}\ngot {other:?}"),
            }
        }
    }

    #[test]
    fn missing_stream_or_listener_is_an_error() {
        let err = import_str("events { }\nhttp { server { listen 80; } }\n").unwrap_err();
        assert!(matches!(err, ImportError::NoStream { .. }));
        assert_eq!(
            err.to_string(),
            "/etc/nginx/nginx.conf: no `stream { ... }` block found (in it or its includes); \
             warren translates only NGINX's TCP stream proxy"
        );
        let err = import_str("\nstream {\n upstream u { server 10.0.0.1:1; }\n}\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/etc/nginx/nginx.conf:2: the stream block has no server"),
            "{err}"
        );
        let err = import_str("stream {\n server { listen 5672 udp; proxy_pass 10.0.0.1:53; }\n}\n")
            .unwrap_err();
        assert!(matches!(err, ImportError::NoListener { .. }), "{err}");
    }

    #[test]
    fn directives_outside_stream_warn_once_each() {
        let text = format!(
            "user nginx;\nworker_processes auto;\nevents {{ worker_connections 1024; }}\nhttp {{\n include mime.types;\n server {{ listen 80; }}\n}}\n{CLASSIC}"
        );
        let import = import_str(&text).unwrap();
        assert_eq!(
            warnings(&import),
            [
                "/etc/nginx/nginx.conf:1: `user nginx;`: outside the stream block: run warren under its own user with systemd (see systemd/)",
                "/etc/nginx/nginx.conf:2: `worker_processes auto;`: outside the stream block: see `warren run --workers N` (default: one per CPU)",
                "/etc/nginx/nginx.conf:3: `events { ... }`: outside the stream block: NGINX event-loop settings; warren's data plane sizes itself (and caps connections with the listener's max_connections)",
                "/etc/nginx/nginx.conf:4: `http { ... }`: outside the stream block: warren proxies TCP only; HTTP stays with NGINX or another proxy",
            ]
        );
        // The http block's include of a missing mime.types was not followed.
        assert_eq!(load(&import).listeners.len(), 1);
        for w in &import.warnings {
            assert!(import.toml.contains(&one_line(&w.to_string())));
        }
    }

    #[test]
    fn includes_and_globs_are_followed_relative_to_the_main_file() {
        let files = MemFiles::new(&[
            (
                "/etc/nginx/nginx.conf",
                "include modules/*.conf;\nstream {\n include stream.d/*.conf;\n include servers.conf;\n}\n",
            ),
            ("/etc/nginx/modules/mod-stream.conf", "load_module x.so;\n"),
            ("/etc/nginx/stream.d/b.conf", "upstream b { server 10.0.0.2:5672; }\n"),
            ("/etc/nginx/stream.d/a.conf", "\nupstream a {\n server 10.0.0.1:5672;\n ssl_x y;\n}\n"),
            ("/etc/nginx/stream.d/.hidden.conf", "garbage {\n"),
            ("/etc/nginx/stream.d/notes.txt", "garbage {\n"),
            ("/etc/nginx/servers.conf", "server { listen 5672; proxy_pass a; }\nserver { listen 5673; proxy_pass b; }\n"),
        ]);
        let import = import(Path::new("/etc/nginx/nginx.conf"), &files).unwrap();
        assert_eq!(
            warnings(&import),
            [
                "/etc/nginx/modules/mod-stream.conf:1: `load_module x.so;`: outside the stream block: NGINX modules do not apply",
                "/etc/nginx/stream.d/a.conf:4: `ssl_x y;`: warren does not terminate TLS; let RabbitMQ terminate it (listeners.ssl) and forward its TLS port as plain TCP",
            ]
        );
        let config = load(&import);
        let pools: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(pools, ["a", "b"]);
        assert_eq!(config.listeners[1].pool, "b");
        assert!(import.toml.contains("(/etc/nginx/stream.d/a.conf:3)"));
    }

    #[test]
    fn include_errors_name_the_include_line() {
        let files = MemFiles::new(&[("/n/nginx.conf", "stream {\n include missing.conf;\n}\n")]);
        let err = import(Path::new("/n/nginx.conf"), &files).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/n/nginx.conf:2: cannot read included file /n/missing.conf"),
            "{err}"
        );
        let files = MemFiles::new(&[
            ("/n/nginx.conf", "stream {\n include loop.conf;\n}\n"),
            ("/n/loop.conf", "include loop.conf;\n"),
        ]);
        let err = import(Path::new("/n/nginx.conf"), &files).unwrap_err();
        assert!(err.to_string().contains("an include cycle?"), "{err}");
        let files = MemFiles::new(&[
            ("/n/nginx.conf", "stream {\n include bad.conf;\n}\n"),
            ("/n/bad.conf", "upstream u {\n server 10.0.0.1:1\n}\n"),
        ]);
        let err = import(Path::new("/n/nginx.conf"), &files).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/n/bad.conf:3: unexpected \"}\""),
            "{err}"
        );
        // A glob that matches nothing is fine, as in NGINX.
        let files = MemFiles::new(&[(
            "/n/nginx.conf",
            "include /nowhere/*.conf;\nstream { include none/*.conf; server { listen 1; proxy_pass 10.0.0.1:1; } }\n",
        )]);
        assert!(import(Path::new("/n/nginx.conf"), &files).is_ok());
    }
}
