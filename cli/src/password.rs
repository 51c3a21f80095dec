//! Reading a password: from a terminal, a prompt that does not echo what is typed;
//! otherwise one line of standard input (a pipe or a file). Never an argument, which
//! other users could read from the process table.

use std::io::{BufRead as _, IsTerminal as _};

use anyhow::{Context as _, bail};
use ferry_protocol::credentials::Secret;

/// The password: prompted for without echo on a terminal, else one line from stdin.
pub(crate) fn read_password() -> anyhow::Result<Secret> {
    let line = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("Password: ").context("cannot read the password")?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
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

#[cfg(test)]
mod tests {
    use super::secret;

    #[test]
    fn line_ends_are_not_part_of_the_password() -> anyhow::Result<()> {
        assert_eq!(secret("hunter2\r\n")?.expose(), "hunter2");
        assert_eq!(secret(" spaced \n")?.expose(), " spaced ");
        assert!(secret("\n").is_err());
        Ok(())
    }
}
