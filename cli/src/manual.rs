//! Documents generated from the command-line definition itself, so they never drift
//! from it: shell completion scripts (`ferry completions SHELL`) and the roff manual
//! page (`ferry man`). Neither needs a node.

use std::io::Write as _;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::args::Cli;

/// Writes the completion script for `shell` to stdout.
pub(crate) fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut out);
    write_out(&out)
}

/// Writes the manual page (roff, section 1) to stdout.
pub(crate) fn man() -> anyhow::Result<()> {
    write_out(&man_page()?)
}

fn man_page() -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out).context("cannot render the man page")?;
    Ok(out)
}

fn write_out(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes).and_then(|()| stdout.flush()).context("cannot write to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_know_the_nouns_and_verbs() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut out);
            let text = String::from_utf8_lossy(&out);
            for word in ["transfer", "take-ownership", "--min-retry-delay", "completions"] {
                assert!(text.contains(word), "{shell:?} completion lacks {word}");
            }
        }
    }

    #[test]
    fn the_man_page_is_roff_with_the_exit_codes() -> anyhow::Result<()> {
        let page = String::from_utf8(man_page()?)?;
        assert!(page.starts_with(".ie") || page.contains(".TH ferry"), "{}", &page[..200]);
        assert!(page.contains("Exit codes") && page.contains("access denied"));
        Ok(())
    }
}
