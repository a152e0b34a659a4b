//! A simulated device's terminal: a small BusyBox-like shell that echoes
//! what is typed and answers a few commands, so the demo's Terminal tab
//! works without a real router. It speaks the session frames of
//! `device_protocol::session` like the agent: it acknowledges what it
//! consumes and numbers what it sends.

use std::collections::HashMap;

use device_protocol::session::{self, Frame, MAX_DATA};

use crate::sim_tasks::SHELL;

const PROMPT: &str = "root@router:~# ";

/// One open terminal.
struct SimShell {
    /// Bytes sent (the next output's offset).
    sent: u64,
    /// Bytes received and consumed.
    received: u64,
    line: String,
    cols: u16,
    rows: u16,
}

/// The terminals of one simulated device.
#[derive(Default)]
pub(crate) struct SimShells {
    open: HashMap<String, SimShell>,
}

impl SimShells {
    /// Opens a terminal; returns the frames it starts with (banner, prompt).
    pub(crate) fn open(&mut self, id: &str, cols: u16, rows: u16, firmware: &str) -> Vec<Vec<u8>> {
        if self.open.len() >= 4 {
            return Vec::new();
        }
        let mut shell = SimShell {
            sent: 0,
            received: 0,
            line: String::new(),
            cols,
            rows,
        };
        let banner = format!(
            "\r\nBusyBox v1.36.1 built-in shell (ash) — simulated router, firmware {firmware}\r\n\
             Type 'help' for the commands this simulation knows.\r\n\r\n{PROMPT}"
        );
        let frames = shell.output(banner.as_bytes());
        self.open.insert(id.to_owned(), shell);
        frames
    }

    #[cfg(test)]
    pub(crate) fn is_open(&self, id: &str) -> bool {
        self.open.contains_key(id)
    }

    /// A frame from the platform; returns the frames to answer with.
    pub(crate) fn input(&mut self, id: &str, payload: &[u8]) -> Vec<Vec<u8>> {
        let frame = Frame::decode(payload);
        let Some(shell) = self.open.get_mut(id) else {
            return match frame {
                Ok(Frame::End { .. }) => Vec::new(),
                _ => vec![
                    Frame::End {
                        reason: "the device has no such session".into(),
                    }
                    .encode(),
                ],
            };
        };
        match frame {
            Ok(Frame::Data { offset, bytes, .. }) if offset == shell.received => {
                shell.received += bytes.len() as u64;
                let mut out = Vec::new();
                let mut ended = false;
                for c in String::from_utf8_lossy(&bytes).chars() {
                    match c {
                        '\r' | '\n' => {
                            out.extend_from_slice(b"\r\n");
                            let line = std::mem::take(&mut shell.line);
                            match shell.run(line.trim()) {
                                Some(answer) => out.extend_from_slice(answer.as_bytes()),
                                None => ended = true,
                            }
                            if ended {
                                break;
                            }
                            out.extend_from_slice(PROMPT.as_bytes());
                        }
                        '\u{7f}' | '\u{8}' if shell.line.pop().is_some() => {
                            out.extend_from_slice(b"\x08 \x08");
                        }
                        '\u{3}' => {
                            shell.line.clear();
                            out.extend_from_slice(b"^C\r\n");
                            out.extend_from_slice(PROMPT.as_bytes());
                        }
                        c if !c.is_control() && shell.line.len() < 1024 => {
                            shell.line.push(c);
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => {}
                    }
                }
                let mut frames = vec![
                    Frame::Ack {
                        channel: 0,
                        consumed: shell.received,
                    }
                    .encode(),
                ];
                frames.extend(shell.output(&out));
                if ended {
                    self.open.remove(id);
                    frames.push(
                        Frame::End {
                            reason: "the shell exited".into(),
                        }
                        .encode(),
                    );
                }
                frames
            }
            Ok(Frame::Resize { cols, rows }) => {
                shell.cols = cols;
                shell.rows = rows;
                Vec::new()
            }
            Ok(Frame::Ack { .. }) => Vec::new(),
            Ok(Frame::End { .. }) => {
                self.open.remove(id);
                Vec::new()
            }
            _ => {
                self.open.remove(id);
                vec![
                    Frame::End {
                        reason: "the device received a frame it cannot take".into(),
                    }
                    .encode(),
                ]
            }
        }
    }
}

impl SimShell {
    /// Data frames carrying `bytes`, numbered from what was sent before.
    fn output(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        bytes
            .chunks(MAX_DATA)
            .map(|chunk| {
                let offset = self.sent;
                self.sent += chunk.len() as u64;
                Frame::Data {
                    channel: 0,
                    offset,
                    bytes: chunk.to_vec(),
                }
                .encode()
            })
            .collect()
    }

    /// A command's output (CR-LF lines); None for `exit`.
    fn run(&self, line: &str) -> Option<String> {
        let crlf = |s: &str| s.replace('\n', "\r\n");
        let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
        Some(match command {
            "" => String::new(),
            "exit" | "logout" => return None,
            "help" => {
                crlf("commands: help, echo, uname, uptime, df -h, ip addr, stty size, date, exit\n")
            }
            "echo" => crlf(&format!("{rest}\n")),
            "uname" => crlf("Linux router 5.15.137 #0 SMP armv7l GNU/Linux\n"),
            "date" => crlf(&format!("{}\n", crate::now_millis() / 1000)),
            "stty" if rest == "size" => crlf(&format!("{} {}\n", self.rows, self.cols)),
            _ => match SHELL.iter().find(|(c, _)| *c == line) {
                Some((_, output)) => crlf(output),
                None => crlf(&format!("-ash: {command}: not found\n")),
            },
        })
    }
}

/// The session id of a session topic suffix, if it is platform input.
pub(crate) fn input_session(suffix: &str) -> Option<&str> {
    match session::parse_topic(suffix) {
        Some(Ok((id, session::Direction::In))) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frames: &[Vec<u8>]) -> String {
        frames
            .iter()
            .filter_map(|f| match Frame::decode(f) {
                Ok(Frame::Data { bytes, .. }) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_simulated_shell_echoes_and_answers() {
        let mut shells = SimShells::default();
        let id = "0123456789abcdef0123456789abcdef";
        assert!(text(&shells.open(id, 80, 24, "2.1.4")).ends_with(PROMPT));
        let typed = Frame::Data {
            channel: 0,
            offset: 0,
            bytes: b"echo hi\r".to_vec(),
        }
        .encode();
        let answer = text(&shells.input(id, &typed));
        assert!(answer.starts_with("echo hi\r\nhi\r\n"), "{answer:?}");
        let exit = Frame::Data {
            channel: 0,
            offset: 8,
            bytes: b"exit\r".to_vec(),
        }
        .encode();
        let frames = shells.input(id, &exit);
        assert!(matches!(
            frames.last().map(|f| Frame::decode(f)),
            Some(Ok(Frame::End { .. }))
        ));
        assert!(!shells.is_open(id));
    }
}
