//! The remote-session section of the device contract: a terminal, a port
//! forward or a reverse SSH tunnel, opened by a `remote_session` task and
//! carried over the device's own MQTT connection.
//!
//! - Platform → device, QoS 1: `dwr/{model}/{device}/sessions/{session}/in`.
//! - Device → platform, QoS 1: `dwr/{model}/{device}/sessions/{session}/out`.
//!
//! Each message is one binary [`Frame`]: a 13-byte header (kind, channel,
//! value) and a body. Channel 0 is the terminal; a port forward opens one
//! channel per TCP connection. Both directions of every channel are paced
//! by a byte-credit window: a sender keeps at most `window` bytes
//! unacknowledged, a receiver acknowledges what it has consumed, and a
//! peer (or the platform in between) that sees more than the window in
//! flight ends the session. So a `yes` on the device or a flood from a
//! browser costs at most one window of memory anywhere on the way.

use serde::{Deserialize, Serialize};

use crate::PREFIX;

/// Largest body of one data frame.
pub const MAX_DATA: usize = 16 * 1024;
/// Largest frame: header and body.
pub const MAX_FRAME: usize = HEADER + MAX_DATA;
/// Bytes before the body: kind (1), channel (4), value (8), big-endian.
pub const HEADER: usize = 13;
/// Default window of a terminal: a screenful many times over, yet a
/// `cat` of a large file stops after 64 KiB until the browser has drawn it.
pub const TERMINAL_WINDOW: u32 = 64 * 1024;
/// Default window of a port forward: enough to keep a loopback or LTE
/// link busy (256 KiB per round trip).
pub const TUNNEL_WINDOW: u32 = 256 * 1024;
/// Bounds of a window a session may ask for.
pub const MIN_WINDOW: u32 = 4 * 1024;
pub const MAX_WINDOW: u32 = 4 * 1024 * 1024;
/// Most TCP connections one port forward carries at once.
pub const MAX_CHANNELS: u32 = 32;
/// Longest reason a close or end carries.
pub const MAX_REASON: usize = 512;
/// Largest private key or host key line in a reverse SSH request.
pub const MAX_KEY: usize = 4096;

/// `dwr/{model}/{device}/sessions/{session}/in`: what the platform sends.
pub fn input_topic(model: &str, device: &str, session: &str) -> String {
    format!("{PREFIX}/{model}/{device}/sessions/{session}/in")
}

/// `dwr/{model}/{device}/sessions/{session}/out`: what the device sends.
pub fn output_topic(model: &str, device: &str, session: &str) -> String {
    format!("{PREFIX}/{model}/{device}/sessions/{session}/out")
}

/// What a device subscribes to for its sessions' input.
pub fn input_filter(model: &str, device: &str) -> String {
    format!("{PREFIX}/{model}/{device}/sessions/+/in")
}

/// Whether a session id is one the platform makes: 32 lowercase hex digits
/// (128 random bits, so one that was never handed out is not guessed).
pub fn valid_session_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Which way a session message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Platform → device.
    In,
    /// Device → platform.
    Out,
}

/// A topic suffix (after `dwr/{model}/{device}/`) of the session section:
/// None when it is not under `sessions/`, Err when it is but malformed.
pub fn parse_topic(suffix: &str) -> Option<Result<(&str, Direction), String>> {
    let rest = suffix.strip_prefix("sessions/")?;
    let parsed = match rest.split_once('/') {
        Some((id, "in")) if valid_session_id(id) => Ok((id, Direction::In)),
        Some((id, "out")) if valid_session_id(id) => Ok((id, Direction::Out)),
        _ => Err(format!(
            "session topic {suffix:?} is not sessions/{{id}}/in|out"
        )),
    };
    Some(parsed)
}

