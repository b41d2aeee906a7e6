// bf16 autocast on CUDA for `train`. tch's `autocast` only toggles autocast,
// whose CUDA dtype defaults to fp16; BitNet training (as in the b1.58 recipe)
// uses bf16, which needs no loss scaling. at::autocast's dtype is per thread,
// so the training thread calls this once before its loop. Exceptions are
// caught here: a C++ exception unwinding into Rust aborts the process.
#include <ATen/autocast_mode.h>

#include <exception>

extern "C" {

// Sets the CUDA autocast dtype to bf16 on this thread; 0 on success.
int bitnet_set_cuda_autocast_bf16() {
  try {
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    return 0;
  } catch (...) {
    return 1;
  }
}

// 1 when this thread's CUDA autocast dtype is bf16, 0 when not, -1 on error.
int bitnet_cuda_autocast_is_bf16() {
  try {
    return at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16 ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
