//! Path patterns: Go's `filepath.Match` (COPY sources: `*` and `?` never
//! match `/`, `[a-z]`, `[^a-z]`, `\` escapes) and `.dockerignore` patterns
//! (the same plus `**`, which matches any number of directories, as
//! Docker's pattern matcher compiles it).
//!
//! Matching is a memoised walk over the pattern and the path, so no pattern
//! takes exponential time.

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    toks: Vec<Tok>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `*`: any run of characters but `/`.
    Star,
    /// `?`: one character but `/`.
    One,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**/` or `**` inside: any run of whole directories, or none.
    Dirs,
    /// `**` at the end: anything.
    Rest,
}

impl Pattern {
    /// Compiles a Go `filepath.Match` pattern.
    pub fn glob(pattern: &str) -> Result<Pattern, String> {
        compile(pattern, false)
    }

    /// Compiles a `.dockerignore` pattern (already cleaned, no leading `!`).
    pub fn ignore(pattern: &str) -> Result<Pattern, String> {
        compile(pattern, true)
    }

    /// Whether the whole of `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        let s: Vec<char> = path.chars().collect();
        let mut memo = vec![None; (self.toks.len() + 1) * (s.len() + 1)];
        self.at(0, 0, &s, &mut memo)
    }

    fn at(&self, t: usize, i: usize, s: &[char], memo: &mut Vec<Option<bool>>) -> bool {
        let key = t * (s.len() + 1) + i;
        if let Some(v) = memo[key] {
            return v;
        }
        let v = match self.toks.get(t) {
            None => i == s.len(),
            Some(Tok::Lit(c)) => s.get(i) == Some(c) && self.at(t + 1, i + 1, s, memo),
            Some(Tok::One) => s.get(i).is_some_and(|c| *c != '/') && self.at(t + 1, i + 1, s, memo),
            Some(Tok::Class { negated, ranges }) => {
                s.get(i)
                    .is_some_and(|c| ranges.iter().any(|(lo, hi)| lo <= c && c <= hi) != *negated)
                    && self.at(t + 1, i + 1, s, memo)
            }
            Some(Tok::Star) => {
                self.at(t + 1, i, s, memo)
                    || (s.get(i).is_some_and(|c| *c != '/') && self.at(t, i + 1, s, memo))
            }
            Some(Tok::Dirs) => {
                self.at(t + 1, i, s, memo)
                    || (i..s.len()).any(|k| s[k] == '/' && self.at(t + 1, k + 1, s, memo))
            }
            Some(Tok::Rest) => true,
        };
        memo[key] = Some(v);
        v
    }
}

/// Whether a path component has glob characters.
pub fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '[', '\\'])
}

fn compile(pattern: &str, ignore: bool) -> Result<Pattern, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if ignore && chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                toks.push(if i == chars.len() {
                    Tok::Rest
                } else {
                    Tok::Dirs
                });
            }
            '*' => {
                if toks.last() != Some(&Tok::Star) {
                    toks.push(Tok::Star);
                }
            }
            '?' => toks.push(Tok::One),
            '\\' => match chars.get(i) {
                Some(n) => {
                    toks.push(Tok::Lit(*n));
                    i += 1;
                }
                None if ignore => toks.push(Tok::Lit('\\')),
                None => return Err(format!("`{pattern}` ends with a lone `\\`")),
            },
            '[' => {
                let (tok, next) = class(&chars, i)
                    .ok_or_else(|| format!("`{pattern}` has a malformed `[...]` class"))?;
                toks.push(tok);
                i = next;
            }
            c => toks.push(Tok::Lit(c)),
        }
    }
    Ok(Pattern { toks })
}

/// Parses a class whose `[` is just before `i`; returns it and the index after `]`.
fn class(chars: &[char], mut i: usize) -> Option<(Tok, usize)> {
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        let c = *chars.get(i)?;
        if c == ']' && !ranges.is_empty() {
            return Some((Tok::Class { negated, ranges }, i + 1));
        }
        let (lo, next) = class_char(chars, i)?;
        i = next;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            let (h, next) = class_char(chars, i + 1)?;
            hi = h;
            i = next;
        }
        ranges.push((lo, hi));
    }
}

fn class_char(chars: &[char], i: usize) -> Option<(char, usize)> {
    match *chars.get(i)? {
        '-' | ']' => None,
        '\\' => Some((*chars.get(i + 1)?, i + 2)),
        c => Some((c, i + 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_filepath_match_table() {
        // From Go's path/filepath match_test.go.
        let cases = [
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("*x", "xxx", true),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(
                Pattern::glob(pattern).unwrap().matches(path),
                want,
                "{pattern} {path}"
            );
        }
    }

    #[test]
    fn bad_globs() {
        for pattern in [
            "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[",
        ] {
            assert!(Pattern::glob(pattern).is_err(), "{pattern}");
        }
    }

    #[test]
    fn double_star() {
        let cases = [
            ("**", "a/b/c", true),
            ("**/*.go", "a.go", true),
            ("**/*.go", "x/y/a.go", true),
            ("**/*.go", "x/y/a.go/z", false),
            ("a/**/b", "a/b", true),
            ("a/**/b", "a/x/y/b", true),
            ("a/**/b", "ab", false),
            ("a/**", "a/x/y", true),
            ("**/temp*", "temp", true),
            ("**/temp*", "x/tempx", true),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(
                Pattern::ignore(pattern).unwrap().matches(path),
                want,
                "{pattern} {path}"
            );
        }
    }

    #[test]
    fn many_stars_are_fast() {
        let p = Pattern::glob(&format!("{}c", "a*".repeat(40))).unwrap();
        assert!(!p.matches(&"a".repeat(100)));
        assert!(p.matches(&format!("{}c", "a".repeat(100))));
        assert!(!Pattern::ignore(&"**/a".repeat(30))
            .unwrap()
            .matches(&"a/".repeat(200)));
    }
}
