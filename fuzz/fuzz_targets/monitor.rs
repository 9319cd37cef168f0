//! The monitor's control protocol: one JSON message per SOCK_SEQPACKET datagram, with fds
//! attached by SCM_RIGHTS. The fuzz input is sent as one message (with 0–3 fds) over a real
//! socket pair and received with the code the monitor and berthd use, then decoded as each
//! side decodes it (a request, a reply, an exit record). Whatever decodes must encode back to
//! the same value, and every fd sent must arrive (and be closed when dropped).
#![no_main]

use arbitrary::Arbitrary;
use berth_runtime::fdpass;
use berth_runtime::monitor::proto::{self, ExitInfo, Reply, Request};
use libfuzzer_sys::fuzz_target;
use std::os::fd::{AsFd, AsRawFd};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    fds: u8,
    message: &'a [u8],
}

fn round_trip<T>(bytes: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = proto::decode::<T>(bytes) {
        let again = proto::encode(&v);
        let back: T = proto::decode(&again)
            .unwrap_or_else(|e| panic!("{v:?} encodes to {again:?}, which does not decode: {e}"));
        assert_eq!(back, v);
    }
}

fuzz_target!(|input: Input<'_>| {
    if input.message.is_empty() || input.message.len() > proto::MAX_MESSAGE {
        return;
    }
    let (a, b) = berth_runtime::launch::seqpacket_pair().expect("socketpair");
    let null = std::fs::File::open("/dev/null").expect("open /dev/null");
    let fds = vec![null.as_raw_fd(); (input.fds % 4) as usize];
    fdpass::send(a.as_fd(), input.message, &fds).expect("send one message");
    let mut buf = vec![0u8; proto::MAX_MESSAGE];
    let (n, got) = fdpass::recv(b.as_fd(), &mut buf).expect("receive it");
    assert_eq!(&buf[..n], input.message);
    assert_eq!(got.len(), fds.len());
    let msg = &buf[..n];
    round_trip::<Request>(msg);
    round_trip::<Reply>(msg);
    round_trip::<ExitInfo>(msg);
});
