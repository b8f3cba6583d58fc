//! Text from peers, made safe to log and to quote in errors: never longer
//! than a bound, so a 1 MiB kernel name or skeleton cannot become a 1 MiB
//! log line or error message.

use std::borrow::Cow;

/// Characters of a peer's text quoted in a log line or an error.
pub const QUOTED_MAX: usize = 200;

/// Characters of a whole message built around peer text (an error that
/// quotes a kernel name and lists what the agent has, say).
pub const MESSAGE_MAX: usize = 600;

/// `text`, cut to at most `max` characters (on a character boundary) with
/// what was left out said: `abc… (1048000 more bytes)`.
///
/// # Examples
/// ```
/// use skelpi_proto::text::clip;
/// assert_eq!(clip("square", 200), "square");
/// assert_eq!(clip(&"x".repeat(1000), 3), "xxx… (997 more bytes)");
/// ```
pub fn clip(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!(
            "{}… ({} more bytes)",
            &text[..cut],
            text.len() - cut
        )),
    }
}

/// [`clip`] to [`QUOTED_MAX`] characters.
pub fn quoted(text: &str) -> Cow<'_, str> {
    clip(text, QUOTED_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_character_boundaries_and_says_how_much() {
        assert_eq!(clip("", 0), "");
        assert_eq!(clip("ab", 2), "ab");
        assert_eq!(clip("héllo", 2), "hé… (3 more bytes)");
        let long = quoted(&"k".repeat(1 << 20)).into_owned();
        assert!(long.starts_with(&"k".repeat(200)) && long.ends_with("… (1048376 more bytes)"));
    }
}
