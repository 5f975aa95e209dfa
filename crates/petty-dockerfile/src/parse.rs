//! The Dockerfile parser: parser directives (`# escape=`, `# syntax=`),
//! comments, line continuations, instructions and their flags, the JSON
//! (exec) and shell forms.
//!
//! Values are kept as written (quotes and `$VAR`s unprocessed, as Docker
//! keeps them until it runs an instruction); [`crate::plan()`] substitutes
//! them. Only a single-stage build is accepted: a second `FROM`, `--from`,
//! heredocs, `ONBUILD`, `RUN` flags and ADD from a URL are refused with a
//! hint.

use crate::error::DockerfileError;
use crate::subst::substitute;

/// A parsed single-stage Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The `FROM` instruction.
    pub from: From,
    /// The instructions after `FROM`, in order.
    pub instructions: Vec<Instruction>,
    /// `ARG`s declared before `FROM`: name and default as written.
    pub args_before_from: Vec<(String, Option<String>)>,
    /// The escape character (`\` unless a `# escape=` directive says `` ` ``).
    pub escape: char,
}

/// The `FROM` instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    /// The base image after substitution of the `ARG` defaults declared
    /// before `FROM` ([`crate::plan()`] substitutes again with build args).
    pub image: String,
    /// The image as written.
    pub raw: String,
    /// The stage name of `FROM image AS name`.
    pub stage: Option<String>,
    /// 1-based line of `FROM`.
    pub line: usize,
}

/// One instruction after `FROM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line where the instruction starts.
    pub line: usize,
    /// The instruction as written with its continuations joined, for logs.
    pub text: String,
    /// What it is, values as written.
    pub kind: Kind,
}

/// An instruction and its arguments, as written (not substituted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `RUN`.
    Run(Command),
    /// `CMD`.
    Cmd(Command),
    /// `ENTRYPOINT`.
    Entrypoint(Command),
    /// `COPY` or `ADD`.
    Copy(Copy),
    /// `ENV`: name and value pairs (quotes kept for substitution).
    Env(Vec<(String, String)>),
    /// `ARG name[=default]`.
    Arg(String, Option<String>),
    /// `WORKDIR`.
    Workdir(String),
    /// `USER`.
    User(String),
    /// `LABEL`: key and value pairs.
    Label(Vec<(String, String)>),
    /// `EXPOSE`: ports as written (`80`, `53/udp`).
    Expose(Vec<String>),
    /// `SHELL` (always the JSON form).
    Shell(Vec<String>),
    /// `STOPSIGNAL`.
    StopSignal(String),
    /// `HEALTHCHECK`, its arguments as written (recorded, not acted on).
    Healthcheck(String),
    /// `VOLUME`.
    Volume(Vec<String>),
    /// `MAINTAINER` (deprecated; recorded only).
    Maintainer(String),
}

/// The two forms of RUN, CMD and ENTRYPOINT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The shell form: a script for the `SHELL`.
    Shell(String),
    /// The JSON array form: an argv run as is.
    Exec(Vec<String>),
}

/// `COPY` and `ADD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// `ADD` rather than `COPY`.
    pub add: bool,
    /// Sources as written, relative to the build context.
    pub sources: Vec<String>,
    /// Destination as written.
    pub dest: String,
    /// `--chown=user[:group]` as written.
    pub chown: Option<String>,
    /// `--chmod=` (octal).
    pub chmod: Option<u32>,
    /// `--link` (accepted; it changes nothing in Petty's builder).
    pub link: bool,
}

const MULTI_STAGE_HINT: &str =
    "multi-stage builds are not supported yet; build the stage separately as its own \
    template, or produce its files in the build context and COPY them";

