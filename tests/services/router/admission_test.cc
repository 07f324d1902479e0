#include "services/router/admission.h"

#include <memory>

#include "gtest/gtest.h"

namespace moe::router {
namespace {

class FakeRequest : public PendingRequest {
 public:
  explicit FakeRequest(absl::Time deadline) : deadline_(deadline) {}
  int64_t max_tokens() const override { return 10; }
  absl::Time deadline() const override { return deadline_; }
  bool OnPlaced(size_t) override { return true; }
  void OnExpired() override {}

 private:
  absl::Time deadline_;
};

std::shared_ptr<PendingRequest> Make(absl::Time deadline = absl::InfiniteFuture()) {
  return std::make_shared<FakeRequest>(deadline);
}

TEST(AdmissionQueueTest, RefusesBeyondBound) {
  AdmissionQueue q(2);
  EXPECT_TRUE(q.Push(Make()));
  EXPECT_TRUE(q.Push(Make()));
  EXPECT_FALSE(q.Push(Make()));
  EXPECT_EQ(q.size(), 2u);
  q.PopFront();
  EXPECT_TRUE(q.Push(Make()));
}

TEST(AdmissionQueueTest, IsFifoAndRemovesByIdentity) {
  AdmissionQueue q(3);
  auto a = Make(), b = Make(), c = Make();
  q.Push(a);
  q.Push(b);
  q.Push(c);
  EXPECT_TRUE(q.Remove(b.get()));
  EXPECT_FALSE(q.Remove(b.get()));
  EXPECT_EQ(q.PopFront(), a);
  EXPECT_EQ(q.PopFront(), c);
  EXPECT_EQ(q.PopFront(), nullptr);
}

TEST(AdmissionQueueTest, PopsExpiredInOrder) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  AdmissionQueue q(4);
  auto late = Make(t0 + absl::Seconds(10)), early1 = Make(t0), early2 = Make(t0 - absl::Seconds(1));
  q.Push(late);
  q.Push(early1);
  q.Push(early2);
  auto expired = q.PopExpired(t0);
  ASSERT_EQ(expired.size(), 2u);
  EXPECT_EQ(expired[0], early1);
  EXPECT_EQ(expired[1], early2);
  EXPECT_EQ(q.size(), 1u);
  EXPECT_EQ(q.front(), late);
}

}  // namespace
}  // namespace moe::router
