//! The shutdown signal every binary stops on.

/// Completes on SIGINT (Ctrl-C) or SIGTERM (what `docker stop` and
/// Kubernetes send). If SIGTERM cannot be listened for, logs it and waits
/// for Ctrl-C only.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown signal received");
}
