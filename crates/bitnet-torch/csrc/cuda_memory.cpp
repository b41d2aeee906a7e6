// CUDA caching-allocator statistics for `profile_memory` (tch exposes none).
//
// Calls c10::getDeviceAllocator(CUDA)->getDeviceStats / resetPeakStats from
// c10/core/CachingDeviceAllocator.h, which needs no CUDA headers: the CUDA
// allocator registers itself when libc10_cuda.so loads. Every entry point
// catches all C++ exceptions (a foreign exception unwinding into Rust aborts
// the process) and reports them as a message in `err` and a non-zero return.
#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>
#include <cstring>
#include <exception>

namespace {

void write_error(char* err, size_t err_len, const char* msg) {
  if (err == nullptr || err_len == 0) {
    return;
  }
  std::strncpy(err, msg, err_len - 1);
  err[err_len - 1] = '\0';
}

constexpr size_t kAggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);

}  // namespace

extern "C" {

// Fills the four byte counts of device `device`; 0 on success.
int bitnet_cuda_memory_stats(int device, int64_t* allocated_current, int64_t* allocated_peak,
                             int64_t* reserved_current, int64_t* reserved_peak, char* err,
                             size_t err_len) {
  try {
    auto* alloc = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    auto stats = alloc->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    *allocated_current = stats.allocated_bytes[kAggregate].current;
    *allocated_peak = stats.allocated_bytes[kAggregate].peak;
    *reserved_current = stats.reserved_bytes[kAggregate].current;
    *reserved_peak = stats.reserved_bytes[kAggregate].peak;
    return 0;
  } catch (const std::exception& e) {
    write_error(err, err_len, e.what());
  } catch (...) {
    write_error(err, err_len, "unknown C++ exception");
  }
  return 1;
}

// Resets the peak counters of device `device` (call after CUDA is initialised); 0 on success.
int bitnet_cuda_reset_peak(int device, char* err, size_t err_len) {
  try {
    auto* alloc = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    alloc->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (const std::exception& e) {
    write_error(err, err_len, e.what());
  } catch (...) {
    write_error(err, err_len, "unknown C++ exception");
  }
  return 1;
}

}  // extern "C"