/// One message of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes of a channel's stream starting at `offset` (bytes sent on
    /// that channel in that direction before these).
    Data {
        channel: u32,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// The receiver has consumed the first `consumed` bytes of the
    /// channel's stream: the sender may have `window` beyond that in flight.
    Ack { channel: u32, consumed: u64 },
    /// Port forward: open channel `channel` to `127.0.0.1:port` on the device.
    Open { channel: u32, port: u16 },
    /// The channel is finished (connection closed, refused, or an error).
    Close { channel: u32, reason: String },
    /// Terminal: the window's size changed.
    Resize { cols: u16, rows: u16 },
    /// The session is over, with why.
    End { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a session frame needs {HEADER} header bytes, got {0}")]
    Short(usize),
    #[error("a session frame is at most {MAX_FRAME} bytes, got {0}")]
    TooLarge(usize),
    #[error("unknown session frame kind {0}")]
    UnknownKind(u8),
    #[error("a {0} frame carries no body")]
    UnexpectedBody(&'static str),
    #[error("a data frame carries at least one byte")]
    EmptyData,
    #[error("a close or end reason is UTF-8 of at most {MAX_REASON} bytes")]
    BadReason,
    #[error("{0} is not a port")]
    BadPort(u64),
    #[error("a terminal size is 1 to 1000 columns and rows")]
    BadSize,
}

const DATA: u8 = 1;
const ACK: u8 = 2;
const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const RESIZE: u8 = 5;
const END: u8 = 6;

fn reason_bytes(reason: &str) -> &[u8] {
    // Cut on a character boundary so the far side reads valid UTF-8.
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason.as_bytes()[..end]
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, channel, value, body): (u8, u32, u64, &[u8]) = match self {
            Frame::Data {
                channel,
                offset,
                bytes,
            } => (DATA, *channel, *offset, bytes),
            Frame::Ack { channel, consumed } => (ACK, *channel, *consumed, &[]),
            Frame::Open { channel, port } => (OPEN, *channel, u64::from(*port), &[]),
            Frame::Close { channel, reason } => (CLOSE, *channel, 0, reason_bytes(reason)),
            Frame::Resize { cols, rows } => {
                (RESIZE, 0, (u64::from(*cols) << 16) | u64::from(*rows), &[])
            }
            Frame::End { reason } => (END, 0, 0, reason_bytes(reason)),
        };
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.push(kind);
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    pub fn decode(raw: &[u8]) -> Result<Frame, FrameError> {
        if raw.len() < HEADER {
            return Err(FrameError::Short(raw.len()));
        }
        if raw.len() > MAX_FRAME {
            return Err(FrameError::TooLarge(raw.len()));
        }
        let kind = raw[0];
        let mut channel = [0u8; 4];
        channel.copy_from_slice(&raw[1..5]);
        let channel = u32::from_be_bytes(channel);
        let mut value = [0u8; 8];
        value.copy_from_slice(&raw[5..HEADER]);
        let value = u64::from_be_bytes(value);
        let body = &raw[HEADER..];
        let no_body = |name: &'static str| {
            if body.is_empty() {
                Ok(())
            } else {
                Err(FrameError::UnexpectedBody(name))
            }
        };
        let reason = || {
            std::str::from_utf8(body)
                .map(str::to_owned)
                .map_err(|_| FrameError::BadReason)
        };
        Ok(match kind {
            DATA if body.is_empty() => return Err(FrameError::EmptyData),
            DATA => Frame::Data {
                channel,
                offset: value,
                bytes: body.to_vec(),
            },
            ACK => {
                no_body("ack")?;
                Frame::Ack {
                    channel,
                    consumed: value,
                }
            }
            OPEN => {
                no_body("open")?;
                let port = u16::try_from(value)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or(FrameError::BadPort(value))?;
                Frame::Open { channel, port }
            }
            CLOSE if body.len() > MAX_REASON => return Err(FrameError::BadReason),
            CLOSE => Frame::Close {
                channel,
                reason: reason()?,
            },
            RESIZE => {
                no_body("resize")?;
                let (cols, rows) = ((value >> 16) & 0xffff, value & 0xffff);
                if value >> 32 != 0 || !(1..=1000).contains(&cols) || !(1..=1000).contains(&rows) {
                    return Err(FrameError::BadSize);
                }
                Frame::Resize {
                    cols: cols as u16,
                    rows: rows as u16,
                }
            }
            END if body.len() > MAX_REASON => return Err(FrameError::BadReason),
            END => Frame::End { reason: reason()? },
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}

/// Why a window refused a frame: the peer broke the flow control.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("data at offset {got} where {expected} was next: bytes were lost or reordered")]
    Gap { expected: u64, got: u64 },
    #[error("{in_flight} bytes in flight exceed the window of {window}")]
    Overrun { in_flight: u64, window: u64 },
    #[error("acknowledgement of {acked} bytes outside {low}..={high}")]
    BadAck { acked: u64, low: u64, high: u64 },
}

/// The sending half of one channel's direction.
#[derive(Debug, Clone)]
pub struct SendWindow {
    window: u64,
    sent: u64,
    acked: u64,
}

impl SendWindow {
    pub fn new(window: u32) -> Self {
        SendWindow {
            window: u64::from(window),
            sent: 0,
            acked: 0,
        }
    }

    /// How many bytes may be sent now.
    pub fn room(&self) -> usize {
        (self.window - (self.sent - self.acked)) as usize
    }

    /// Records `n` bytes sent; returns the offset of the first.
    pub fn sent(&mut self, n: usize) -> u64 {
        let offset = self.sent;
        self.sent += n as u64;
        offset
    }

    /// Takes the receiver's acknowledgement.
    pub fn ack(&mut self, consumed: u64) -> Result<(), FlowError> {
        if consumed < self.acked || consumed > self.sent {
            return Err(FlowError::BadAck {
                acked: consumed,
                low: self.acked,
                high: self.sent,
            });
        }
        self.acked = consumed;
        Ok(())
    }

    /// Bytes sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.sent - self.acked
    }
}

/// The receiving half of one channel's direction, also kept by the
/// platform for each direction it relays (then the acknowledgements are
/// the far end's, seen in passing).
#[derive(Debug, Clone)]
pub struct ReceiveWindow {
    window: u64,
    received: u64,
    consumed: u64,
    acked: u64,
}

impl ReceiveWindow {
    pub fn new(window: u32) -> Self {
        ReceiveWindow {
            window: u64::from(window),
            received: 0,
            consumed: 0,
            acked: 0,
        }
    }

    /// Checks a data frame: next in the stream and within the window.
    pub fn data(&mut self, offset: u64, len: usize) -> Result<(), FlowError> {
        if offset != self.received {
            return Err(FlowError::Gap {
                expected: self.received,
                got: offset,
            });
        }
        let in_flight = self.received + len as u64 - self.acked;
        if in_flight > self.window {
            return Err(FlowError::Overrun {
                in_flight,
                window: self.window,
            });
        }
        self.received += len as u64;
        Ok(())
    }

    /// An acknowledgement the receiving end sent (the platform sees it on
    /// its way; the endpoint learns it from [`consumed`](Self::consumed)).
    pub fn acknowledged(&mut self, consumed: u64) -> Result<(), FlowError> {
        if consumed < self.acked || consumed > self.received {
            return Err(FlowError::BadAck {
                acked: consumed,
                low: self.acked,
                high: self.received,
            });
        }
        self.acked = consumed;
        Ok(())
    }

    /// The endpoint consumed `n` more bytes: Some(value) when an
    /// acknowledgement is due (a quarter window consumed, or everything
    /// received consumed, so an idle stream never waits on credit).
    pub fn consumed(&mut self, n: usize) -> Option<u64> {
        self.consumed = (self.consumed + n as u64).min(self.received);
        let due = self.consumed > self.acked
            && (self.consumed - self.acked >= self.window / 4 || self.consumed == self.received);
        if due {
            self.acked = self.consumed;
            Some(self.consumed)
        } else {
            None
        }
    }

    /// Bytes received and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.received - self.acked
    }
}

