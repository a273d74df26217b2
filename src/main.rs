fn main() -> std::process::ExitCode {
    sockherd::main()
}
