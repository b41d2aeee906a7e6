//! bf16 autocast on CUDA (see `csrc/autocast.cpp`): tch can switch autocast
//! on but not choose its dtype, which libtorch defaults to fp16 on CUDA.
use anyhow::{bail, Result};

#[cfg(bitnet_cuda_shim)]
extern "C" {
    fn bitnet_set_cuda_autocast_bf16() -> i32;
    fn bitnet_cuda_autocast_is_bf16() -> i32;
}

/// Makes CUDA autocast on this thread compute in bf16.
pub fn use_bf16_on_cuda() -> Result<()> {
    #[cfg(bitnet_cuda_shim)]
    {
        // SAFETY: plain C functions without arguments; they catch every
        // C++ exception themselves.
        let ok = unsafe { bitnet_set_cuda_autocast_bf16() } == 0
            && unsafe { bitnet_cuda_autocast_is_bf16() } == 1;
        if !ok {
            bail!("libtorch refused to set the CUDA autocast dtype to bf16");
        }
        Ok(())
    }
    #[cfg(not(bitnet_cuda_shim))]
    bail!("bf16 autocast is unavailable: bitnet-torch was built without the libtorch C++ shim (headers missing); set `autocast: false`")
}

#[cfg(test)]
mod tests {
    #[test]
    fn cuda_autocast_dtype_is_set_to_bf16() {
        // Setting the per-thread dtype works without a GPU.
        super::use_bf16_on_cuda().unwrap();
    }
}
