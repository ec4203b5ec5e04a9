//! The `glassbox` command, built inside this package so the end-to-end tests
//! can launch it (`glassbox mcp` over stdio) by `CARGO_BIN_EXE_…`: cargo only
//! exposes binaries of the package under test. Same entry point, same code.

fn main() -> std::process::ExitCode {
    glassbox_cli::main()
}
