//! `glassbox-verify`: the auditor's standalone verifier (see the library docs).

use std::io::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = glassbox_verify::cli::run(&args);
    if !out.stdout.is_empty() {
        let _ = writeln!(std::io::stdout(), "{}", out.stdout);
    }
    if !out.stderr.is_empty() {
        let _ = writeln!(std::io::stderr(), "error: {}", out.stderr);
    }
    ExitCode::from(out.code)
}
