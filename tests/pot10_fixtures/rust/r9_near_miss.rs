//! R9 near miss: safe dereference of references; "unsafe" only in text.

/// Not `unsafe`: the word in a comment or string does not count.
pub fn read(r: &u32, b: &mut Box<u32>) -> u32 {
    let label = "unsafe";
    **b += *r;
    *r + label.len() as u32
}