/// What a session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// A PTY running the device's login shell (or its configured command).
    Terminal,
    /// TCP connections to one local port of the device.
    Tunnel,
    /// `ssh -N -R` from the device to the platform's bastion.
    ReverseSsh,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Terminal => "terminal",
            SessionKind::Tunnel => "tunnel",
            SessionKind::ReverseSsh => "reverse_ssh",
        }
    }
}

/// Where a reverse SSH tunnel goes, and the key valid for this session only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseSsh {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// OpenSSH private key, made by the platform for this session.
    pub private_key: String,
    /// The bastion's host key as a `known_hosts` line, so the device checks
    /// whom it talks to.
    pub known_host: String,
    /// The device's port the bastion's end leads to (its sshd).
    pub target_port: u16,
}

/// The parameters of a `remote_session` task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSession {
    /// 32 hex digits; names the session's topics.
    pub session: String,
    pub kind: SessionKind,
    /// Terminal size.
    #[serde(default)]
    pub cols: Option<u16>,
    #[serde(default)]
    pub rows: Option<u16>,
    /// Port forward: the device port its channels open.
    #[serde(default)]
    pub port: Option<u16>,
    /// Byte-credit window of each channel and direction.
    pub window: u32,
    /// The session ends after this long without traffic.
    pub idle_secs: u32,
    /// The session ends after this long whatever happens (a reverse
    /// tunnel's TTL).
    pub max_secs: u32,
    #[serde(default)]
    pub reverse_ssh: Option<ReverseSsh>,
}

