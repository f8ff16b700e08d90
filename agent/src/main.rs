fn main() {
    // The shim's log driver and the container init are this same binary; both are decided
    // by argv before anything else runs.
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Some(dir) = skerry_agent::logs::driver_invocation(&args) {
        std::process::exit(skerry_agent::logs::driver_main(&dir));
    }
    if let Some(command) = skerry_agent::init::invocation(&args) {
        skerry_agent::init::run(command);
    }
}
