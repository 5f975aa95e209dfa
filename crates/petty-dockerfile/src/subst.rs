//! Variable substitution as Docker's shell lexer does it for the instructions
//! that take variables (ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER,
//! VOLUME, WORKDIR, ARG): `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`,
//! `${VAR:+word}`, `${VAR+word}`, `${VAR:?message}`, `${VAR?message}`; quote
//! removal (`'...'` literal, `"..."` substitutes); the escape character makes
//! the next character literal (`\$HOME`).
//!
//! Limits: the word of a modifier is expanded even when it is not used, so
//! `${SET:-${UNSET:?}}` fails; `#` and `%` pattern removal are not done.

/// Expands one word. `lookup` gives a variable's value, `None` when unset.
/// The error says what is wrong (without the line: the caller adds it).
pub fn substitute(
    word: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut lexer = Lexer {
        chars: word.chars().collect(),
        pos: 0,
        escape,
        lookup,
    };
    lexer.until(None)
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Reads up to `stop` (consumed) or the end of the word.
    fn until(&mut self, stop: Option<char>) -> Result<String, String> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.pos += 1;
                return Ok(out);
            }
            match c {
                '\'' => out.push_str(&self.single_quoted()?),
                '"' => out.push_str(&self.double_quoted()?),
                '$' => out.push_str(&self.dollar()?),
                _ => {
                    self.pos += 1;
                    if c == self.escape {
                        match self.next() {
                            // An escape at the end of the word is dropped.
                            None => break,
                            Some(n) => out.push(n),
                        }
                    } else {
                        out.push(c);
                    }
                }
            }
        }
        match stop {
            Some(s) => Err(format!(
                "unexpected end of the value while looking for a matching `{s}`; hint: close it"
            )),
            None => Ok(out),
        }
    }

    fn single_quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.next() {
                None => return Err("unclosed single quote; hint: close it with `'`".into()),
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err("unclosed double quote; hint: close it with `\"`".into()),
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) => {
                    self.pos += 1;
                    if c == self.escape {
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.pos += 1;
                                out.push(n);
                            }
                            // Other escapes stay as written inside double quotes.
                            Some(_) => out.push(c),
                        }
                    } else {
                        out.push(c);
                    }
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        if let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    self.pos += 1;
                    name.push(d);
                }
                return name;
            }
        }
        while let Some(c) = self.peek().filter(|c| c.is_alphanumeric() || *c == '_') {
            self.pos += 1;
            name.push(c);
        }
        name
    }

    fn dollar(&mut self) -> Result<String, String> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok((self.lookup)(&name).unwrap_or_default());
        }
        self.pos += 1;
        match self.peek() {
            None => return Err("missing `}` in a `${...}` substitution; hint: close it".into()),
            Some('{' | '}' | ':') => {
                return Err("bad substitution: `${` must be followed by a variable name".into());
            }
            _ => {}
        }
        let name = self.name();
        if name.is_empty() {
            return Err("bad substitution: `${` must be followed by a variable name".into());
        }
        let value = (self.lookup)(&name);
        let c = self.next();
        let (colon, modifier) = match c {
            Some('}') => return Ok(value.unwrap_or_default()),
            Some(':') => (true, self.next()),
            Some(m) => (false, Some(m)),
            None => return Err(format!("missing `}}` after `${{{name}`; hint: close it")),
        };
        let modifier = match modifier {
            Some(m @ ('-' | '+' | '?')) => m,
            Some(m) => {
                return Err(format!(
                    "unsupported modifier `{m}` in `${{{name}...}}`; hint: use `:-`, `-`, `:+`, `+`, `:?` or `?`"
                ))
            }
            None => return Err(format!("missing `}}` after `${{{name}`; hint: close it")),
        };
        let word = self.until(Some('}'))?;
        // With a colon an empty value counts as unset.
        let set = match &value {
            None => false,
            Some(v) => !colon || !v.is_empty(),
        };
        Ok(match modifier {
            '-' if set => value.unwrap_or_default(),
            '-' => word,
            '+' if set => word,
            '+' => String::new(),
            _ if set => value.unwrap_or_default(),
            _ => {
                let why = if word.is_empty() {
                    "must be set".to_string()
                } else {
                    word
                };
                return Err(format!(
                    "${name}: {why}; hint: pass it with --build-arg {name}=..."
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("a".into()),
            "EMPTY" => Some(String::new()),
            "SP" => Some("x y".into()),
            _ => None,
        }
    }

    fn s(word: &str) -> Result<String, String> {
        substitute(word, '\\', &env)
    }

    #[test]
    fn expands_docker_forms() {
        let cases = [
            ("$A", "a"),
            ("${A}", "a"),
            ("pre${A}post", "preapost"),
            ("$A/b", "a/b"),
            ("$NOPE", ""),
            ("${NOPE}", ""),
            ("${NOPE:-def}", "def"),
            ("${EMPTY:-def}", "def"),
            ("${EMPTY-def}", ""),
            ("${NOPE-def}", "def"),
            ("${A:-def}", "a"),
            ("${A:+alt}", "alt"),
            ("${EMPTY:+alt}", ""),
            ("${EMPTY+alt}", "alt"),
            ("${NOPE:+alt}", ""),
            ("${NOPE:-$A}", "a"),
            ("${NOPE:-${A}x}", "ax"),
            ("\\$A", "$A"),
            ("'$A'", "$A"),
            ("\"$A\"", "a"),
            ("\"a b\"", "a b"),
            ("\"\\$A\"", "$A"),
            ("\"\\n\"", "\\n"),
            ("\\n", "n"),
            ("$", "$"),
            ("a$", "a$"),
            ("$ x", "$ x"),
            ("$SP", "x y"),
            ("${A:?}", "a"),
            ("$1", ""),
            ("trail\\", "trail"),
            ("", ""),
        ];
        for (word, want) in cases {
            assert_eq!(s(word).as_deref(), Ok(want), "{word}");
        }
    }

    #[test]
    fn backtick_escape() {
        assert_eq!(substitute("`$A", '`', &env).unwrap(), "$A");
        assert_eq!(substitute("C:\\dir", '`', &env).unwrap(), "C:\\dir");
    }

    #[test]
    fn errors() {
        for word in [
            "${A",
            "${",
            "${}",
            "${:-x}",
            "${A:*x}",
            "'open",
            "\"open",
            "${NOPE:?}",
            "${NOPE?gone}",
            "${A:-x",
        ] {
            assert!(s(word).is_err(), "{word}");
        }
        assert!(s("${NOPE:?needs a version}")
            .unwrap_err()
            .contains("needs a version"));
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        for word in [
            "${{",
            "$}",
            "${A}}",
            "\\",
            "\"\\",
            "${A:",
            "${A:-",
            "${é}",
            "$é",
            "${1}",
            "\u{0}$\u{0}",
        ] {
            let _ = s(word);
        }
    }
}
