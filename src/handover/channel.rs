//! The hand-over channel: one end of a `socketpair(2)` (a Unix stream socket) in each process,
//! carrying [`Message`]s with their descriptors attached by `SCM_RIGHTS`. It owns sending and
//! receiving with a deadline, and turning descriptor numbers into owned descriptors; what the
//! messages mean is the caller's.
//!
//! Written on `nix`'s `sendmsg`/`recvmsg` (already a dependency, for signals): the `sendfd` and
//! `passfd` crates pass descriptors but not a byte message beside them in the same call, and
//! this protocol needs both together so a message and its sockets cannot be separated. The
//! `unsafe` here is only taking ownership of descriptors the kernel just created for this
//! process (received ones) or that the old process passed at spawn (the inherited end).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use super::protocol::{self, Message, ProtocolError};

/// The most descriptors one message may carry (Linux's `SCM_MAX_FD`).
pub const MAX_DESCRIPTORS: usize = 253;

/// What went wrong on the channel; each says which step.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the other process closed the hand-over channel")]
    Closed,
    #[error("no answer on the hand-over channel in time")]
    Timeout,
    #[error("hand-over channel: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("hand-over channel: {0} descriptors in one message (at most {MAX_DESCRIPTORS})")]
    TooManyDescriptors(usize),
    #[error("WARREN_HANDOVER_FD={value:?}: {reason}")]
    Inherited { value: String, reason: String },
}

/// One end of the hand-over channel.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
    /// Bytes received past the last whole message.
    pending: Vec<u8>,
    /// Descriptors received with those bytes, in order.
    fds: Vec<OwnedFd>,
}

impl Channel {
    /// A connected pair: this process's end, and the end for the new process (close-on-exec
    /// cleared on it by whoever spawns the new process, see `upgrade`).
    pub fn pair() -> std::io::Result<(Channel, UnixStream)> {
        let (ours, theirs) = UnixStream::pair()?;
        Ok((Channel::new(ours), theirs))
    }

    fn new(stream: UnixStream) -> Channel {
        Channel {
            stream,
            pending: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// The end the old process passed as descriptor `value` (`WARREN_HANDOVER_FD`). Call once:
    /// the number becomes owned here.
    pub fn inherited(value: &str) -> Result<Channel, ChannelError> {
        use nix::sys::stat::{fstat, SFlag};
        let fail = |reason: String| ChannelError::Inherited {
            value: value.to_owned(),
            reason,
        };
        let fd: RawFd = value
            .parse()
            .ok()
            .filter(|fd| *fd > 2)
            .ok_or_else(|| fail("not a descriptor number above 2".into()))?;
        let stat = fstat(fd).map_err(|e| fail(format!("not an open descriptor: {e}")))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
            return Err(fail("not a socket".into()));
        }
        // SAFETY: `fd` is open and a socket (fstat); the old process passed it to this one to
        // own, and `serve` reads WARREN_HANDOVER_FD once and removes it, so nothing else in
        // this process owns the number.
        let stream = unsafe { UnixStream::from_raw_fd(fd) };
        set_cloexec(stream.as_raw_fd()).map_err(|e| fail(e.to_string()))?;
        Ok(Channel::new(stream))
    }

    /// Sends wait at most until `deadline` for room in the socket (then fail with a timeout).
    pub fn set_send_deadline(&mut self, deadline: Instant) -> std::io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.stream
            .set_write_timeout(Some(left.max(std::time::Duration::from_millis(1))))
    }

