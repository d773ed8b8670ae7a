use clap::Parser;

fn main() {
    std::process::exit(cep::cli::run(cep::cli::Cli::parse()));
}