/// Parses a Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, DockerfileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let escape = directives(&lines)?;
    let mut from: Option<From> = None;
    let mut args_before_from = Vec::new();
    let mut instructions = Vec::new();
    for (line, text) in logical_lines(&lines, escape) {
        let (name, rest) = split_first_word(&text);
        let upper = name.to_ascii_uppercase();
        if upper == "FROM" {
            if let Some(first) = &from {
                return Err(DockerfileError::unsupported(
                    line,
                    format!("a second FROM (the first is on line {})", first.line),
                    MULTI_STAGE_HINT,
                ));
            }
            from = Some(parse_from(line, rest, escape, &args_before_from)?);
            continue;
        }
        let kind = parse_instruction(line, &upper, name, rest, escape)?;
        match (&from, kind) {
            (Some(_), kind) => instructions.push(Instruction { line, text: text.clone(), kind }),
            (None, Kind::Arg(name, default)) => args_before_from.push((name, default)),
            (None, _) => {
                return Err(DockerfileError::syntax(
                    line,
                    format!("{upper} comes before FROM; hint: only ARG may come before FROM, start with `FROM <image>`"),
                ))
            }
        }
    }
    let Some(from) = from else {
        return Err(DockerfileError::syntax(
            lines.len().max(1),
            "no FROM instruction; hint: start the Dockerfile with `FROM <image>`",
        ));
    };
    Ok(Dockerfile {
        from,
        instructions,
        args_before_from,
        escape,
    })
}

/// Reads the parser directives at the top; returns the escape character.
fn directives(lines: &[&str]) -> Result<char, DockerfileError> {
    let mut escape = None;
    let mut syntax_seen = false;
    for (i, raw) in lines.iter().enumerate() {
        let Some((key, value)) = directive(raw) else {
            break;
        };
        match key.as_str() {
            "escape" => {
                if escape.is_some() {
                    return Err(DockerfileError::syntax(
                        i + 1,
                        "only one `# escape=` directive may be given",
                    ));
                }
                escape = Some(match value {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(DockerfileError::syntax(
                            i + 1,
                            format!("invalid escape character `{other}`; hint: use `# escape=\\` or `# escape=``"),
                        ))
                    }
                });
            }
            "syntax" | "check" => {
                if key == "syntax" && std::mem::replace(&mut syntax_seen, true) {
                    return Err(DockerfileError::syntax(
                        i + 1,
                        "only one `# syntax=` directive may be given",
                    ));
                }
            }
            // An unknown directive is a comment, and ends the directives.
            _ => break,
        }
    }
    Ok(escape.unwrap_or('\\'))
}

/// `# key=value`, lower-cased key.
fn directive(line: &str) -> Option<(String, &str)> {
    let rest = line.trim_start().strip_prefix('#')?;
    let (key, value) = rest.split_once('=')?;
    let key = key.trim();
    let mut chars = key.chars();
    if !chars.next()?.is_ascii_alphabetic() || !chars.all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    Some((key.to_ascii_lowercase(), value))
}

/// Joins continued lines; skips comments and blank lines (inside a continued
/// instruction too). Each instruction comes with its first line's number.
fn logical_lines(lines: &[&str], escape: char) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line_no = i + 1;
        let first = lines[i].trim_start();
        i += 1;
        if first.is_empty() || first.starts_with('#') {
            continue;
        }
        let (part, mut continued) = strip_continuation(first, escape);
        let mut joined = part.to_string();
        while continued && i < lines.len() {
            let next = lines[i];
            i += 1;
            let trimmed = next.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (part, more) = strip_continuation(next, escape);
            joined.push_str(part);
            continued = more;
        }
        let joined = joined.trim();
        if !joined.is_empty() {
            out.push((line_no, joined.to_string()));
        }
    }
    out
}

fn strip_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(part) => (part, true),
        None => (line, false),
    }
}

fn split_first_word(text: &str) -> (&str, &str) {
    match text.find(char::is_whitespace) {
        Some(at) => (&text[..at], text[at..].trim_start()),
        None => (text, ""),
    }
}

