fn main() {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    let mut c = pot10::Config::for_paths(paths);
    c.run_clippy = false;
    let r = pot10::analyze(&c).unwrap();
    print!("{}", r.render_text());
}
