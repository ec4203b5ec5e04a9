//! The agent inside a session's sandbox (see the `glassbox_session_agent` library).

fn main() -> std::process::ExitCode {
    glassbox_session_agent::main()
}
