#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    secchan::cli::run()
}
