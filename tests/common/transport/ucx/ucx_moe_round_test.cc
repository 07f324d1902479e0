// An MoE round over UcxTransport: two attention endpoints dispatch encoded token rows
// (moe_message.h) to an expert endpoint running an ExpertShardServer-like loop, which answers each
// round with "expert outputs" (every value doubled, exact in bf16) in the same group order.
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "common/tensor/bf16.h"
#include "common/transport/moe_message.h"
#include "gtest/gtest.h"
#include "tests/common/transport/ucx/ucx_test_peers.h"

namespace moe::transport {
namespace {

constexpr int kExpert = 2;  // peer id of the expert endpoint; attention endpoints are 0 and 1
constexpr int64_t kHidden = 2048;
constexpr int kLayers = 4;

// Serves rounds until `rounds` have been answered: the shape of ExpertShardServer's loop.
absl::Status ServeRounds(UcxTransport& expert, int rounds) {
  for (int served = 0; served < rounds; ++served) {
    auto message = expert.ReceiveAny(absl::Now() + absl::Seconds(20));
    if (!message.ok()) return message.status();
    auto view = DecodeMoeMessage(message->payload);
    if (!view.ok()) return view.status();
    std::vector<std::byte> answer;
    bf16* out = EncodeMoeMessageHeader(view->hidden, view->groups, &answer);
    for (int64_t i = 0; i < view->total_rows * view->hidden; ++i) {
      out[i] = FloatToBF16(2.0f * BF16ToFloat(view->rows[i]));
    }
    MessageTag tag = message->tag;
    tag.kind = MessageKind::kCombine;
    tag.sender = expert.self();
    if (absl::Status s = expert.Send(message->tag.sender, tag, answer); !s.ok()) return s;
  }
  return absl::OkStatus();
}

float RowValue(int attention, int layer, int64_t row, int64_t col) {
  return static_cast<float>((attention * 7 + layer * 3 + row * 5 + col) % 64) * 0.25f;
}

TEST(UcxMoeRoundTest, ExpertEchoLoopAnswersEveryRoundInGroupOrder) {
  UcxOptions options;
  options.send_timeout = absl::Seconds(20);
  auto peers = testing::MakeConnectedPeers(3, options);
  ASSERT_TRUE(peers.ok()) << peers.status();
  absl::Status server_status;
  std::thread server([&] { server_status = ServeRounds(*(*peers)[kExpert], 2 * kLayers); });

  std::vector<std::string> errors(2);
  std::vector<std::thread> attention;
  for (int a = 0; a < 2; ++a) {
    attention.emplace_back([&, a] {
      UcxTransport& me = *(*peers)[a];
      // Tokens x 8 experts routed to two local experts of the expert worker, uneven groups.
      const std::vector<ExpertGroup> groups = {{5, 3 + a}, {17, 12}};
      const int64_t rows = groups[0].num_rows + groups[1].num_rows;
      for (int layer = 0; layer < kLayers; ++layer) {
        std::vector<std::byte> dispatch;
        bf16* in = EncodeMoeMessageHeader(kHidden, groups, &dispatch);
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = 0; c < kHidden; ++c) in[r * kHidden + c] = FloatToBF16(RowValue(a, layer, r, c));
        }
        const MessageTag tag{MessageKind::kDispatch, 11, static_cast<uint32_t>(layer), 1, a};
        if (absl::Status s = me.Send(kExpert, tag, dispatch); !s.ok()) {
          errors[a] += s.ToString();
          return;
        }
        const MessageTag want{MessageKind::kCombine, 11, static_cast<uint32_t>(layer), 1, kExpert};
        auto answer = me.ReceiveTagged(want, absl::Now() + absl::Seconds(20));
        if (!answer.ok()) {
          errors[a] += answer.status().ToString();
          return;
        }
        auto view = DecodeMoeMessage(answer->payload);
        if (!view.ok()) {
          errors[a] += view.status().ToString();
          return;
        }
        EXPECT_EQ(view->hidden, kHidden);
        ASSERT_EQ(view->groups.size(), 2u);
        EXPECT_EQ(view->groups[0].expert, 5);
        EXPECT_EQ(view->groups[0].num_rows, 3 + a);
        EXPECT_EQ(view->groups[1].expert, 17);
        EXPECT_EQ(view->groups[1].num_rows, 12);
        ASSERT_EQ(view->total_rows, rows);
        int64_t mismatches = 0;
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = 0; c < kHidden; ++c) {
            mismatches += BF16ToFloat(view->rows[r * kHidden + c]) != 2.0f * RowValue(a, layer, r, c);
          }
        }
        EXPECT_EQ(mismatches, 0) << "attention " << a << " layer " << layer;
      }
    });
  }
  for (auto& t : attention) t.join();
  server.join();
  EXPECT_TRUE(server_status.ok()) << server_status;
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
}

}  // namespace
}  // namespace moe::transport
