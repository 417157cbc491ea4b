//! The naming rules every entry point shares: the app file, `hoist secrets` in the CLI and
//! the agent's secrets endpoint apply the same checks, so a name one of them accepts is
//! never refused (or misread) by another.

/// A name usable as an environment variable (and so as a secret name): letters, digits
/// and `_`, not starting with a digit.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Variables that change how the dynamic loader, libc or the shell that starts each
/// instance behave: set from an app file or a secret, they would run code the release
/// does not contain (`LD_PRELOAD`) or change which programs run (`PATH`).
const LOADER_NAMES: &[&str] = &[
    "PATH",
    "IFS",
    "ENV",
    "BASH_ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "NLSPATH",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "RES_OPTIONS",
    "MALLOC_CHECK_",
    "MALLOC_TRACE",
];

/// Why an environment name may not be set by an app file or a secret, if it may not.
pub fn reserved_env(name: &str) -> Option<&'static str> {
    if name == "PORT" || name.starts_with("HOIST_") {
        Some("hoist sets `PORT` and `HOIST_*` for every instance")
    } else if name.starts_with("LD_") || LOADER_NAMES.contains(&name) {
        Some("it changes how programs are found and loaded (`PATH`, `LD_*` and the like)")
    } else {
        None
    }
}

/// What is wrong with an environment name given by a user, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvNameProblem {
    /// Not letters, digits and `_`, or starting with a digit.
    Invalid,
    /// Valid, but set by hoist itself or by the loader; the reason, for a message.
    Reserved(&'static str),
}

/// The one rule for `[env]` keys, `[[hosts]] env` keys and secret names.
pub fn check_env_name(name: &str) -> Result<(), EnvNameProblem> {
    if !is_env_name(name) {
        return Err(EnvNameProblem::Invalid);
    }
    match reserved_env(name) {
        Some(why) => Err(EnvNameProblem::Reserved(why)),
        None => Ok(()),
    }
}

/// The longest app, service, job or backup name.
pub const MAX_NAME_LEN: usize = 63;

/// App, service, job and backup names: a lowercase letter, then lowercase letters,
/// digits, `-` and `_`, at most 63. They end up in paths, unit names and log lines.
pub fn is_app_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_NAME_LEN
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// The longest Unix user name `useradd` accepts.
pub const MAX_USER_LEN: usize = 32;

/// A Unix user name as `useradd` accepts it: `[a-z_][a-z0-9_-]*[$]?`, at most 32.
pub fn is_user_name(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    let mut chars = body.chars();
    name.len() <= MAX_USER_LEN
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Why a secret may not be stored: the same rules as the app file's names, so a secret
/// that is stored can always be used by a deploy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretRefusal {
    #[error("invalid app name `{0}`: expected a lowercase letter followed by lowercase letters, digits, `-` or `_` (at most 63)")]
    App(String),
    #[error("invalid secret name `{0}`: not a valid environment variable name (letters, digits and `_`, not starting with a digit)")]
    Name(String),
    #[error("secret name `{0}` is reserved: {1}")]
    Reserved(String, &'static str),
    #[error("the value of secret `{0}` contains a NUL character, which no environment can hold")]
    Nul(String),
}

/// Checks a secret before it is stored: the app's name, the secret's name (the rule of
/// `[env]`) and its value (no NUL: it could never reach an instance's environment).
pub fn check_secret(app: &str, name: &str, value: Option<&str>) -> Result<(), SecretRefusal> {
    if !is_app_name(app) {
        return Err(SecretRefusal::App(app.to_string()));
    }
    match check_env_name(name) {
        Ok(()) => {}
        Err(EnvNameProblem::Invalid) => return Err(SecretRefusal::Name(name.to_string())),
        Err(EnvNameProblem::Reserved(why)) => {
            return Err(SecretRefusal::Reserved(name.to_string(), why))
        }
    }
    if value.is_some_and(|v| v.contains('\0')) {
        return Err(SecretRefusal::Nul(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        assert_eq!(check_env_name("DATABASE_URL"), Ok(()));
        assert_eq!(check_env_name("_x1"), Ok(()));
        assert_eq!(check_env_name("1X"), Err(EnvNameProblem::Invalid));
        assert_eq!(check_env_name(""), Err(EnvNameProblem::Invalid));
        assert_eq!(check_env_name("A\0B"), Err(EnvNameProblem::Invalid));
        for reserved in [
            "PORT",
            "HOIST_APP",
            "HOIST_",
            "PATH",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "BASH_ENV",
        ] {
            assert!(
                matches!(check_env_name(reserved), Err(EnvNameProblem::Reserved(_))),
                "{reserved}"
            );
        }
        assert_eq!(check_env_name("PORTS"), Ok(()));
        assert_eq!(check_env_name("PYTHONPATH"), Ok(()));
    }

    #[test]
    fn app_and_user_names() {
        assert!(is_app_name("notes"));
        assert!(is_app_name("my-app_2"));
        for bad in ["", "Probe", "2x", "-x", "a/b", "..", &"a".repeat(64)] {
            assert!(!is_app_name(bad), "{bad}");
        }
        assert!(is_user_name("www-data"));
        assert!(is_user_name("_svc"));
        assert!(is_user_name("machine$"));
        for bad in [
            "",
            "../../root",
            "Root",
            "1user",
            "a$b",
            "a b",
            &"u".repeat(33),
        ] {
            assert!(!is_user_name(bad), "{bad}");
        }
    }

    #[test]
    fn secrets() {
        assert_eq!(check_secret("notes", "API_KEY", Some("v")), Ok(()));
        assert!(matches!(
            check_secret("", "A", None),
            Err(SecretRefusal::App(_))
        ));
        assert!(matches!(
            check_secret("Probe", "A", None),
            Err(SecretRefusal::App(_))
        ));
        assert!(matches!(
            check_secret("notes", "1A", None),
            Err(SecretRefusal::Name(_))
        ));
        assert!(matches!(
            check_secret("notes", "LD_PRELOAD", None),
            Err(SecretRefusal::Reserved(..))
        ));
        assert!(matches!(
            check_secret("notes", "A", Some("x\0y")),
            Err(SecretRefusal::Nul(_))
        ));
    }
}
