#![no_main]

use outcore_cli::npy::{header_bytes, read_header};

// The `.npy` header of `outcore import`: any bytes give a header or an error; a header that
// was read is written back exactly as NumPy would and must read back the same.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(h) = read_header(&mut &data[..]) {
        let bytes = header_bytes(&h.dtype, h.fortran_order, &h.shape);
        let back = read_header(&mut &bytes[..]).expect("a written header reads back");
        assert_eq!(back.dtype, h.dtype);
        assert_eq!(back.fortran_order, h.fortran_order);
        assert_eq!(back.shape, h.shape);
        assert_eq!(back.data_offset, bytes.len() as u64);
    }
});
