//! Element types for typed Rust access.

/// A plain-bytes element type with a NumPy dtype descriptor.
///
/// Implemented for the primitive numbers; implement it for your own `#[repr(C)]`
/// `bytemuck::Pod` structs to view structured arrays.
pub trait Element: bytemuck::Pod {
    /// The dtype descriptor stored in the array metadata (NumPy's `dtype.str`).
    fn dtype() -> String;
}

macro_rules! element {
    ($($t:ty => $d:expr),* $(,)?) => {
        $(impl Element for $t {
            fn dtype() -> String {
                $d.to_string()
            }
        })*
    };
}

element!(
    f32 => "<f4", f64 => "<f8",
    i8 => "|i1", i16 => "<i2", i32 => "<i4", i64 => "<i8",
    u8 => "|u1", u16 => "<u2", u32 => "<u4", u64 => "<u8",
);