fn parse_from(
    line: usize,
    rest: &str,
    escape: char,
    args: &[(String, Option<String>)],
) -> Result<From, DockerfileError> {
    let (flags, rest) = take_flags(rest);
    if let Some(flag) = flags.first() {
        return Err(DockerfileError::unsupported(
            line,
            format!("FROM --{}", flag.0),
            "remove the flag; Petty builds for the host's architecture",
        ));
    }
    let words: Vec<&str> = rest.split_whitespace().collect();
    let (raw, stage) = match words.as_slice() {
        [image] => (*image, None),
        [image, as_, name] if as_.eq_ignore_ascii_case("as") => (*image, Some((*name).to_string())),
        [] => {
            return Err(DockerfileError::syntax(
                line,
                "FROM needs an image; hint: write `FROM <image>`",
            ))
        }
        _ => {
            return Err(DockerfileError::syntax(
                line,
                format!("FROM takes an image and an optional `AS name`, not `{rest}`"),
            ))
        }
    };
    let image = pre_from_substitute(line, raw, escape, args)?;
    if image.is_empty() {
        return Err(DockerfileError::syntax(
            line,
            format!("FROM `{raw}` names no image once its variables are substituted; hint: give the ARG a default"),
        ));
    }
    Ok(From {
        image,
        raw: raw.to_string(),
        stage,
        line,
    })
}

/// Substitutes `raw` with the ARGs declared before FROM (their defaults,
/// themselves substituted in order).
fn pre_from_substitute(
    line: usize,
    raw: &str,
    escape: char,
    args: &[(String, Option<String>)],
) -> Result<String, DockerfileError> {
    let mut values: Vec<(String, Option<String>)> = Vec::new();
    for (name, default) in args {
        let value = match default {
            Some(d) => Some(subst_word(line, d, escape, &values)?),
            None => None,
        };
        values.push((name.clone(), value));
    }
    subst_word(line, raw, escape, &values)
}

fn subst_word(
    line: usize,
    word: &str,
    escape: char,
    values: &[(String, Option<String>)],
) -> Result<String, DockerfileError> {
    let lookup = |name: &str| {
        values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
    };
    substitute(word, escape, &lookup).map_err(|message| DockerfileError::Variable { line, message })
}

fn parse_instruction(
    line: usize,
    upper: &str,
    name: &str,
    rest: &str,
    escape: char,
) -> Result<Kind, DockerfileError> {
    let known = [
        "RUN",
        "CMD",
        "ENTRYPOINT",
        "COPY",
        "ADD",
        "ENV",
        "ARG",
        "WORKDIR",
        "USER",
        "LABEL",
        "EXPOSE",
        "SHELL",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "VOLUME",
        "MAINTAINER",
        "ONBUILD",
    ];
    if !known.contains(&upper) {
        return Err(DockerfileError::syntax(
            line,
            format!("unknown instruction `{name}`; hint: check the spelling (instructions are RUN, COPY, ENV, ...)"),
        ));
    }
    if upper == "ONBUILD" {
        return Err(DockerfileError::unsupported(
            line,
            "ONBUILD",
            "put the instructions in the Dockerfile that builds on this image",
        ));
    }
    if rest.is_empty() {
        return Err(DockerfileError::syntax(
            line,
            format!("{upper} requires at least one argument"),
        ));
    }
    Ok(match upper {
        "RUN" => {
            let (flags, _) = take_flags(rest);
            if let Some((flag, _)) = flags.first() {
                return Err(DockerfileError::unsupported(
                    line,
                    format!("RUN --{flag}"),
                    "remove the flag: Petty runs every RUN step with the sandbox's own network and no extra mounts",
                ));
            }
            let command = command(rest);
            if let Command::Shell(script) = &command {
                refuse_heredoc(line, "RUN", script)?;
            }
            Kind::Run(command)
        }
        "CMD" => Kind::Cmd(command(rest)),
        "ENTRYPOINT" => Kind::Entrypoint(command(rest)),
        "COPY" | "ADD" => Kind::Copy(parse_copy(line, upper == "ADD", rest)?),
        "ENV" | "LABEL" => {
            let pairs = name_values(line, upper, rest, escape)?;
            if upper == "ENV" {
                Kind::Env(pairs)
            } else {
                Kind::Label(pairs)
            }
        }
        "ARG" => {
            let words = words(rest, escape);
            let [word] = words.as_slice() else {
                return Err(DockerfileError::syntax(
                    line,
                    "ARG takes one `name[=default]`; hint: declare one ARG per line",
                ));
            };
            let (name, default) = match word.split_once('=') {
                Some((n, d)) => (n.to_string(), Some(d.to_string())),
                None => (word.clone(), None),
            };
            if name.is_empty() {
                return Err(DockerfileError::syntax(
                    line,
                    "ARG needs a name; hint: write `ARG NAME=default`",
                ));
            }
            Kind::Arg(name, default)
        }
        "WORKDIR" => Kind::Workdir(rest.to_string()),
        "USER" | "STOPSIGNAL" => {
            if rest.split_whitespace().count() != 1 {
                return Err(DockerfileError::syntax(
                    line,
                    format!("{upper} takes exactly one argument, not `{rest}`"),
                ));
            }
            if upper == "USER" {
                Kind::User(rest.to_string())
            } else {
                Kind::StopSignal(rest.to_string())
            }
        }
        "EXPOSE" => Kind::Expose(rest.split_whitespace().map(str::to_string).collect()),
        "SHELL" => match json_array(rest) {
            Some(argv) if !argv.is_empty() => Kind::Shell(argv),
            _ => {
                return Err(DockerfileError::syntax(
                    line,
                    "SHELL takes the JSON form; hint: write `SHELL [\"/bin/bash\", \"-c\"]`",
                ))
            }
        },
        "HEALTHCHECK" => Kind::Healthcheck(rest.to_string()),
        "VOLUME" => Kind::Volume(
            json_array(rest)
                .unwrap_or_else(|| rest.split_whitespace().map(str::to_string).collect()),
        ),
        _ => Kind::Maintainer(rest.to_string()),
    })
}

