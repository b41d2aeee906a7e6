//! CUDA caching-allocator memory statistics (peak allocated bytes), which
//! `tch` does not expose, through the C++ shim `csrc/cuda_memory.cpp`
//! compiled by build.rs against the libtorch headers.
//!
//! Used by `profile_memory` on CUDA devices. The shim catches every C++
//! exception and returns it as text, so a missing CUDA allocator (CPU-only
//! machine) is an ordinary error here.
use std::ffi::{c_char, c_int, CStr};

/// Byte counts of one device, aggregated over all pools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CudaMemoryStats {
    pub allocated_current: i64,
    pub allocated_peak: i64,
    pub reserved_current: i64,
    pub reserved_peak: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("CUDA allocator statistics for device {device} are unavailable: {message}")]
pub struct CudaMemoryError {
    pub device: i32,
    pub message: String,
}

#[cfg(bitnet_cuda_shim)]
extern "C" {
    fn bitnet_cuda_memory_stats(
        device: c_int,
        allocated_current: *mut i64,
        allocated_peak: *mut i64,
        reserved_current: *mut i64,
        reserved_peak: *mut i64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn bitnet_cuda_reset_peak(device: c_int, err: *mut c_char, err_len: usize) -> c_int;
}

fn error_text(buf: &[c_char]) -> String {
    // SAFETY: the shim always NUL-terminates what it writes, and the buffer
    // starts zeroed, so there is a NUL within `buf`.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Current and peak allocated/reserved bytes of CUDA device `device`.
pub fn stats(device: i32) -> Result<CudaMemoryStats, CudaMemoryError> {
    #[cfg(bitnet_cuda_shim)]
    {
        let mut s = CudaMemoryStats::default();
        let mut err: [c_char; 512] = [0; 512];
        // SAFETY: every pointer is to a live local of the declared type and
        // `err` holds `err.len()` bytes; the shim catches C++ exceptions.
        let rc = unsafe {
            bitnet_cuda_memory_stats(
                device as c_int,
                &mut s.allocated_current,
                &mut s.allocated_peak,
                &mut s.reserved_current,
                &mut s.reserved_peak,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc == 0 {
            Ok(s)
        } else {
            Err(CudaMemoryError {
                device,
                message: error_text(&err),
            })
        }
    }
    #[cfg(not(bitnet_cuda_shim))]
    {
        let _ = error_text;
        Err(CudaMemoryError {
            device,
            message: "this build has no CUDA memory shim (LIBTORCH was not set when building)"
                .into(),
        })
    }
}

/// Resets the peak counters of CUDA device `device` (CUDA must be initialised).
pub fn reset_peak(device: i32) -> Result<(), CudaMemoryError> {
    #[cfg(bitnet_cuda_shim)]
    {
        let mut err: [c_char; 512] = [0; 512];
        // SAFETY: `err` holds `err.len()` bytes; the shim catches C++ exceptions.
        let rc = unsafe { bitnet_cuda_reset_peak(device as c_int, err.as_mut_ptr(), err.len()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(CudaMemoryError {
                device,
                message: error_text(&err),
            })
        }
    }
    #[cfg(not(bitnet_cuda_shim))]
    {
        Err(CudaMemoryError {
            device,
            message: "this build has no CUDA memory shim (LIBTORCH was not set when building)"
                .into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shim links and turns the C++ failure (no CUDA allocator on a
    /// CPU-only machine) into an error instead of aborting.
    #[test]
    fn shim_answers_without_aborting() {
        if tch::Cuda::is_available() {
            let _ = tch::Tensor::ones([4], (tch::Kind::Float, tch::Device::Cuda(0)));
            reset_peak(0).unwrap();
            let s = stats(0).unwrap();
            assert!(s.allocated_peak >= s.allocated_current);
        } else {
            let e = stats(0).unwrap_err();
            assert!(!e.message.is_empty());
            assert!(reset_peak(0).is_err());
        }
    }
}
