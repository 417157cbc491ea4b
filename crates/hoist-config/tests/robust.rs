//! Hostile and mangled app files (reliability F3/F4): thousands of deterministic mutations
//! of real app files must each end in a spec or in diagnostics that point inside the file,
//! never in a panic. A cheap, always-run companion to the fuzz target.

use std::path::Path;

/// xorshift64*: deterministic, so a failure reproduces from its iteration number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const PIECES: &[&str] = &[
    "\"",
    "'",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    ",",
    ".",
    "\n",
    "#",
    "\\",
    "0",
    "-1",
    "1e400",
    "true",
    "\"30s\"",
    "\"5 m\"",
    "\"512\"",
    "\"*/0 * * * *\"",
    "replica",
    "[services.x]",
    "[[hosts]]",
    "é",
    "\u{0}",
    "\t",
    "\r\n",
    "9999999999999999999999",
    "inf",
    "nan",
    "1979-05-27T07:32:00Z",
];

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..=rng.below(3) {
        let at = rng.below(chars.len() + 1);
        match rng.below(4) {
            0 => {
                let end = (at + rng.below(12)).min(chars.len());
                chars.drain(at..end);
            }
            1 | 2 => {
                let piece = PIECES[rng.below(PIECES.len())];
                chars.splice(at..at, piece.chars());
            }
            _ => {
                // Duplicate a line elsewhere: duplicate keys and tables.
                let s: String = chars.iter().collect();
                let lines: Vec<&str> = s.lines().collect();
                let line = lines[rng.below(lines.len())].to_string();
                chars.splice(at..at, format!("\n{line}\n").chars());
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn mangled_app_files_are_refused_cleanly_or_accepted() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut accepted = 0;
    let mut refused = 0;
    for fixture in ["design-sketch.toml", "full.toml"] {
        let original = std::fs::read_to_string(dir.join(fixture)).unwrap();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for i in 0..2500 {
            let text = mutate(&mut rng, &original);
            let lines = text.split('\n').count();
            match hoist_config::parse_str("hoist.toml", &text) {
                Ok(loaded) => {
                    accepted += 1;
                    assert_eq!(loaded.resolved_hash.len(), 64);
                }
                Err(e) => {
                    refused += 1;
                    let diagnostics = e.diagnostics();
                    assert!(
                        !diagnostics.is_empty(),
                        "{fixture} #{i}: refused without a diagnostic:\n{text}"
                    );
                    for d in diagnostics {
                        assert!(
                            d.line >= 1 && d.line <= lines,
                            "{fixture} #{i}: line {} of {lines}:\n{text}",
                            d.line
                        );
                        assert!(
                            d.column >= 1 && !d.message.is_empty(),
                            "{fixture} #{i}: {d:?}"
                        );
                        let _ = d.to_string();
                    }
                }
            }
        }
    }
    // Both outcomes must occur, or the mutations are not exercising anything.
    assert!(
        accepted > 0 && refused > 0,
        "accepted {accepted}, refused {refused}"
    );
}
