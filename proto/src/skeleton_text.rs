//! The text form of skeleton trees, as [`Skeleton`]'s `Display` writes it:
//! `pipe(farm(seq(square), 4), map(8, seq(erf_burn(50))), reduce(sum))`.
//!
//! ```text
//! skel   := seq(kernel) | pipe(skel, ...) | farm(skel[, n][, unordered])
//!         | map(n, skel) | reduce(kernel) | feedback(skel, kernel[, rounds])
//! kernel := name | name(number, ...)
//! ```
//! Names are anything without spaces, commas or parentheses
//! (`erf_burn`, `wasm:ab12…:run`). Whitespace is free between tokens.

use crate::skeleton::{Kernel, Skeleton};
use std::str::FromStr;
use thiserror::Error;

/// Why a skeleton's text does not parse. Its message quotes the text, or
/// for a long text the part around the error (a peer's 60 KB skeleton is
/// not repeated whole in logs and errors).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("at character {at} of {}: expected {expected}", self.context())]
pub struct ParseError {
    /// The text.
    pub text: String,
    /// Character offset where parsing stopped.
    pub at: usize,
    /// What would have been valid there.
    pub expected: String,
}

impl ParseError {
    /// The text, quoted whole if short, else the 80 characters on either
    /// side of the error.
    fn context(&self) -> String {
        const SIDE: usize = 80;
        if self.text.chars().count() <= crate::text::QUOTED_MAX {
            return format!("{:?}", self.text);
        }
        let from = self.at.saturating_sub(SIDE);
        let window: String = self.text.chars().skip(from).take(2 * SIDE).collect();
        let len = self.text.len();
        format!("a text of {len} bytes, around it: {window:?}")
    }
}

/// Deepest nesting the parser accepts (deeper text is refused, not a
/// stack overflow).
pub const MAX_DEPTH: usize = 64;

struct Parser<'t> {
    text: &'t str,
    at: usize,
    depth: usize,
}

impl<'t> Parser<'t> {
    fn fail<T>(&self, expected: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            text: self.text.to_owned(),
            at: self.text[..self.at].chars().count(),
            expected: expected.into(),
        })
    }

    fn skip_space(&mut self) {
        let rest = &self.text[self.at..];
        self.at += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        if self.text[self.at..].starts_with(c) {
            self.at += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), ParseError> {
        if self.eat(c) {
            Ok(())
        } else {
            self.fail(format!("'{c}'"))
        }
    }

    fn word(&mut self) -> &'t str {
        self.skip_space();
        let rest = &self.text[self.at..];
        let n = rest
            .find(|c: char| c.is_whitespace() || "(),".contains(c))
            .unwrap_or(rest.len());
        self.at += n;
        &rest[..n]
    }

    fn number(&mut self) -> Result<f64, ParseError> {
        let start = self.at;
        match self.word().parse::<f64>() {
            Ok(v) => Ok(v),
            Err(_) => {
                self.at = start;
                self.skip_space();
                self.fail("a number")
            }
        }
    }

    fn count(&mut self, what: &str) -> Result<u32, ParseError> {
        let start = self.at;
        match self.word().parse::<u32>() {
            Ok(v) => Ok(v),
            Err(_) => {
                self.at = start;
                self.skip_space();
                self.fail(format!("{what} (a whole number)"))
            }
        }
    }

    fn kernel(&mut self) -> Result<Kernel, ParseError> {
        let name = self.word();
        if name.is_empty() {
            return self.fail("a kernel name");
        }
        let mut args = Vec::new();
        if self.eat('(') {
            loop {
                args.push(self.number()?);
                if !self.eat(',') {
                    break;
                }
            }
            self.expect(')')?;
        }
        Ok(Kernel {
            name: name.to_owned(),
            args,
        })
    }

    fn skeleton(&mut self) -> Result<Skeleton, ParseError> {
        if self.depth >= MAX_DEPTH {
            return self.fail(format!("at most {MAX_DEPTH} nested skeletons"));
        }
        self.depth += 1;
        let skel = self.skeleton_at_depth();
        self.depth -= 1;
        skel
    }

    fn skeleton_at_depth(&mut self) -> Result<Skeleton, ParseError> {
        let start = self.at;
        let head = self.word();
        let known = ["seq", "pipe", "farm", "map", "reduce", "feedback"];
        if !known.contains(&head) {
            self.at = start;
            self.skip_space();
            return self.fail(format!("a skeleton ({})", known.join(", ")));
        }
        self.expect('(')?;
        let skel = match head {
            "seq" => Skeleton::Seq(self.kernel()?),
            "reduce" => Skeleton::Reduce(self.kernel()?),
            "pipe" => {
                let mut stages = vec![self.skeleton()?];
                while self.eat(',') {
                    stages.push(self.skeleton()?);
                }
                Skeleton::Pipe(stages)
            }
            "farm" => {
                let worker = Box::new(self.skeleton()?);
                let (mut replicas, mut ordered) = (None, true);
                while self.eat(',') {
                    let start = self.at;
                    match self.word() {
                        "unordered" => ordered = false,
                        "ordered" => ordered = true,
                        w => match w.parse::<u32>() {
                            Ok(n) if n > 0 => replicas = Some(n),
                            _ => {
                                self.at = start;
                                self.skip_space();
                                return self.fail("a replica count > 0, 'ordered' or 'unordered'");
                            }
                        },
                    }
                }
                Skeleton::Farm {
                    worker,
                    replicas,
                    ordered,
                }
            }
            "map" => {
                let parts = self.count("the number of parts")?;
                self.expect(',')?;
                Skeleton::map(parts, self.skeleton()?)
            }
            _ => {
                let body = self.skeleton()?;
                self.expect(',')?;
                let mut skel = Skeleton::feedback(body, self.kernel()?);
                if self.eat(',') {
                    let rounds = self.count("the most rounds")?;
                    if rounds == 0 {
                        return self.fail("at least 1 round");
                    }
                    if let Skeleton::Feedback { max_rounds, .. } = &mut skel {
                        *max_rounds = rounds;
                    }
                }
                skel
            }
        };
        self.expect(')')?;
        Ok(skel)
    }
}

