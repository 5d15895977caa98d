//! Skipping a test whose service or tool is missing, and failing it instead under CI.

use std::io::Write as _;
use std::path::Path;

/// Whether this run must not skip anything (`WECHAT_KF_CI=1`, set by `.ci/run`).
pub fn ci() -> bool {
    std::env::var("WECHAT_KF_CI").as_deref() == Ok("1")
}

/// `available`, after saying why not: `missing` describes what is absent ("ffmpeg not
/// found"). Prints `skipped: <missing>` on the real stderr (a direct write, past the harness's
/// capture, so it is seen without `--nocapture`) and returns false; under `WECHAT_KF_CI=1`
/// panics instead.
///
/// ```
/// # let serve_wired = true;
/// if !wechat_kf_test_support::require(serve_wired, "`wechat-kf serve` is not in this build") {
///     return;
/// }
/// ```
pub fn require(available: bool, missing: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        !ci(),
        "{missing}, and WECHAT_KF_CI=1 requires this test to run"
    );
    // libtest names each test's thread after the test: say which one skipped.
    let test = match std::thread::current().name() {
        Some(name) if name != "main" => format!(" ({name})"),
        _ => String::new(),
    };
    let _ = writeln!(std::io::stderr(), "skipped: {missing}{test}");
    false
}

/// The value of the environment variable `var` (a service's URL such as `DATABASE_URL`), or
/// `None` after saying `skipped: <var> not set`; unset or empty under `WECHAT_KF_CI=1` panics.
///
/// ```no_run
/// let Some(url) = wechat_kf_test_support::require_env("REDIS_URL") else {
///     return;
/// };
/// ```
pub fn require_env(var: &str) -> Option<String> {
    let value = std::env::var(var).ok().filter(|v| !v.is_empty());
    require(value.is_some(), &format!("{var} not set")).then(|| value.unwrap_or_default())
}

/// Whether `program` is installed (an executable file of that name on `PATH`, where
/// `Command::new(program)` looks), after saying `skipped: <program> not found` if not; a
/// missing program under `WECHAT_KF_CI=1` panics. Found on `PATH` rather than run with a
/// version flag: programs disagree on the flag (`ffmpeg --version` fails, `-version` works).
pub fn require_command(program: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let candidate = dir.join(program);
            is_executable(&candidate) || is_executable(&candidate.with_extension("exe"))
        })
    });
    require(found, &format!("{program} not found"))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// Whether `path` exists, after saying `skipped: <path> is missing; <hint>` if not (`hint` says
/// how to create it, e.g. "run `npm ci --prefix interop`"); under `WECHAT_KF_CI=1` panics.
pub fn require_path(path: &Path, hint: &str) -> bool {
    require(
        path.exists(),
        &format!("{} is missing; {hint}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_there_is_required_without_a_word() {
        assert!(require(true, "never said"));
        #[cfg(unix)]
        assert!(require_command("sh"));
        assert!(require_path(
            Path::new(env!("CARGO_MANIFEST_DIR")),
            "never said"
        ));
    }

    #[test]
    fn a_missing_piece_is_skipped_outside_ci_and_fails_under_it() {
        let outcome = std::panic::catch_unwind(|| require(false, "a unicorn not found"));
        match outcome {
            Ok(available) => assert!(!ci() && !available),
            Err(panic) => {
                assert!(ci());
                let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
                assert!(message.contains("a unicorn not found"), "{message}");
                assert!(message.contains("WECHAT_KF_CI=1"), "{message}");
            }
        }
    }
}
