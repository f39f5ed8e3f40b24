//! `restartable`: what this machine offers for rseq, stress tests of the
//! per-CPU operations, and benchmarks against the alternatives.

mod allocator;
mod bench;
mod cpus;
mod info;
mod output;
mod parse;
mod signals;
mod stress;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// The command runs on the project's own allocator, so every stress run and
/// benchmark exercises it too (`RESTARTABLE_CLI_ALLOCATOR=system`: glibc's).
#[global_allocator]
static GLOBAL: allocator::Chosen = allocator::Chosen;

#[derive(Parser)]
#[command(
    name = "restartable",
    version,
    about = "Linux restartable sequences (rseq): inspect, stress-test, benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report what this machine supports: kernel, libc, registration, CPU ids.
    Info {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark per-CPU operations against their alternatives.
    Bench {
        #[command(subcommand)]
        what: bench::What,
    },
    /// Stress-test an operation under preemption, yields and a signal storm,
    /// and verify the result exactly; without a mode, every mode briefly.
    Stress(stress::Options),
}

/// Lets every option of every subcommand take a negative number as its
/// value, so that `--threads -1` is answered with the option's range
/// rather than "unexpected argument '-1'".
fn negative_numbers_are_values(cmd: clap::Command) -> clap::Command {
    cmd.allow_negative_numbers(true)
        .mut_subcommands(negative_numbers_are_values)
}

fn main() -> ExitCode {
    signals::default_sigpipe();
    output::exit_cleanly_on_write_errors();
    let matches = negative_numbers_are_values(Cli::command()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Info { json } => info::run(json),
        Command::Bench { what } => bench::run(what),
        Command::Stress(opts) => stress::run(opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("restartable: {message}");
            ExitCode::FAILURE
        }
    }
}