impl FromStr for Skeleton {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Skeleton, ParseError> {
        let mut p = Parser {
            text,
            at: 0,
            depth: 0,
        };
        let skel = p.skeleton()?;
        p.skip_space();
        if p.at < text.len() {
            return p.fail("the end of the skeleton");
        }
        Ok(skel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_agree() {
        for text in [
            "seq(square)",
            "pipe(farm(seq(square), 4), map(8, seq(erf_burn(50))), reduce(sum))",
            "farm(pipe(seq(scale(-0.5)), seq(identity)), unordered)",
            "farm(seq(sleep_ms(3)), 2, unordered)",
            "feedback(map(2, seq(scale(0.5))), above(1), 7)",
            "seq(wasm:ab12:run(1, 2.5))",
        ] {
            let skel: Skeleton = text.parse().unwrap();
            assert_eq!(skel.to_string(), text);
            assert_eq!(skel.to_string().parse::<Skeleton>().unwrap(), skel);
        }
        let deep = (0..100).fold("seq(x)".to_owned(), |t, _| format!("pipe({t})"));
        assert!(
            deep.parse::<Skeleton>()
                .unwrap_err()
                .expected
                .contains("nested")
        );
        let spaced: Skeleton = " pipe ( seq( square ) ,seq(sum) ) ".parse().unwrap();
        assert_eq!(spaced.to_string(), "pipe(seq(square), seq(sum))");
    }

    #[test]
    fn errors_say_where_and_what() {
        let cases = [
            ("pipe(seq(square)", 16, "')'"),
            ("farm(seq(x), 0)", 13, "replica count"),
            ("map(two, seq(x))", 4, "number of parts"),
            ("sq(x)", 0, "a skeleton"),
            ("seq(f(1, a))", 9, "a number"),
            ("seq(x) seq(y)", 7, "the end"),
            ("seq()", 4, "a kernel name"),
            ("feedback(seq(x), y, 0)", 21, "at least 1 round"),
        ];
        for (text, at, expected) in cases {
            let e = text.parse::<Skeleton>().unwrap_err();
            assert_eq!(e.at, at, "{text}: {e}");
            assert!(e.expected.contains(expected), "{text}: {e}");
        }
    }
}
