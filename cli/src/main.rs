//! The `glassbox` command. All logic lives in the library; this only parses and exits.

use clap::Parser as _;

// Verification and benchmarks allocate many small JSON values; mimalloc is
// markedly faster than glibc malloc at that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = glassbox_cli::Cli::parse();
    glassbox_cli::init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(glassbox_cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