/// The JSON array form when `rest` is one, else the shell form (as Docker
/// falls back on invalid JSON).
fn command(rest: &str) -> Command {
    match json_array(rest) {
        Some(argv) => Command::Exec(argv),
        None => Command::Shell(rest.to_string()),
    }
}

fn json_array(rest: &str) -> Option<Vec<String>> {
    let rest = rest.trim();
    if !rest.starts_with('[') || !rest.ends_with(']') {
        return None;
    }
    serde_json::from_str(rest).ok()
}

/// Leading `--name[=value]` flags; the rest after them.
fn take_flags(mut rest: &str) -> (Vec<(String, Option<String>)>, &str) {
    let mut flags = Vec::new();
    while let Some(after) = rest.strip_prefix("--") {
        let (word, remaining) = split_first_word(after);
        if word.is_empty() {
            break;
        }
        let flag = match word.split_once('=') {
            Some((n, v)) => (n.to_ascii_lowercase(), Some(unquote(v).to_string())),
            None => (word.to_ascii_lowercase(), None),
        };
        flags.push(flag);
        rest = remaining;
    }
    (flags, rest)
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

fn refuse_heredoc(line: usize, instruction: &str, rest: &str) -> Result<(), DockerfileError> {
    for word in rest.split_whitespace() {
        let Some(after) = word.strip_prefix("<<") else {
            continue;
        };
        let after = after.strip_prefix('-').unwrap_or(after);
        let after = after.trim_start_matches(['"', '\'']);
        if after.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            return Err(DockerfileError::unsupported(
                line,
                format!("a heredoc in {instruction} (`{word}`)"),
                "put the script or file in the build context and COPY it, or write it with `printf` in one RUN line",
            ));
        }
    }
    Ok(())
}

