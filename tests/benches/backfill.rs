//! `cargo bench -p backfill-tests --bench backfill [-- --scale F --batches N
//! --workers N --empty-batches N --plan-batches N --repeat N --cases all|main|partitions|diff|console|swap]`: Backfill against hand-written
//! SQL, printed as a table with ratios (see `backfill_tests::bench`). Build the
//! binaries first: `cargo build --release --bins`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use backfill_tests::bench::{self, Cases, Options};
use std::process::ExitCode;

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .cloned()
        };
        let number = |name: &str, text: String| -> Result<i64, String> {
            text.replace('_', "")
                .parse()
                .map_err(|_| format!("{name}: {text:?} is not a whole number"))
        };
        match arg.as_str() {
            // What cargo passes to every bench target.
            "--bench" => {}
            "--scale" => {
                let text = value(arg)?;
                options.scale = text
                    .parse()
                    .map_err(|_| format!("--scale: {text:?} is not a number"))?;
            }
            "--batches" => options.batches = number(arg, value(arg)?)?,
            "--workers" => {
                options.workers = u16::try_from(number(arg, value(arg)?)?)
                    .map_err(|_| "--workers is out of range".to_owned())?;
            }
            "--empty-batches" => options.empty_batches = number(arg, value(arg)?)?,
            "--plan-batches" => options.plan_batches = number(arg, value(arg)?)?,
            "--cases" => {
                options.cases = match value(arg)?.as_str() {
                    "all" => Cases::All,
                    "main" => Cases::Main,
                    "partitions" => Cases::Partitions,
                    "diff" => Cases::Diff,
                    "console" => Cases::Console,
                    "swap" => Cases::Swap,
                    other => {
                        return Err(format!(
                            "--cases: {other:?}; use all, main (a to h), partitions (i), diff (j), console (k) or swap (l)"
                        ));
                    }
                };
            }
            "--repeat" => {
                options.repeat = usize::try_from(number(arg, value(arg)?)?)
                    .map_err(|_| "--repeat is out of range".to_owned())?;
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; use --scale, --batches, --workers, --empty-batches, --plan-batches, --repeat, --cases"
                ));
            }
        }
    }
    if options.scale <= 0.0
        || options.batches < 1
        || options.workers < 1
        || options.empty_batches < 1
        || options.plan_batches < 1
        || options.repeat < 1
    {
        return Err("every size must be positive".into());
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = bench::run(&options).await;
    print!("{}", report.render());
    ExitCode::SUCCESS
}
