//! `include` with globs, followed to a bounded depth: the directive tree of a whole config.

use super::*;

pub(super) struct Loader<'a> {
    pub(super) files: &'a dyn Files,
    /// Relative include paths start here (NGINX: the configuration prefix).
    pub(super) base: PathBuf,
}

impl Loader<'_> {
    /// Replace `include` directives by the directives of the files they name. Only the main
    /// context and everything inside `stream` are expanded: the rest is reported, not read, so a
    /// missing `mime.types` of the `http` block is no reason to fail.
    pub(super) fn expand(
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
    pub(super) fn resolve(&self, d: &Directive) -> Result<Vec<PathBuf>, ImportError> {
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
pub(super) fn glob(files: &dyn Files, pattern: &Path) -> io::Result<Vec<PathBuf>> {
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
pub(super) fn glob_match(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    match_from(&pattern, &name)
}

pub(super) fn match_from(pattern: &[char], name: &[char]) -> bool {
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
pub(super) fn class_match(body: &[char], c: char) -> Option<(bool, &[char])> {
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