fn parse_copy(line: usize, add: bool, rest: &str) -> Result<Copy, DockerfileError> {
    let name = if add { "ADD" } else { "COPY" };
    let (flags, rest) = take_flags(rest);
    let mut copy = Copy {
        add,
        sources: Vec::new(),
        dest: String::new(),
        chown: None,
        chmod: None,
        link: false,
    };
    for (flag, value) in flags {
        match (flag.as_str(), value) {
            ("from", _) => return Err(DockerfileError::unsupported(line, format!("{name} --from"), MULTI_STAGE_HINT)),
            ("chown", Some(v)) if !v.is_empty() => copy.chown = Some(v),
            ("chmod", Some(v)) => match u32::from_str_radix(&v, 8) {
                Ok(mode) if mode <= 0o7777 => copy.chmod = Some(mode),
                _ => {
                    return Err(DockerfileError::syntax(
                        line,
                        format!("{name} --chmod={v} is not an octal mode; hint: write it like `--chmod=0755`"),
                    ))
                }
            },
            ("link", None) => copy.link = true,
            ("link", Some(v)) if v == "true" || v == "false" => copy.link = v == "true",
            ("parents" | "exclude" | "checksum" | "keep-git-dir", _) => {
                return Err(DockerfileError::unsupported(
                    line,
                    format!("{name} --{flag}"),
                    "remove the flag; copy with plain sources and destinations",
                ))
            }
            (_, _) => {
                return Err(DockerfileError::syntax(
                    line,
                    format!("unknown or malformed flag `--{flag}` for {name}; hint: {name} takes --chown=, --chmod= and --link"),
                ))
            }
        }
    }
    let mut args = match json_array(rest) {
        Some(args) => args,
        None => {
            refuse_heredoc(line, name, rest)?;
            rest.split_whitespace().map(str::to_string).collect()
        }
    };
    if args.len() < 2 {
        return Err(DockerfileError::syntax(
            line,
            format!(
                "{name} needs a source and a destination; hint: write `{name} <src>... <dest>`"
            ),
        ));
    }
    copy.dest = args.pop().unwrap_or_default();
    copy.sources = args;
    if add {
        refuse_urls(line, &copy.sources)?;
    }
    Ok(copy)
}

pub(crate) fn refuse_urls(line: usize, sources: &[String]) -> Result<(), DockerfileError> {
    for source in sources {
        let lower = source.to_ascii_lowercase();
        if ["http://", "https://", "git@", "git://", "ssh://"]
            .iter()
            .any(|p| lower.starts_with(p))
        {
            return Err(DockerfileError::unsupported(
                line,
                format!("ADD from a URL (`{source}`)"),
                "download it in a RUN step (e.g. `RUN curl -fsSLo /path URL`)",
            ));
        }
    }
    Ok(())
}

/// `ENV`/`LABEL`: `k=v k2="v 2"`, or the legacy `ENV k v w`.
fn name_values(
    line: usize,
    upper: &str,
    rest: &str,
    escape: char,
) -> Result<Vec<(String, String)>, DockerfileError> {
    let words = words(rest, escape);
    let Some(first) = words.first() else {
        return Err(DockerfileError::syntax(
            line,
            format!("{upper} requires at least one argument"),
        ));
    };
    if !first.contains('=') {
        let (name, value) = split_first_word(rest);
        if value.is_empty() {
            return Err(DockerfileError::syntax(
                line,
                format!("{upper} {name} has no value; hint: write `{upper} {name}=value`"),
            ));
        }
        return Ok(vec![(name.to_string(), value.to_string())]);
    }
    let mut pairs = Vec::new();
    for word in words {
        let Some((name, value)) = word.split_once('=') else {
            return Err(DockerfileError::syntax(
                line,
                format!("{upper}: no `=` in `{word}`; hint: write name=value pairs, quoting values with spaces"),
            ));
        };
        if name.is_empty() {
            return Err(DockerfileError::syntax(
                line,
                format!("{upper}: `{word}` has no name before `=`"),
            ));
        }
        pairs.push((name.to_string(), value.to_string()));
    }
    Ok(pairs)
}

/// Splits on whitespace outside quotes, keeping quotes and escapes (Docker's
/// `parseWords`).
fn words(rest: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut blank_ok = false;
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            None => {
                if c.is_whitespace() {
                    if blank_ok || !word.is_empty() {
                        out.push(std::mem::take(&mut word));
                    }
                    blank_ok = false;
                    continue;
                }
                if c == '\'' || c == '"' {
                    quote = Some(c);
                    blank_ok = true;
                }
                if c == escape {
                    match chars.next() {
                        None => continue,
                        Some(n) => {
                            word.push(c);
                            word.push(n);
                            continue;
                        }
                    }
                }
                word.push(c);
            }
            Some(q) => {
                if c == q {
                    quote = None;
                } else if c == escape && q != '\'' {
                    match chars.next() {
                        None => {
                            quote = None;
                            continue;
                        }
                        Some(n) => {
                            word.push(c);
                            word.push(n);
                            continue;
                        }
                    }
                }
                word.push(c);
            }
        }
    }
    if blank_ok || !word.is_empty() {
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests;
