//! Reading a password: from a terminal, a prompt that does not echo what is typed;
//! otherwise one line of standard input (a pipe or a file). Never an argument, which
//! other users could read from the process table.
//!
//! On a terminal, echo goes off before the prompt is written (as sudo does), so nothing
//! typed once the prompt shows is echoed, and the terminal's settings come back however
//! the prompt ends: Enter, Ctrl-C, Ctrl-D or an error.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, IsTerminal as _, Read as _, Write as _};

use anyhow::{Context as _, bail};
use ferry_protocol::credentials::Secret;
use rustix::termios::{self, LocalModes, OptionalActions, SpecialCodeIndex, Termios};

/// The password: prompted for without echo on a terminal, else one line from stdin.
pub(crate) fn read_password() -> anyhow::Result<Secret> {
    let line = if io::stdin().is_terminal() {
        prompt("Password: ").context("cannot read the password")?
    } else {
        let mut line = String::new();
        io::stdin().lock().read_line(&mut line).context("cannot read the password from stdin")?;
        line
    };
    secret(&line)
}

/// The password of one line of input, without its line end; refused when empty.
fn secret(line: &str) -> anyhow::Result<Secret> {
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("no password given (type it at the prompt, or pipe it to stdin)");
    }
    Ok(Secret::new(password))
}

/// Writes `text` to the controlling terminal and reads one line typed there, echoing
/// nothing. Ctrl-C restores the terminal, then interrupts the process as it would
/// have without the prompt.
fn prompt(text: &str) -> io::Result<String> {
    let tty = OpenOptions::new().read(true).write(true).open("/dev/tty")?;
    let typed = {
        let _quiet = Quiet::on(&tty)?;
        (&tty).write_all(text.as_bytes())?;
        read_line(&tty)
    };
    (&tty).write_all(b"\n")?;
    if typed.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::Interrupted) {
        // Ends the process if SIGINT's default action is in place; else the error does.
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::INT);
    }
    let typed = typed?;
    String::from_utf8(typed).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// The terminal with echo, line editing and signal keys off, until dropped.
struct Quiet<'t> {
    tty: &'t File,
    before: Termios,
}

impl<'t> Quiet<'t> {
    fn on(tty: &'t File) -> io::Result<Self> {
        let before = termios::tcgetattr(tty)?;
        let mut quiet = before.clone();
        quiet.local_modes -=
            LocalModes::ECHO | LocalModes::ECHONL | LocalModes::ICANON | LocalModes::ISIG;
        quiet.special_codes[SpecialCodeIndex::VMIN] = 1;
        quiet.special_codes[SpecialCodeIndex::VTIME] = 0;
        termios::tcsetattr(tty, OptionalActions::Now, &quiet)?;
        Ok(Self { tty, before })
    }
}

impl Drop for Quiet<'_> {
    fn drop(&mut self) {
        // Nothing more can be done if the terminal refuses its own settings back.
        let _ = termios::tcsetattr(self.tty, OptionalActions::Now, &self.before);
    }
}

/// Reads keys from `tty` until Enter (or the end of input): the line typed.
fn read_line(mut tty: &File) -> io::Result<Vec<u8>> {
    let mut line = Line::default();
    let mut key = [0u8; 1];
    loop {
        if tty.read(&mut key)? == 0 {
            return Ok(line.typed);
        }
        match line.key(key[0]) {
            Key::More => {}
            Key::Enter => return Ok(line.typed),
            Key::Interrupt => {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
            }
            Key::End => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "end of input")),
        }
    }
}

/// A line being typed with the usual editing keys.
#[derive(Default)]
struct Line {
    typed: Vec<u8>,
    /// Within an escape sequence (an arrow key, say): its bytes are dropped.
    escape: Escape,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    /// ESC seen.
    Start,
    /// ESC [ or ESC O seen: up to a final byte.
    Sequence,
}

/// What a key did to the line.
#[derive(Debug, PartialEq, Eq)]
enum Key {
    More,
    Enter,
    /// Ctrl-C.
    Interrupt,
    /// Ctrl-D on an empty line.
    End,
}

impl Line {
    fn key(&mut self, byte: u8) -> Key {
        match (self.escape, byte) {
            (Escape::Start, b'[' | b'O') => self.escape = Escape::Sequence,
            (Escape::Start, _) => self.escape = Escape::None,
            (Escape::Sequence, 0x40..=0x7e) => self.escape = Escape::None,
            (Escape::Sequence, _) => {}
            (Escape::None, b'\r' | b'\n') => return Key::Enter,
            (Escape::None, 0x03) => return Key::Interrupt,
            (Escape::None, 0x04) if self.typed.is_empty() => return Key::End,
            (Escape::None, 0x08 | 0x7f) => {
                // One character, however many bytes it took.
                while self.typed.pop().is_some_and(|b| b & 0xc0 == 0x80) {}
            }
            (Escape::None, 0x15) => self.typed.clear(),
            (Escape::None, 0x1b) => self.escape = Escape::Start,
            (Escape::None, 0x00..=0x1f) => {}
            (Escape::None, _) => self.typed.push(byte),
        }
        Key::More
    }
}

#[cfg(test)]
mod tests {
    use super::{Key, Line, secret};

    #[test]
    fn line_ends_are_not_part_of_the_password() -> anyhow::Result<()> {
        assert_eq!(secret("hunter2\r\n")?.expose(), "hunter2");
        assert_eq!(secret(" spaced \n")?.expose(), " spaced ");
        assert!(secret("\n").is_err());
        Ok(())
    }

    /// The line `keys` leave, and what the last key did.
    fn typed(keys: &[u8]) -> (String, Key) {
        let mut line = Line::default();
        let mut last = Key::More;
        for &key in keys {
            last = line.key(key);
        }
        (String::from_utf8_lossy(&line.typed).into_owned(), last)
    }

    #[test]
    fn editing_keys_edit_the_hidden_line() {
        assert_eq!(typed(b"pass\x7f\x7fss\r"), ("pass".into(), Key::Enter));
        assert_eq!(typed("pé\x08\x08x\r".as_bytes()), ("x".into(), Key::Enter));
        assert_eq!(typed(b"wrong\x15right\n"), ("right".into(), Key::Enter));
        assert_eq!(typed(b"a\x1b[Db\x1bOCc\r"), ("abc".into(), Key::Enter));
        assert_eq!(typed(b"\x01\tpw\r"), ("pw".into(), Key::Enter));
    }

    #[test]
    fn ctrl_c_interrupts_and_ctrl_d_ends_only_an_empty_line() {
        assert_eq!(typed(b"half\x03").1, Key::Interrupt);
        assert_eq!(typed(b"\x04").1, Key::End);
        assert_eq!(typed(b"pw\x04"), ("pw".into(), Key::More));
    }
}
