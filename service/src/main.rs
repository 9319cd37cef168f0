//! berthd: the berth daemon (placeholder main while the daemon is built).
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("monitor") {
        berth_runtime::monitor::main_stdio();
    }
}
