//! The NGINX tokenizer and parser: directives with their file and line, blocks, quoted strings
//! and escapes, comments.

use super::*;

/// One NGINX directive: `name args...;` or `name args... { block }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub loc: Loc,
    /// `Some` for a block directive (`stream { ... }`), even an empty one.
    pub block: Option<Vec<Directive>>,
    /// Position in document order with includes expanded (set by [`number`]).
    pub(super) seq: usize,
}

/// Number directives in document order, includes expanded, to sort warnings by.
pub(super) fn number(directives: &mut [Directive], next: &mut usize) {
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
    pub(super) fn shown(&self) -> String {
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
pub(super) enum Token {
    Word(String),
    Semicolon,
    Open,
    Close,
}

pub(super) fn syntax(file: &Arc<Path>, line: usize, message: impl Into<String>) -> ImportError {
    ImportError::Syntax {
        at: Loc {
            file: file.clone(),
            line,
        },
        message: message.into(),
    }
}

/// Split NGINX config text into words and `;`, `{`, `}`, each with its line.
pub(super) fn tokenize(text: &str, file: &Arc<Path>) -> Result<Vec<(Token, usize)>, ImportError> {
    let mut lexer = Lexer {
        chars: text.chars().peekable(),
        line: 1,
        file,
    };
    let mut tokens = Vec::new();
    while let Some(&c) = lexer.chars.peek() {
        match c {
            '\n' => {
                lexer.line += 1;
                lexer.chars.next();
            }
            c if c.is_whitespace() => {
                lexer.chars.next();
            }
            '#' => while lexer.chars.next_if(|&c| c != '\n').is_some() {},
            ';' | '{' | '}' => {
                lexer.chars.next();
                let token = match c {
                    ';' => Token::Semicolon,
                    '{' => Token::Open,
                    _ => Token::Close,
                };
                tokens.push((token, lexer.line));
            }
            '"' | '\'' => {
                let start = lexer.line;
                let word = lexer.quoted(c)?;
                tokens.push((Token::Word(word), start));
            }
            _ => {
                let start = lexer.line;
                let word = lexer.bare_word()?;
                tokens.push((Token::Word(word), start));
            }
        }
    }
    Ok(tokens)
}

/// Where [`tokenize`] is: the characters still to read and the line they start on.
struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
    /// For the errors.
    file: &'a Arc<Path>,
}

/// What ends an unquoted word (and must follow a quoted one).
fn ends_word(c: char) -> bool {
    c.is_whitespace() || matches!(c, ';' | '{' | '}')
}

impl Lexer<'_> {
    /// A `"..."` or `'...'` string, the next character being its opening `quote`; escapes
    /// applied, newlines inside counted.
    fn quoted(&mut self, quote: char) -> Result<String, ImportError> {
        let (file, start) = (self.file, self.line);
        let unterminated = || syntax(file, start, format!("unterminated {quote}-quoted string"));
        self.chars.next();
        let mut word = String::new();
        loop {
            match self.chars.next().ok_or_else(unterminated)? {
                c if c == quote => break,
                '\\' => {
                    let next = self.chars.next().ok_or_else(unterminated)?;
                    if next == '\n' {
                        self.line += 1;
                    }
                    push_escaped(&mut word, next);
                }
                other => {
                    if other == '\n' {
                        self.line += 1;
                    }
                    word.push(other);
                }
            }
        }
        // NGINX wants a separator after a closing quote: `"a"b` is an error there too.
        if let Some(&next) = self.chars.peek() {
            if !ends_word(next) {
                return Err(syntax(
                    file,
                    self.line,
                    format!("unexpected {next:?} right after a quoted string"),
                ));
            }
        }
        Ok(word)
    }

    /// An unquoted word, up to white space, `;`, `{` or `}`; escapes applied.
    fn bare_word(&mut self) -> Result<String, ImportError> {
        let mut word = String::new();
        while let Some(c) = self.chars.next_if(|&c| !ends_word(c)) {
            match c {
                '\\' => match self.chars.next() {
                    Some(next) => push_escaped(&mut word, next),
                    None => word.push('\\'),
                },
                // `${name}`: the braces belong to the variable, not to a block.
                '$' if self.chars.peek() == Some(&'{') => self.variable(&mut word)?,
                _ => word.push(c),
            }
        }
        Ok(word)
    }

    /// The rest of a `${name}` whose `$` was just read, braces included, onto `word`.
    fn variable(&mut self, word: &mut String) -> Result<(), ImportError> {
        word.push('$');
        for c in self.chars.by_ref() {
            word.push(c);
            if c == '}' {
                break;
            }
        }
        if !word.ends_with('}') {
            // Nothing in an unquoted word advances `line`: it is still the word's first line.
            return Err(syntax(self.file, self.line, "unterminated ${variable}"));
        }
        Ok(())
    }
}

/// NGINX's escapes: `\"`, `\'`, `\\`, `\t`, `\r`, `\n`; any other backslash stays as written.
pub(super) fn push_escaped(word: &mut String, c: char) {
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
pub(super) fn parse_block(
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