impl RemoteSession {
    pub fn check(&self) -> Result<(), String> {
        if !valid_session_id(&self.session) {
            return Err("session must be 32 lowercase hex digits".into());
        }
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&self.window) {
            return Err(format!("window must be {MIN_WINDOW} to {MAX_WINDOW} bytes"));
        }
        if self.idle_secs == 0 || self.max_secs == 0 || self.max_secs > 7 * 24 * 3600 {
            return Err("idle_secs and max_secs must be 1 to a week".into());
        }
        let size_ok = |v: Option<u16>| v.is_none_or(|v| (1..=1000).contains(&v));
        if !size_ok(self.cols) || !size_ok(self.rows) {
            return Err("cols and rows must be 1 to 1000".into());
        }
        match self.kind {
            SessionKind::Tunnel if self.port.is_none_or(|p| p == 0) => {
                return Err("a tunnel names the device port it reaches".into());
            }
            SessionKind::ReverseSsh => {
                let Some(r) = &self.reverse_ssh else {
                    return Err("a reverse SSH session names its bastion".into());
                };
                let word = |v: &str| {
                    !v.is_empty()
                        && v.len() <= 255
                        && !v.starts_with('-')
                        && !v.chars().any(|c| c.is_whitespace() || c == '@')
                };
                if !word(&r.host) || !word(&r.user) {
                    return Err("bastion host and user must be single words".into());
                }
                if r.port == 0 || r.target_port == 0 {
                    return Err("bastion port and target port must be set".into());
                }
                if r.private_key.len() > MAX_KEY
                    || r.known_host.len() > MAX_KEY
                    || r.known_host.contains('\n')
                {
                    return Err(format!("keys are at most {MAX_KEY} bytes, one line each"));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The result of a `remote_session` task: the session is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOpened {
    pub session: String,
    /// Reverse SSH: the port bound on the bastion's loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_port: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Data {
                channel: 3,
                offset: 1 << 40,
                bytes: b"hi\r\n".to_vec(),
            },
            Frame::Ack {
                channel: 0,
                consumed: 65536,
            },
            Frame::Open {
                channel: 7,
                port: 22,
            },
            Frame::Close {
                channel: 7,
                reason: "connection refused".into(),
            },
            Frame::Resize {
                cols: 132,
                rows: 43,
            },
            Frame::End {
                reason: "idle for 15 minutes".into(),
            },
        ];
        for f in frames {
            assert_eq!(Frame::decode(&f.encode()), Ok(f));
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        assert_eq!(Frame::decode(&[1, 0, 0]), Err(FrameError::Short(3)));
        assert_eq!(Frame::decode(&[9; HEADER]), Err(FrameError::UnknownKind(9)));
        let mut empty_data = Frame::Ack {
            channel: 0,
            consumed: 0,
        }
        .encode();
        empty_data[0] = DATA;
        assert_eq!(Frame::decode(&empty_data), Err(FrameError::EmptyData));
        let mut port = Frame::Open {
            channel: 1,
            port: 1,
        }
        .encode();
        port[5..HEADER].copy_from_slice(&70000u64.to_be_bytes());
        assert_eq!(Frame::decode(&port), Err(FrameError::BadPort(70000)));
        let huge = vec![DATA; MAX_FRAME + 1];
        assert!(matches!(Frame::decode(&huge), Err(FrameError::TooLarge(_))));
        let mut bad_utf8 = Frame::End { reason: "x".into() }.encode();
        bad_utf8.push(0xff);
        assert_eq!(Frame::decode(&bad_utf8), Err(FrameError::BadReason));
        let mut zero_size = Frame::Resize { cols: 1, rows: 1 }.encode();
        zero_size[5..HEADER].copy_from_slice(&0u64.to_be_bytes());
        assert_eq!(Frame::decode(&zero_size), Err(FrameError::BadSize));
    }

    #[test]
    fn long_reasons_are_cut_on_a_character() {
        let reason = "é".repeat(MAX_REASON);
        let Ok(Frame::End { reason: cut }) = Frame::decode(&Frame::End { reason }.encode()) else {
            panic!("an end frame");
        };
        assert!(cut.len() <= MAX_REASON && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn topics_parse() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parse_topic(&format!("sessions/{id}/out")),
            Some(Ok((id, Direction::Out)))
        );
        assert!(matches!(parse_topic("sessions/short/out"), Some(Err(_))));
        assert!(matches!(
            parse_topic(&format!("sessions/{id}/sideways")),
            Some(Err(_))
        ));
        assert_eq!(parse_topic("tasks/1"), None);
    }

    #[test]
    fn the_window_paces_a_sender_and_catches_an_overrun() {
        let mut send = SendWindow::new(8);
        let mut receive = ReceiveWindow::new(8);
        assert_eq!(send.room(), 8);
        let at = send.sent(6);
        receive.data(at, 6).expect("within the window");
        assert_eq!(send.room(), 2);
        // Not caught up to a quarter window yet? 4 of 6 consumed: due (≥ 2).
        let ack = receive.consumed(4).expect("a quarter window consumed");
        send.ack(ack).expect("a good ack");
        assert_eq!(send.room(), 6);
        // A sender that ignores its room is caught.
        assert!(matches!(receive.data(6, 7), Err(FlowError::Overrun { .. })));
        assert!(matches!(receive.data(9, 1), Err(FlowError::Gap { .. })));
        assert!(send.ack(7).is_err(), "an ack beyond what was sent");
    }

    #[test]
    fn an_idle_stream_is_acknowledged_in_full() {
        let mut receive = ReceiveWindow::new(1 << 20);
        receive.data(0, 10).expect("fits");
        assert_eq!(receive.consumed(10), Some(10));
        assert_eq!(receive.consumed(0), None);
    }

    #[test]
    fn session_parameters_are_bounded() {
        let mut s = RemoteSession {
            session: "0123456789abcdef0123456789abcdef".into(),
            kind: SessionKind::Tunnel,
            cols: None,
            rows: None,
            port: Some(22),
            window: TUNNEL_WINDOW,
            idle_secs: 900,
            max_secs: 3600,
            reverse_ssh: None,
        };
        assert_eq!(s.check(), Ok(()));
        s.port = None;
        assert!(s.check().is_err());
        s.kind = SessionKind::ReverseSsh;
        assert!(s.check().is_err());
        s.reverse_ssh = Some(ReverseSsh {
            host: "-oProxyCommand=x".into(),
            port: 22,
            user: "telemark".into(),
            private_key: String::new(),
            known_host: String::new(),
            target_port: 22,
        });
        assert!(s.check().is_err(), "a host that is an option");
    }

    proptest::proptest! {
        /// Whatever a device or a client sends, decoding answers without
        /// panicking, and what it accepts encodes back to the same bytes.
        #[test]
        fn any_bytes_decode_without_panic(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Ok(frame) = Frame::decode(&raw) {
                proptest::prop_assert_eq!(frame.encode(), raw);
            }
        }

        /// A receiver that acknowledges as it consumes never overruns a
        /// sender that keeps to its room, whatever the chunk sizes.
        #[test]
        fn windows_agree_for_any_chunking(window in 4096u32..65536, chunks in proptest::collection::vec(1usize..20_000, 1..50)) {
            let (mut send, mut receive) = (SendWindow::new(window), ReceiveWindow::new(window));
            for chunk in chunks {
                let n = chunk.min(send.room());
                if n == 0 {
                    proptest::prop_assert!(false, "a stalled window");
                }
                let at = send.sent(n);
                proptest::prop_assert!(receive.data(at, n).is_ok());
                if let Some(ack) = receive.consumed(n) {
                    proptest::prop_assert!(send.ack(ack).is_ok());
                }
            }
        }
    }
}
