// GPU tests: skip with the reason when no usable CUDA device is present, and device buffers.
#ifndef MOE_TESTS_COMMON_KERNELS_CUDA_DEVICE_PROBE_H_
#define MOE_TESTS_COMMON_KERNELS_CUDA_DEVICE_PROBE_H_

#include <cstddef>
#include <vector>

#include "absl/status/statusor.h"
#include "common/kernels/cuda/cuda_kernels.h"
#include "gtest/gtest.h"

namespace moe::kernels::cuda::testing {

// OK when cuda:0 exists; otherwise the reason (no driver, no device).
inline absl::Status ProbeDevice() {
  return CheckDevice(0, "gpu test");
}

// A device copy of a host vector, freed at scope exit.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    absl::StatusOr<void*> p = Malloc(std::max<size_t>(1, n) * sizeof(T), "a test buffer");
    EXPECT_TRUE(p.ok()) << p.status();
    ptr_ = p.ok() ? static_cast<T*>(*p) : nullptr;
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { Upload(host); }
  ~DeviceBuffer() { Free(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void Upload(const std::vector<T>& host) {
    EXPECT_TRUE(CopyToDevice(ptr_, host.data(), host.size() * sizeof(T), nullptr).ok());
    EXPECT_TRUE(Synchronize(nullptr).ok());
  }
  std::vector<T> Download() const {
    std::vector<T> host(n_);
    const absl::Status s = CopyToHost(host.data(), ptr_, n_ * sizeof(T), nullptr);
    EXPECT_TRUE(s.ok()) << s;
    return host;
  }
  T* get() const { return ptr_; }

 private:
  size_t n_;
  T* ptr_ = nullptr;
};

}  // namespace moe::kernels::cuda::testing

// In a TEST body: skips the test, with the reason, when there is no usable CUDA device.
#define MOE_REQUIRE_CUDA_DEVICE()                                                     \
  do {                                                                                \
    const ::absl::Status moe_probe_ = ::moe::kernels::cuda::testing::ProbeDevice();   \
    if (!moe_probe_.ok()) GTEST_SKIP() << "no CUDA device: " << moe_probe_.message(); \
    ASSERT_TRUE(::moe::kernels::cuda::SetDevice(0).ok());                             \
  } while (0)

#endif  // MOE_TESTS_COMMON_KERNELS_CUDA_DEVICE_PROBE_H_
