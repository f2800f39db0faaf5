//! A YAML stream cut into its documents, each kept as the text it was written in. A
//! document `spoke inject` does not change goes out byte for byte as it came in (comments
//! and formatting included); only a changed one is re-written from its parsed value. That
//! is also what makes injecting twice a no-op: the second pass changes nothing, so it
//! writes back exactly what it read.

use super::value::Value;

/// One document of the stream: the separator line before it (`---...`, empty for the
/// first) and its text.
pub struct Piece {
    pub separator: String,
    pub text: String,
    /// The line (1-based) of the stream where `text` starts.
    pub first_line: usize,
}

impl Piece {
    /// Whether the document holds nothing but blank lines and comments (it is passed
    /// through and not counted as a document).
    pub fn is_blank(&self) -> bool {
        self.text.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || t == "..."
        })
    }
}

/// Whether `line` starts a new document: `---` at column 0, alone or followed by a space.
fn is_separator(line: &str) -> bool {
    let line = line.trim_end_matches(['\r', '\n']);
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

/// Cuts `text` at its document separators.
pub fn split(text: &str) -> Vec<Piece> {
    let mut pieces = vec![Piece {
        separator: String::new(),
        text: String::new(),
        first_line: 1,
    }];
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if is_separator(line) {
            pieces.push(Piece {
                separator: line.to_string(),
                text: String::new(),
                first_line: i + 2,
            });
        } else if let Some(last) = pieces.last_mut() {
            last.text.push_str(line);
        }
    }
    pieces
}

/// Parses one document; an error is placed at its line in the whole stream.
///
/// Scalars are read as Kubernetes reads them (its YAML library is YAML 1.1): `yes`/`no`/
/// `on`/`off` are booleans, and `0644` is octal (420), as `defaultMode: 0644` means. A
/// changed document is written back with the same values, though not always the same
/// spelling (`0644` comes back as `420`).
pub fn parse(piece: &Piece) -> Result<Value, String> {
    let mut options = serde_saphyr::Options::default();
    options.legacy_octal_numbers = true;
    serde_saphyr::from_str_with_options::<Value>(&piece.text, options).map_err(|e| {
        let inner = e.without_snippet();
        let message = inner.to_string();
        let message = message.lines().next().unwrap_or("invalid YAML");
        // The parser counts lines from the document's start; the stream's line is given
        // in front instead.
        let message = message.split(" at line ").next().unwrap_or(message);
        match e.location() {
            Some(at) if at.line() > 0 => format!(
                "line {}, column {}: invalid YAML: {message}",
                piece.first_line + at.line() as usize - 1,
                at.column()
            ),
            _ => format!("invalid YAML: {message}"),
        }
    })
}

/// Writes a changed document back as YAML, ending in a newline.
pub fn emit(value: &Value) -> Result<String, String> {
    let mut text = serde_saphyr::to_string(value).map_err(|e| e.to_string())?;
    if let Some(rest) = text.strip_prefix("---\n") {
        text = rest.to_string();
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// Puts the pieces back together in their order.
pub fn join<'a>(pieces: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (separator, text) in pieces {
        out.push_str(separator);
        out.push_str(text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_join_give_back_the_input() {
        let text = "# head\na: 1\n---\nb: 2\n--- # c\nc: |\n  ---x\n";
        let pieces = split(text);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[1].first_line, 4);
        assert_eq!(pieces[2].text, "c: |\n  ---x\n");
        let back = join(
            pieces
                .iter()
                .map(|p| (p.separator.as_str(), p.text.as_str())),
        );
        assert_eq!(back, text);
        assert!(split("---\n")[0].is_blank());
    }
}
