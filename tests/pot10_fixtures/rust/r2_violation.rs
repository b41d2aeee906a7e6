//! R2 violation: one loop without a visible bound.

pub fn serve(rx: &std::sync::mpsc::Receiver<u32>) -> u32 {
    let mut handled = 0;
    loop {
        match rx.recv() {
            Ok(_) => handled += 1,
            Err(_) => break,
        }
    }
    handled
}
