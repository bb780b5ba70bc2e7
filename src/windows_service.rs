//! The Windows service: `warren run --service` is what the Service Control Manager starts
//! (`windows/install.ps1` registers it). It reports *start pending* until every listener is
//! bound, then *running*; it turns the manager's Stop and Shutdown into the same graceful stop
//! as SIGTERM on Linux (stop accepting, let open connections finish for the grace period, close
//! the rest), and reports *stopped* with warren's outcome. It owns the conversation with the
//! service manager only: loading, binding and serving are `run::serve`'s.
//!
//! `define_windows_service!` expands to the FFI entry point the manager calls; that generated
//! function holds the one `unsafe` block outside the splice module, the crate's own.

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::{define_windows_service, service_dispatcher};

use crate::lifecycle::{Lifecycle, LifecycleHook};
use crate::run::RunArgs;

/// The service name `windows/install.ps1` registers.
pub const SERVICE_NAME: &str = "warren";

/// How long the manager should wait for start-up (config load, name resolution, bind).
const START_WAIT_HINT: Duration = Duration::from_secs(30);

/// Beyond the grace period, the time a stop may take to close what is left and exit.
const STOP_MARGIN: Duration = Duration::from_secs(15);

/// The flags of `warren run --service`, handed from [`run`] to the service thread the
/// dispatcher starts (the dispatcher passes only the manager's own start arguments).
static ARGS: Mutex<Option<RunArgs>> = Mutex::new(None);

/// How the service ended, handed back from the service thread to [`run`].
static OUTCOME: Mutex<Option<ExitCode>> = Mutex::new(None);

define_windows_service!(ffi_service_main, service_main);

/// Hand the process to the Service Control Manager; returns once the service has stopped.
pub fn run(args: RunArgs) -> ExitCode {
    *ARGS.lock().unwrap_or_else(|e| e.into_inner()) = Some(args);
    if let Err(e) = service_dispatcher::start(SERVICE_NAME, ffi_service_main) {
        eprintln!(
            "cannot run as the Windows service {SERVICE_NAME:?}: {e}; --service is for the \
             Service Control Manager (see windows/install.ps1); in a console run `warren run` \
             without it"
        );
        return ExitCode::FAILURE;
    }
    OUTCOME
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or(ExitCode::FAILURE)
}

/// The service thread: register for controls, serve, report each state.
fn service_main(_manager_arguments: Vec<OsString>) {
    let Some(args) = ARGS.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        tracing::error!("service started without its flags");
        return;
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let on_control = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
            tracing::info!(?control, "service manager: stopping gracefully");
            stop.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let handle = match service_control_handler::register(SERVICE_NAME, on_control) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot register with the service manager");
            return;
        }
    };
    report(handle, ServiceState::StartPending, START_WAIT_HINT, 0);

    let stop_wait = args.shutdown_grace + STOP_MARGIN;
    let lifecycle = LifecycleHook(Arc::new(move |change: &Lifecycle| match change {
        Lifecycle::Ready { .. } => report(handle, ServiceState::Running, Duration::ZERO, 0),
        Lifecycle::Stopping { .. } => report(handle, ServiceState::StopPending, stop_wait, 0),
        Lifecycle::Reloading | Lifecycle::Alive | Lifecycle::HandedOver { .. } => {}
    }));
    let outcome = match crate::run::serve(args, shutdown, Some(lifecycle)) {
        Ok(()) => {
            report(handle, ServiceState::Stopped, Duration::ZERO, 0);
            ExitCode::SUCCESS
        }
        Err(e) => {
            // No stderr here: the log (--log-file) and the manager's exit code carry it.
            tracing::error!(error = %e, "warren could not start");
            report(handle, ServiceState::Stopped, Duration::ZERO, 1);
            ExitCode::FAILURE
        }
    };
    *OUTCOME.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
}

/// Tell the manager the service's state; `failure` != 0 is reported as a service-specific code.
fn report(handle: ServiceStatusHandle, state: ServiceState, wait_hint: Duration, failure: u32) {
    let controls_accepted = match state {
        ServiceState::Running => ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        _ => ServiceControlAccept::empty(),
    };
    let exit_code = match failure {
        0 => ServiceExitCode::Win32(0),
        code => ServiceExitCode::ServiceSpecific(code),
    };
    let status = ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted,
        exit_code,
        checkpoint: 0,
        wait_hint,
        process_id: None,
    };
    if let Err(e) = handle.set_service_status(status) {
        tracing::warn!(?state, error = %e, "cannot report the service state");
    }
}
