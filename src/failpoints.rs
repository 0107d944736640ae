//! Crash points for the fault matrix (tests/vm/scenarios/3*-faults-*.sh). Built with the
//! `failpoints` feature, a point named in `FAILPOINTS` (`FAILPOINTS=iscsi.logged_in=return`)
//! kills the process with SIGKILL when reached, as a crash, the OOM killer or a power cut
//! would stop it there. Without the feature, as in release builds, [`crash`] is empty and the
//! `fail` crate is not even compiled in.

/// Reads `FAILPOINTS`; call once at start.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

/// Kills the process here if `FAILPOINTS` names this point.
#[inline]
pub fn crash(point: &str) {
    #[cfg(feature = "failpoints")]
    if fail::eval(point, |_| ()).is_some() {
        tracing::error!(
            point,
            "crash point reached: the process kills itself (SIGKILL)"
        );
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = point;
}
