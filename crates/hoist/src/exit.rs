//! Exit codes by meaning (design §5) and the one place errors become messages.

use std::process::ExitCode;

/// What the process exit code tells a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The operation failed and production is unchanged.
    Failed = 1,
    /// Bad usage or an invalid app file.
    Usage = 2,
    /// A partial failure that needs attention, named in the output.
    Partial = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// An error whose message was already shown to the user (a rich diagnostic, a failed
/// deploy's report): only its exit code is left to apply.
#[derive(Debug)]
pub struct Reported(pub Exit);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "already reported (exit {})", self.0 as u8)
    }
}

impl std::error::Error for Reported {}

/// Already reported, and the process ends with another program's exit code (`hoist run`
/// passes on its test command's status).
#[derive(Debug)]
pub struct PassOn(pub u8);

impl std::fmt::Display for PassOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "already reported (exit {})", self.0)
    }
}

impl std::error::Error for PassOn {}

/// An error that carries its exit code and, where the user can fix it, a hint;
/// anything else exits 1.
#[derive(Debug)]
pub struct WithExit {
    pub exit: Exit,
    pub error: anyhow::Error,
    pub hint: Option<String>,
}

impl std::fmt::Display for WithExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for WithExit {}

/// Builds an error that exits with `exit`.
pub fn with_exit(exit: Exit, error: impl Into<anyhow::Error>) -> anyhow::Error {
    WithExit {
        exit,
        error: error.into(),
        hint: None,
    }
    .into()
}

/// Builds an error that exits 1 and tells the user how to fix it.
pub fn with_hint(error: impl Into<anyhow::Error>, hint: impl Into<String>) -> anyhow::Error {
    WithExit {
        exit: Exit::Failed,
        error: error.into(),
        hint: Some(hint.into()),
    }
    .into()
}

/// Turns a command's result into the process exit code, printing the error once.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    let Err(err) = result else {
        return ExitCode::SUCCESS;
    };
    if let Some(Reported(exit)) = err.downcast_ref::<Reported>() {
        return (*exit).into();
    }
    if let Some(PassOn(code)) = err.downcast_ref::<PassOn>() {
        return ExitCode::from(*code);
    }
    if is_broken_pipe(&err) {
        // `hoist logs | head` must not end in an error.
        return ExitCode::SUCCESS;
    }
    let with = err.downcast_ref::<WithExit>();
    let exit = with.map_or(Exit::Failed, |w| w.exit);
    crate::output::error(&format!("{err:#}"));
    if let Some(hint) = with.and_then(|w| w.hint.as_deref()) {
        crate::output::hint(hint);
    }
    exit.into()
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
