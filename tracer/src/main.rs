use clap::Parser;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = match tracer::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line naming the problem; clap's usage hint stays out.
            let msg = e.to_string();
            let mut lines = msg.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut first = lines.next().unwrap_or("bad command line").to_string();
            // "the following required arguments were not provided:" names
            // them on the next line.
            if first.ends_with(':') {
                if let Some(next) = lines.next() {
                    first = format!("{first} {next}");
                }
            }
            // Keep clap's list of accepted values on the same line.
            let values = msg
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("[possible values"))
                .map(|l| format!(" {l}"))
                .unwrap_or_default();
            eprintln!("tracer: {}{values}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match tracer::cli::run(cli, started) {
        Ok(tracer::cli::Outcome::Done) => ExitCode::SUCCESS,
        Ok(tracer::cli::Outcome::FaultProven) => ExitCode::from(tracer::cli::EXIT_FAULT_PROVEN),
        Err(e) => {
            // One line: the context chain, no backtrace. Verifier logs
            // and the like span lines; fold them.
            let msg = format!("{e:#}");
            let one: Vec<&str> = msg
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            // A name in the message (an unknown interface's) may hold
            // control characters: escaped, as text output does.
            let one = one.join(" | ");
            eprintln!("tracer: error: {}", tracer::sinks::printable::escape(&one));
            ExitCode::FAILURE
        }
    }
}
