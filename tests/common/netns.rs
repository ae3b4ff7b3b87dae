//! Entering a lab network namespace from a test thread (servers that must listen inside one).

/// Move the calling thread into network namespace `ns` (from `ip netns add`); sockets it
/// opens afterwards, and threads it spawns, live there.
pub fn enter_namespace(ns: &str) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
    // SAFETY: setns(2) on a valid namespace descriptor; affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}
