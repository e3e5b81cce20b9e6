fn main() {
    std::process::exit(regate::cli::main());
}
