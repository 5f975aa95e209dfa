//! Named templates: root file systems users made (from a Dockerfile or an
//! OCI image) with the defaults their execs get.
//!
//! A named template is a root file system image plus defaults; creating
//! from it is a create with that rootfs, so it takes the same path as the
//! base image: the first create boots it once and saves a template
//! snapshot (`template.rs`), every later one restores from that snapshot,
//! standby VMMs and the warm pool included. Sandboxes and snapshots use a
//! named template when their `rootfs` is its image; that is also what
//! keeps it from being removed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What every exec in a sandbox of a template gets unless the request
/// says otherwise: an image's `Env`, `WorkingDir`, `User`, `Cmd` and
/// `Entrypoint`, or a Dockerfile's `ENV`, `WORKDIR`, `USER`, `CMD` and
/// `ENTRYPOINT`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageDefaults {
    /// Variables, under the request's own.
    pub env: Vec<(String, String)>,
    /// Working directory when the request names none.
    pub workdir: Option<String>,
    /// User when the request names none (`name`, `uid`, `name:group`).
    pub user: Option<String>,
    /// The default command (`CMD`), recorded: `petty run --template NAME`
    /// without a command runs it.
    pub cmd: Option<Vec<String>>,
    /// `ENTRYPOINT`, recorded: the default command is this followed by
    /// `cmd`.
    pub entrypoint: Option<Vec<String>>,
    /// Labels, recorded.
    pub labels: Vec<(String, String)>,
}

impl ImageDefaults {
    /// `req` with these defaults under it.
    pub fn apply(&self, mut req: petty_protocol::ExecRequest) -> petty_protocol::ExecRequest {
        if !self.env.is_empty() {
            let mut env = self.env.clone();
            for (k, v) in req.env {
                match env.iter_mut().find(|(ek, _)| *ek == k) {
                    Some(slot) => slot.1 = v,
                    None => env.push((k, v)),
                }
            }
            req.env = env;
        }
        if req.cwd.is_none() {
            req.cwd.clone_from(&self.workdir);
        }
        if req.user.is_none() {
            req.user.clone_from(&self.user);
        }
        req
    }

    /// The template's default command: `ENTRYPOINT` then `CMD`; `None`
    /// when it has neither.
    pub fn command(&self) -> Option<Vec<String>> {
        let mut argv = self.entrypoint.clone().unwrap_or_default();
        argv.extend(self.cmd.clone().unwrap_or_default());
        (!argv.is_empty()).then_some(argv)
    }

    /// True when there is nothing to apply to an exec.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.workdir.is_none() && self.user.is_none()
    }
}

/// A named template as stored (and as listings show it, in JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateRecord {
    /// Unique name (`base` is Petty's own image and never stored).
    pub name: String,
    /// What it was made from, in words: `dockerfile:PATH`,
    /// `image:REFERENCE`.
    pub source: String,
    /// Its root file system image (read-only; sandboxes overlay it).
    pub rootfs: PathBuf,
    /// What identifies its content: the image's manifest digest, or the
    /// build's last step key.
    pub digest: String,
    /// What its execs get.
    pub defaults: ImageDefaults,
    /// Bytes its image takes on disk.
    pub size_bytes: u64,
    /// When it was made, ms since the epoch.
    pub created_at_ms: i64,
    /// When a sandbox was last created from it, ms since the epoch.
    pub last_used_ms: i64,
}

/// The name of Petty's own image as a template.
pub const BASE_TEMPLATE: &str = "base";

/// Checks a template name: 1 to 64 letters, digits, `-`, `_` or `.`, not
/// starting with `.` or `-`, and not `base`.
pub fn check_template_name(name: &str) -> Result<(), crate::CoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(crate::CoreError::InvalidConfig(format!(
            "template name {name:?} is not allowed; use 1 to 64 letters, digits, '-', '_' or '.', \
             starting with a letter or digit"
        )));
    }
    if name == BASE_TEMPLATE {
        return Err(crate::CoreError::InvalidConfig(
            "`base` is Petty's own image; give the template another name".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use petty_protocol::ExecRequest;

    #[test]
    fn defaults_sit_under_the_request() {
        let d = ImageDefaults {
            env: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
            workdir: Some("/app".into()),
            user: Some("bob".into()),
            ..Default::default()
        };
        let mut req = ExecRequest::shell("env");
        req.env = vec![("B".into(), "3".into()), ("C".into(), "4".into())];
        let out = d.apply(req);
        assert_eq!(
            out.env,
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".into(), "3".into()),
                ("C".into(), "4".into())
            ]
        );
        assert_eq!(out.cwd.as_deref(), Some("/app"));
        assert_eq!(out.user.as_deref(), Some("bob"));
        let mut req = ExecRequest::shell("pwd");
        req.cwd = Some("/tmp".into());
        req.user = Some("root".into());
        let out = d.apply(req);
        assert_eq!(
            (out.cwd.as_deref(), out.user.as_deref()),
            (Some("/tmp"), Some("root"))
        );
    }

    #[test]
    fn the_default_command_is_entrypoint_then_cmd() {
        let mut d = ImageDefaults::default();
        assert_eq!(d.command(), None);
        d.cmd = Some(vec!["-c".into(), "x".into()]);
        d.entrypoint = Some(vec!["sh".into()]);
        assert_eq!(d.command().unwrap(), ["sh", "-c", "x"]);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_template_name("py-tools_1.2").is_ok());
        for bad in ["", "base", ".x", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_template_name(bad).is_err(), "{bad}");
        }
    }
}
