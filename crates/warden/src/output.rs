//! Human tables and machine JSON.

use std::io::Write;

/// Prints rows as aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let _ = std::io::stdout()
        .lock()
        .write_all(render_table(header, rows).as_bytes());
}

/// Rows as aligned columns under a header, one line each.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                s.push_str(c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        format!("{}\n", s.trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub fn json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot render JSON: {e}"),
    }
}

/// Bidirectional-text controls: they reorder what a terminal shows (a name can read as another).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A table cell from text that came from a job or the server: every control character (a
/// newline that would forge a row, an escape sequence that would drive the terminal) and every
/// bidi control is shown escaped (`\n`, `\u{1b}`, `\u{202e}`), so the cell is one visible line.
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || is_bidi_control(c) {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A job's output made safe for a terminal: lines and tabs pass, every other control
/// character (escape sequences that set the title, clear the screen or move the cursor; a bare
/// `\r` that overwrites a line to fake "job succeeded") and every bidi control is shown in
/// caret or `\u{..}` notation. `\r\n` line ends stay line ends.
pub fn neutralize_terminal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' if chars.peek() == Some(&'\n') => {}
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push('^');
                out.push(char::from_u32((c as u32) ^ 0x40).unwrap_or('?'));
            }
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_one_visible_line() {
        assert_eq!(sanitize("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(sanitize("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(sanitize("evil\u{202e}fdp.exe"), "evil\\u{202e}fdp.exe");
        assert_eq!(sanitize("plain/path-ü.txt"), "plain/path-ü.txt");
    }

    #[test]
    fn job_output_cannot_drive_the_terminal() {
        assert_eq!(
            neutralize_terminal("\u{1b}]0;owned\u{7}title"),
            "^[]0;owned^Gtitle"
        );
        assert_eq!(
            neutralize_terminal("fail\r\u{1b}[Kjob succeeded\n"),
            "fail^M^[[Kjob succeeded\n"
        );
        assert_eq!(
            neutralize_terminal("dos line\r\nnext\n"),
            "dos line\nnext\n"
        );
        assert_eq!(
            neutralize_terminal("\u{9b}2J \u{2066}x"),
            "\\u{9b}2J \\u{2066}x"
        );
    }
}
