//! Splits an expression into words, operators and parentheses, each with
//! its column.

use super::error;
use super::FilterError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tok {
    Word,
    LParen,
    RParen,
    And,
    Or,
    Not,
    End,
}

#[derive(Clone, Debug)]
pub(super) struct Token {
    pub(super) tok: Tok,
    /// As the user wrote it, for messages.
    pub(super) text: String,
    /// 1-based character column.
    pub(super) col: usize,
}

/// Splits on whitespace and the operator characters. Everything else is
/// one word, so addresses with ':' '/' '.' and ranges with '-' stay whole
/// and the parser decides what they are.
pub(super) fn lex(expr: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = expr.chars().collect();
    let is_operator = |c: char| matches!(c, '(' | ')' | '!' | '&' | '|');
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let (tok, len) = match c {
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            '!' => (Tok::Not, 1),
            '&' | '|' => {
                if chars.get(i + 1) != Some(&c) {
                    let word = if c == '&' { "and" } else { "or" };
                    return Err(error(
                        col,
                        format!("unexpected '{c}'; write '{c}{c}' or '{word}'"),
                    ));
                }
                (if c == '&' { Tok::And } else { Tok::Or }, 2)
            }
            _ => {
                let len = chars[i..]
                    .iter()
                    .take_while(|&&c| !c.is_whitespace() && !is_operator(c))
                    .count();
                let word: String = chars[i..i + len].iter().collect();
                let tok = match word.to_ascii_lowercase().as_str() {
                    "and" => Tok::And,
                    "or" => Tok::Or,
                    "not" => Tok::Not,
                    _ => Tok::Word,
                };
                (tok, len)
            }
        };
        out.push(Token {
            tok,
            text: chars[i..i + len].iter().collect(),
            col,
        });
        i += len;
    }
    // Errors at the end point just past the last character typed.
    let end = out.last().map_or(1, |t| t.col + t.text.chars().count());
    out.push(Token {
        tok: Tok::End,
        text: String::new(),
        col: end,
    });
    Ok(out)
}
