//! A task on a thread of its own with a single-threaded runtime of its own, so that
//! lease renewals and heartbeats never wait behind the main loop; dropping the handle
//! stops it.

use std::future::Future;

use tokio::sync::oneshot;

/// The running thread; stopped when dropped.
#[derive(Default)]
pub struct OwnThread {
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for OwnThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Run `task()` on a new thread `name` until it ends or the handle is dropped;
/// `runtime_failed` hears why the thread's runtime could not be built.
pub fn spawn<F, Fut>(
    name: &str,
    task: F,
    runtime_failed: impl FnOnce(String) + Send + 'static,
) -> std::io::Result<OwnThread>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => return runtime_failed(e.to_string()),
            };
            runtime.block_on(async move {
                tokio::select! {
                    _ = stopped => {}
                    () = task() => {}
                }
            });
        })?;
    Ok(OwnThread { stop: Some(stop) })
}
