// The real NCCL round trip: two ranks, one thread and one GPU each, through CudaNcclApi. NCCL
// refuses two ranks on one device, so this needs two GPUs and skips with fewer.
#include <thread>

#include "absl/time/clock.h"
#include "common/transport/nccl/cuda_nccl_api.h"
#include "common/transport/nccl/nccl_transport.h"
#include "gtest/gtest.h"

namespace moe::transport {
namespace {

TEST(NcclGpuTest, TwoRanksRoundTripOnTwoGpus) {
  const int devices = CudaDeviceCount();
  if (devices < 2) GTEST_SKIP() << "needs 2 CUDA devices, found " << devices;
  CudaNcclApi api0(0), api1(1);
  NcclTransport a(0, &api0), b(1, &api1);
  NcclBootstrap boot;
  boot.generation = 1;
  boot.peers = {0, 1};
  ASSERT_EQ(api0.GetUniqueId(&boot.unique_id), NcclResult::kSuccess);
  absl::Status join_a, join_b;
  std::thread tb([&] { join_b = b.Rebuild(boot, absl::Now() + absl::Seconds(60)); });
  join_a = a.Rebuild(boot, absl::Now() + absl::Seconds(60));
  tb.join();
  ASSERT_TRUE(join_a.ok()) << join_a;
  ASSERT_TRUE(join_b.ok()) << join_b;

  std::vector<std::byte> to_b(1 << 20), to_a(12345);
  for (size_t i = 0; i < to_b.size(); ++i) to_b[i] = static_cast<std::byte>(i * 13);
  for (size_t i = 0; i < to_a.size(); ++i) to_a[i] = static_cast<std::byte>(i * 5 + 1);
  const MessageTag from_a{MessageKind::kDispatch, 1, 0, 0, 0};
  const MessageTag from_b{MessageKind::kCombine, 1, 0, 0, 1};
  absl::StatusOr<std::vector<Message>> got_a, got_b;
  std::thread rb([&] {
    std::vector<NcclTransport::OutgoingMessage> sends = {{0, from_b, to_a}};
    std::vector<NcclTransport::ExpectedMessage> expect = {
        {0, from_a}, {0, MessageTag{MessageKind::kDispatch, 1, 1, 0, 0}}};
    got_b = b.Exchange(sends, expect, absl::Now() + absl::Seconds(30));
  });
  std::vector<NcclTransport::OutgoingMessage> sends = {
      {1, from_a, to_b}, {1, MessageTag{MessageKind::kDispatch, 1, 1, 0, 0}, {}}};
  std::vector<NcclTransport::ExpectedMessage> expect = {{1, from_b}};
  got_a = a.Exchange(sends, expect, absl::Now() + absl::Seconds(30));
  rb.join();
  ASSERT_TRUE(got_a.ok()) << got_a.status();
  ASSERT_TRUE(got_b.ok()) << got_b.status();
  EXPECT_EQ((*got_a)[0].payload, to_a);
  EXPECT_EQ((*got_b)[0].payload, to_b);
  EXPECT_TRUE((*got_b)[1].payload.empty());
}

}  // namespace
}  // namespace moe::transport
