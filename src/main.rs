use clap::Parser;

fn main() {
    let cli = compox::cli::Cli::parse();
    std::process::exit(compox::cli::dispatch(cli));
}
