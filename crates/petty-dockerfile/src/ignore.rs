//! `.dockerignore`: which context paths a COPY never sees.
//!
//! One pattern a line; `#` lines are comments; a leading `!` makes an
//! exception; patterns are cleaned (`./a/` is `a`, a leading `/` dropped);
//! the last pattern that matches a path, or one of its parent directories,
//! decides — as Docker's pattern matcher does.

use crate::pattern::Pattern;

/// A `.dockerignore` pattern that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(".dockerignore line {line}: {message}; hint: fix or remove the pattern")]
pub struct IgnoreError {
    /// 1-based line of the pattern.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// A parsed `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    rules: Vec<(bool, Pattern)>,
}

impl DockerIgnore {
    /// Parses the text of a `.dockerignore`.
    pub fn parse(text: &str) -> Result<DockerIgnore, IgnoreError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if pattern.is_empty() {
                continue;
            }
            let mut cleaned = go_clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let compiled = Pattern::ignore(&cleaned).map_err(|message| IgnoreError {
                line: i + 1,
                message,
            })?;
            rules.push((exception, compiled));
        }
        Ok(DockerIgnore { rules })
    }

    /// Whether there are `!` exceptions (an ignored directory may then hold
    /// paths that are not ignored).
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(exception, _)| *exception)
    }

    /// Whether `path` (relative to the context, `/`-separated) is ignored.
    pub fn is_ignored(&self, path: &str) -> bool {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return false;
        }
        let parents: Vec<&str> = path.split('/').collect();
        let mut ignored = false;
        for (exception, pattern) in &self.rules {
            // An exclusion only matters when not yet ignored, an exception only when ignored.
            if *exception != ignored {
                continue;
            }
            let mut hit = pattern.matches(path);
            if !hit && parents.len() > 1 {
                hit = (1..parents.len()).any(|n| pattern.matches(&parents[..n].join("/")));
            }
            if hit {
                ignored = !exception;
            }
        }
        ignored
    }
}

/// Go's `path.Clean`.
fn go_clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignored(text: &str, path: &str) -> bool {
        DockerIgnore::parse(text).unwrap().is_ignored(path)
    }

    #[test]
    fn docker_documented_examples() {
        // The examples of Docker's .dockerignore documentation.
        let doc = "# comment\n*/temp*\n*/*/temp*\ntemp?\n";
        let cases = [
            ("somedir/temporary.txt", true),
            ("somedir/temp", true),
            ("somedir/subdir/temporary.txt", true),
            ("tempa", true),
            ("tempb", true),
            ("temp", false),
            ("temporary.txt", false),
            ("a/b/c/temp.txt", false),
            ("# comment", false),
        ];
        for (path, want) in cases {
            assert_eq!(ignored(doc, path), want, "{path}");
        }
        // `**` matches any number of directories, including none.
        assert!(ignored("**/*.go", "a.go"));
        assert!(ignored("**/*.go", "x/y/z.go"));
        // Exceptions: later lines win.
        let md = "*.md\n!README.md\n";
        assert!(ignored(md, "CHANGES.md"));
        assert!(!ignored(md, "README.md"));
        let md2 = "*.md\n!README*.md\nREADME-secret.md\n";
        assert!(ignored(md2, "README-secret.md"));
        assert!(!ignored(md2, "README-public.md"));
        assert!(ignored(md2, "other.md"));
        let md3 = "*.md\nREADME-secret.md\n!README*.md\n";
        assert!(!ignored(md3, "README-secret.md"));
        // Excluding the Dockerfile and .dockerignore works too.
        assert!(ignored("Dockerfile\n.dockerignore\n", "Dockerfile"));
        assert!(ignored("Dockerfile\n.dockerignore\n", ".dockerignore"));
    }

    #[test]
    fn parents_and_cleaning() {
        let cases = [
            ("node_modules", "node_modules/a/b.js", true),
            ("node_modules/", "node_modules/a", true),
            ("/node_modules", "node_modules/a", true),
            ("./node_modules", "node_modules", true),
            ("a/../b", "b/x", true),
            ("a//b", "a/b", true),
            ("target", "src/target", false),
            ("**/target", "src/target/x", true),
            ("*", "anything/at/all", true),
            ("  spaced  ", "spaced", true),
            ("dir\n!dir/keep", "dir/keep", false),
            ("dir\n!dir/keep", "dir/other", true),
            ("dir\n!dir/keep", "dir/keep/inner", false),
            ("!x", "x", false),
            ("a[bc]", "ab", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
        ];
        for (text, path, want) in cases {
            assert_eq!(ignored(text, path), want, "{text:?} {path}");
        }
        assert!(!ignored("*", ""));
    }

    #[test]
    fn bad_pattern_names_line() {
        let err = DockerIgnore::parse("ok\n# c\n[\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.to_string().starts_with(".dockerignore line 3: "));
    }

    #[test]
    fn odd_inputs() {
        for text in [
            "!", "!!", "/", "//", "..", "**", "***", "\\", "[^]", "\u{0}", "!\n!\n",
        ] {
            if let Ok(ig) = DockerIgnore::parse(text) {
                for path in ["", "a", "a/b", "..", "/"] {
                    let _ = ig.is_ignored(path);
                }
            }
        }
    }
}
