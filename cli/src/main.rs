//! The `glassbox` command. All logic lives in the library; this only parses and exits.

// Verification and benchmarks allocate many small JSON values; mimalloc is
// markedly faster than glibc malloc at that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    glassbox_cli::main()
}