    /// Send `message` with `fds` attached, in one `sendmsg`.
    pub fn send(&mut self, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        if fds.len() > MAX_DESCRIPTORS {
            return Err(ChannelError::TooManyDescriptors(fds.len()));
        }
        let frame = protocol::encode(message);
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
        let mut sent = 0;
        while sent < frame.len() {
            let iov = [IoSlice::new(&frame[sent..])];
            // The descriptors go with the first byte only.
            let cmsgs = if sent == 0 { cmsgs } else { &[] };
            sent += match sendmsg::<()>(
                self.stream.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::empty(),
                None,
            ) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                // The send deadline (`set_send_deadline`) passed.
                Err(nix::errno::Errno::EAGAIN) => return Err(ChannelError::Timeout),
                Err(e) => return Err(std::io::Error::from(e).into()),
            };
        }
        Ok(())
    }

    /// The next message and the descriptors that came with it, waiting until `deadline`.
    pub fn recv(&mut self, deadline: Instant) -> Result<(Message, Vec<OwnedFd>), ChannelError> {
        loop {
            if let Some((message, used)) = protocol::decode(&self.pending)? {
                self.pending.drain(..used);
                let expected = message.descriptors();
                if self.fds.len() < expected {
                    return Err(ProtocolError::Descriptors {
                        got: self.fds.len(),
                        expected,
                    }
                    .into());
                }
                let fds = self.fds.drain(..expected).collect();
                return Ok((message, fds));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ChannelError::Timeout);
            }
            self.stream.set_read_timeout(Some(left))?;
            self.receive_some()?;
        }
    }

    /// One `recvmsg`: its bytes to `pending`, its descriptors to `fds`.
    fn receive_some(&mut self) -> Result<(), ChannelError> {
        let mut chunk = [0u8; 4096];
        let mut space = nix::cmsg_space!([RawFd; MAX_DESCRIPTORS]);
        let mut iov = [IoSliceMut::new(&mut chunk)];
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        let flags = MsgFlags::MSG_CMSG_CLOEXEC;
        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
        let flags = MsgFlags::empty();
        let received =
            match recvmsg::<()>(self.stream.as_raw_fd(), &mut iov, Some(&mut space), flags) {
                Ok(r) => r,
                Err(nix::errno::Errno::EAGAIN) => return Err(ChannelError::Timeout),
                Err(nix::errno::Errno::EINTR) => return Ok(()),
                Err(e) => return Err(std::io::Error::from(e).into()),
            };
        let mut raw = Vec::new();
        for cmsg in received.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                raw.extend(fds);
            }
        }
        let (bytes, truncated) = (
            received.bytes,
            received.flags.contains(MsgFlags::MSG_CTRUNC),
        );
        for fd in raw {
            // SAFETY: the kernel just installed `fd` in this process for this message
            // (SCM_RIGHTS); nothing else knows the number, so this is its only owner.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            set_cloexec(owned.as_raw_fd())?;
            self.fds.push(owned);
        }
        if truncated {
            return Err(ChannelError::TooManyDescriptors(MAX_DESCRIPTORS + 1));
        }
        if bytes == 0 {
            return Err(ChannelError::Closed);
        }
        self.pending.extend_from_slice(&chunk[..bytes]);
        Ok(())
    }
}

/// Close-on-exec, so no hook (or later upgrade) inherits the descriptor by accident.
pub(super) fn set_cloexec(fd: RawFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(std::io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::os::fd::AsFd;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn listening_sockets_cross_the_channel_and_still_listen() {
        let (mut old, new_end) = Channel::pair().unwrap();
        let mut new = Channel::new(new_end);
        let listeners: Vec<std::net::TcpListener> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addr: SocketAddr = listeners[0].local_addr().unwrap();
        let fds: Vec<BorrowedFd> = listeners.iter().map(|l| l.as_fd()).collect();
        let message = Message::Listener {
            name: "amqp".into(),
            addr,
            sockets: 2,
        };
        old.send(&message, &fds).unwrap();
        old.send(&Message::Done, &[]).unwrap();
        let (got, received) = new.recv(soon()).unwrap();
        assert_eq!(got, message);
        assert_eq!(received.len(), 2);
        assert_eq!(new.recv(soon()).unwrap().0, Message::Done);
        // The received descriptor is the same listening socket: a connect lands on it.
        let adopted = std::net::TcpListener::from(received.into_iter().next().unwrap());
        assert_eq!(adopted.local_addr().unwrap(), addr);
        drop(listeners);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        adopted.accept().unwrap();
    }

    #[test]
    fn a_closed_peer_and_a_silent_one_are_told_apart() {
        let (mut old, new_end) = Channel::pair().unwrap();
        let started = Instant::now();
        let waited = old.recv(Instant::now() + Duration::from_millis(50));
        assert!(matches!(waited, Err(ChannelError::Timeout)), "{waited:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(new_end);
        assert!(matches!(old.recv(soon()), Err(ChannelError::Closed)));
    }

    #[test]
    fn a_message_missing_its_descriptors_is_refused() {
        let (old_end, new_end) = UnixStream::pair().unwrap();
        let (mut old, mut new) = (Channel::new(old_end), Channel::new(new_end));
        let message = Message::Admin {
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        old.send(&message, &[]).unwrap();
        let got = new.recv(soon());
        assert!(
            matches!(
                got,
                Err(ChannelError::Protocol(ProtocolError::Descriptors {
                    got: 0,
                    expected: 1
                }))
            ),
            "{got:?}"
        );
    }

    #[test]
    fn the_inherited_end_must_be_an_open_socket() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = Channel::inherited(&file.as_raw_fd().to_string()).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        let err = Channel::inherited("x").unwrap_err();
        assert!(
            err.to_string().contains("WARREN_HANDOVER_FD=\"x\""),
            "{err}"
        );
    }
}
