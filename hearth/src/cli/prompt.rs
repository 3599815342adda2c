//! The terminal's [`ConsentPrompt`]: asks on stderr, reads the answer from stdin, and only
//! when both are a terminal and the command is interactive. Anywhere else (a script, a pipe,
//! `--json`) it answers no without asking, so default deny holds.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use async_trait::async_trait;
use hearth::consent::{ConsentRequest, DenyReason};
use hearth::privacy::{PromptAnswer, PromptContext};
use hearth::{ConsentPrompt, Error, ErrorKind, Result};

/// Asks the user on the terminal whether data may leave the device.
#[derive(Debug, Clone, Copy)]
pub struct TerminalPrompt {
    interactive: bool,
}

impl TerminalPrompt {
    /// A prompt that asks only when `interactive` (not `--json`, not `-q`) and stdin and stderr
    /// are terminals; otherwise every request is denied without asking.
    pub fn new(interactive: bool) -> Self {
        Self {
            interactive: interactive
                && std::io::stdin().is_terminal()
                && std::io::stderr().is_terminal(),
        }
    }
}

impl TerminalPrompt {
    /// Whether it would ask a person (otherwise it answers no by itself).
    pub fn asks(&self) -> bool {
        self.interactive
    }
}

/// The question, naming exactly what would leave, why and to where.
pub fn question(request: &ConsentRequest, previous: DenyReason) -> String {
    let why = match previous {
        DenyReason::Expired => " (your earlier consent has ended)",
        _ => "",
    };
    format!(
        "hearth wants to send {} for {} to {}{why}.\n\
         Allow? [y]es until revoked, [o]nce, a duration (e.g. 30d), or [N]o: ",
        request.data_type, request.purpose, request.destination
    )
}

/// Reads an answer: `y`/`yes` allows until revoked, `o`/`once` allows this once, a duration
/// (`30d`, `12h`) allows until then, anything else (including an empty line) is no.
pub fn parse_answer(line: &str, now: u64) -> PromptAnswer {
    let answer = line.trim().to_ascii_lowercase();
    match answer.as_str() {
        "y" | "yes" => PromptAnswer::Allow { expires_at: None },
        "o" | "once" => PromptAnswer::AllowOnce,
        _ => match humantime::parse_duration(&answer) {
            Ok(d) if d > Duration::ZERO => {
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                PromptAnswer::Allow {
                    expires_at: Some(now.saturating_add(ms)),
                }
            }
            _ => PromptAnswer::Deny,
        },
    }
}

/// Writes the question to `output` and reads one line of answer from `input`.
fn exchange(
    question: &str,
    input: &mut dyn BufRead,
    output: &mut dyn Write,
) -> std::io::Result<String> {
    output.write_all(question.as_bytes())?;
    output.flush()?;
    let mut line = String::new();
    input.read_line(&mut line)?;
    Ok(line)
}

#[async_trait]
impl ConsentPrompt for TerminalPrompt {
    async fn ask(&self, request: &ConsentRequest, context: PromptContext) -> Result<PromptAnswer> {
        if !self.interactive {
            return Ok(PromptAnswer::Deny);
        }
        let text = question(request, context.previous);
        let line = tokio::task::spawn_blocking(move || {
            exchange(
                &text,
                &mut std::io::stdin().lock(),
                &mut std::io::stderr().lock(),
            )
        })
        .await
        .map_err(|e| Error::internal("the prompt task failed").with_source(e))?
        .map_err(|e| Error::new(ErrorKind::Io, "cannot read the answer").with_source(e))?;
        Ok(parse_answer(&line, context.now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_and_anything_unclear_is_no() {
        let now = 1_000_000;
        assert_eq!(
            parse_answer("y\n", now),
            PromptAnswer::Allow { expires_at: None }
        );
        assert_eq!(
            parse_answer(" YES ", now),
            PromptAnswer::Allow { expires_at: None }
        );
        assert_eq!(parse_answer("once", now), PromptAnswer::AllowOnce);
        assert_eq!(parse_answer("o", now), PromptAnswer::AllowOnce);
        assert_eq!(
            parse_answer("2h", now),
            PromptAnswer::Allow {
                expires_at: Some(now + 2 * 3600 * 1000)
            }
        );
        for no in ["", "\n", "n", "no", "maybe", "yess", "0s", "-1d", "ja"] {
            assert_eq!(parse_answer(no, now), PromptAnswer::Deny, "{no:?}");
        }
    }

    #[test]
    fn the_exchange_asks_then_reads_one_line() {
        let mut input = std::io::Cursor::new(b"30d\nyes\n".to_vec());
        let mut output = Vec::new();
        let line = exchange("may I? ", &mut input, &mut output).expect("exchange");
        assert_eq!(output, b"may I? ");
        assert_eq!(
            parse_answer(&line, 0),
            PromptAnswer::Allow {
                expires_at: Some(30 * 24 * 3600 * 1000)
            }
        );
        // End of input (Ctrl-D) is an empty answer: no.
        let line = exchange(
            "again? ",
            &mut std::io::Cursor::new(Vec::new()),
            &mut Vec::new(),
        )
        .expect("exchange");
        assert_eq!(parse_answer(&line, 0), PromptAnswer::Deny);
    }

    #[test]
    fn the_question_names_what_why_and_where() {
        let request = ConsentRequest::new("usage-stats", "improve-model", "telemetry");
        let q = question(&request, DenyReason::Expired);
        assert!(
            q.contains("usage-stats") && q.contains("improve-model") && q.contains("telemetry")
        );
        assert!(q.contains("ended"));
        assert!(!question(&request, DenyReason::NoGrant).contains("ended"));
    }
}
