// The NCCL transport's protocol (counts first, tags, deadlines, abort, rebuild) against the fake of
// NCCL: every simulated worker runs on its own thread with its own FakeNcclApi over one hub.
#include "common/transport/nccl/nccl_transport.h"

#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/transport/nccl/fake_nccl_api.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe::transport {
namespace {

using ::testing::HasSubstr;

MessageTag Tag(int32_t sender, uint64_t step, uint32_t layer = 0, MessageKind kind = MessageKind::kDispatch) {
  return MessageTag{kind, step, layer, 0, sender};
}

std::vector<std::byte> Pattern(int32_t from, int32_t to, size_t n) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>((from * 31 + to * 7 + i) & 0xff);
  return out;
}

void OnThreads(size_t n, const std::function<void(size_t)>& body) {
  std::vector<std::thread> threads;
  for (size_t i = 0; i < n; ++i) threads.emplace_back(body, i);
  for (auto& t : threads) t.join();
}

// Workers with data-plane peer ids 10, 20, 30, ... (not their NCCL ranks, to exercise the map).
class NcclTransportTest : public ::testing::Test {
 protected:
  void MakeWorkers(size_t n, NcclTransportOptions options = {}) {
    for (size_t i = 0; i < n; ++i) AddWorker(options);
  }
  size_t AddWorker(NcclTransportOptions options = {}) {
    apis_.push_back(std::make_unique<FakeNcclApi>(&hub_));
    const auto peer = static_cast<int32_t>(10 * (workers_.size() + 1));
    workers_.push_back(std::make_unique<NcclTransport>(peer, apis_.back().get(), options));
    return workers_.size() - 1;
  }
  // A bootstrap over the given workers (all of them by default) with a fresh unique id.
  NcclBootstrap Bootstrap(uint64_t generation, std::vector<size_t> members = {}) {
    if (members.empty()) {
      for (size_t i = 0; i < workers_.size(); ++i) members.push_back(i);
    }
    NcclBootstrap b;
    b.generation = generation;
    for (size_t i : members) b.peers.push_back(workers_[i]->self());
    FakeNcclApi api(&hub_);
    EXPECT_EQ(api.GetUniqueId(&b.unique_id), NcclResult::kSuccess);
    return b;
  }
  // Every listed worker joins concurrently (a join completes only when all ranks have joined).
  void JoinAll(const NcclBootstrap& b, std::vector<size_t> members = {}) {
    if (members.empty()) {
      for (size_t i = 0; i < workers_.size(); ++i) members.push_back(i);
    }
    std::vector<absl::Status> st(members.size());
    OnThreads(members.size(),
              [&](size_t k) { st[k] = workers_[members[k]]->Rebuild(b, absl::Now() + absl::Seconds(10)); });
    for (const auto& s : st) ASSERT_TRUE(s.ok()) << s;
  }
  int32_t Peer(size_t i) const { return workers_[i]->self(); }

  // One all-to-all round among `members` at `step`; the payload from a to b has size(a, b) bytes.
  // Returns each member's status and checks every payload that arrived.
  std::vector<absl::Status> AllToAll(const std::vector<size_t>& members, uint64_t step,
                                     const std::function<size_t(size_t, size_t)>& size,
                                     absl::Duration timeout = absl::Seconds(10)) {
    std::vector<absl::Status> st(members.size());
    OnThreads(members.size(), [&](size_t k) {
      const size_t me = members[k];
      std::vector<std::vector<std::byte>> payloads;
      std::vector<NcclTransport::OutgoingMessage> sends;
      std::vector<NcclTransport::ExpectedMessage> expect;
      for (size_t other : members) {
        if (other == me) continue;
        payloads.push_back(Pattern(Peer(me), Peer(other), size(me, other)));
      }
      size_t p = 0;
      for (size_t other : members) {
        if (other == me) continue;
        sends.push_back({Peer(other), Tag(Peer(me), step), payloads[p++]});
        expect.push_back({Peer(other), Tag(Peer(other), step)});
      }
      auto got = workers_[me]->Exchange(sends, expect, absl::Now() + timeout);
      st[k] = got.status();
      if (!got.ok()) return;
      for (size_t j = 0; j < expect.size(); ++j) {
        const int32_t from = expect[j].peer;
        size_t from_index = static_cast<size_t>(from / 10 - 1);
        EXPECT_EQ((*got)[j].tag, expect[j].tag);
        EXPECT_EQ((*got)[j].payload, Pattern(from, Peer(me), size(from_index, me))) << "from " << from;
      }
    });
    return st;
  }

  FakeNcclHub hub_;
  std::vector<std::unique_ptr<FakeNcclApi>> apis_;
  std::vector<std::unique_ptr<NcclTransport>> workers_;
};

TEST_F(NcclTransportTest, TwoRanksRoundTrip) {
  MakeWorkers(2);
  JoinAll(Bootstrap(1));
  for (uint64_t step = 1; step <= 3; ++step) {
    for (const auto& s : AllToAll({0, 1}, step, [](size_t, size_t) { return 1000; }))
      EXPECT_TRUE(s.ok()) << s;
  }
  EXPECT_EQ(hub_.pending_operations(), 0);
  EXPECT_EQ(hub_.aborts(), 0);
}

TEST_F(NcclTransportTest, FourRanksUnequalAndEmptyMessages) {
  MakeWorkers(4);
  JoinAll(Bootstrap(1));
  // Sizes differ per pair, and some are empty (no payload operation is posted for those).
  auto size = [](size_t from, size_t to) -> size_t {
    return (from + 2 * to) % 3 == 0 ? 0 : 100 * from + 7 * to + 1;
  };
  for (const auto& s : AllToAll({0, 1, 2, 3}, 1, size)) EXPECT_TRUE(s.ok()) << s;
  for (const auto& s : AllToAll({0, 1, 2, 3}, 2, [](size_t, size_t) { return 0; })) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(hub_.pending_operations(), 0);
}

TEST_F(NcclTransportTest, SeveralMessagesToOnePeerPairUpInOrder) {
  MakeWorkers(2);
  JoinAll(Bootstrap(1));
  const auto a = Pattern(1, 2, 10), b = Pattern(3, 4, 300);
  std::vector<NcclTransport::OutgoingMessage> sends = {{Peer(1), Tag(Peer(0), 5, 0), a},
                                                       {Peer(1), Tag(Peer(0), 5, 1), b}};
  std::vector<NcclTransport::ExpectedMessage> expect = {{Peer(0), Tag(Peer(0), 5, 0)},
                                                        {Peer(0), Tag(Peer(0), 5, 1)}};
  absl::StatusOr<std::vector<Message>> got;
  absl::Status sent;
  OnThreads(2, [&](size_t k) {
    if (k == 0) sent = workers_[0]->Exchange(sends, {}, absl::Now() + absl::Seconds(10)).status();
    if (k == 1) got = workers_[1]->Exchange({}, expect, absl::Now() + absl::Seconds(10));
  });
  ASSERT_TRUE(sent.ok()) << sent;
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)[0].payload, a);
  EXPECT_EQ((*got)[1].payload, b);
}

TEST_F(NcclTransportTest, ActivationTransportSeamSendAndReceiveTagged) {
  MakeWorkers(2);
  JoinAll(Bootstrap(1));
  ActivationTransport& a = *workers_[0];
  ActivationTransport& b = *workers_[1];
  const auto payload = Pattern(0, 1, 64);
  absl::Status sent;
  absl::StatusOr<Message> got;
  OnThreads(2, [&](size_t k) {
    if (k == 0) sent = a.Send(b.self(), Tag(a.self(), 9, 2, MessageKind::kCombine), payload);
    if (k == 1)
      got = b.ReceiveTagged(Tag(a.self(), 9, 2, MessageKind::kCombine), absl::Now() + absl::Seconds(10));
  });
  ASSERT_TRUE(sent.ok()) << sent;
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->payload, payload);
  EXPECT_EQ(got->tag.kind, MessageKind::kCombine);
  auto any = b.ReceiveAny(absl::Now() + absl::Seconds(1));
  EXPECT_EQ(any.status().code(), absl::StatusCode::kUnimplemented);
  // The seam's contract: a send to a peer outside the communicator is UNAVAILABLE.
  EXPECT_EQ(a.Send(99, Tag(a.self(), 1), payload).code(), absl::StatusCode::kUnavailable);
}

TEST_F(NcclTransportTest, TagMismatchIsInternalAndTheCommunicatorStaysInStep) {
  MakeWorkers(2);
  JoinAll(Bootstrap(1));
  const auto payload = Pattern(0, 1, 50);
  absl::Status sent;
  absl::StatusOr<std::vector<Message>> got;
  OnThreads(2, [&](size_t k) {
    if (k == 0) {
      std::vector<NcclTransport::OutgoingMessage> sends = {{Peer(1), Tag(Peer(0), 4, 3), payload}};
      sent = workers_[0]->Exchange(sends, {}, absl::Now() + absl::Seconds(10)).status();
    } else {
      std::vector<NcclTransport::ExpectedMessage> expect = {{Peer(0), Tag(Peer(0), 5, 3)}};
      got = workers_[1]->Exchange({}, expect, absl::Now() + absl::Seconds(10));
    }
  });
  EXPECT_TRUE(sent.ok()) << sent;
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(got.status().message(), HasSubstr("from peer 10: expected {kind=1 step=5"));
  EXPECT_THAT(got.status().message(), HasSubstr("got {kind=1 step=4"));
  EXPECT_EQ(workers_[1]->dropped_messages(), 1u);
  EXPECT_EQ(workers_[1]->drop_counts()[static_cast<int>(DropReason::kStepWindow)], 1u);
  // The stale payload was drained: the next round works without a rebuild.
  EXPECT_TRUE(workers_[1]->connected());
  for (const auto& s : AllToAll({0, 1}, 6, [](size_t, size_t) { return 33; })) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(hub_.aborts(), 0);
}

TEST_F(NcclTransportTest, DeadPeerIsUnavailableWithinTheDeadlineAndAborts) {
  MakeWorkers(3);
  JoinAll(Bootstrap(1));
  // Worker 2 (peer 30) joined and then died: it never posts its side of the round.
  const absl::Duration timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  const auto st = AllToAll({0, 1}, 1, [](size_t, size_t) { return 8; });  // the survivors still talk
  for (const auto& s : st) ASSERT_TRUE(s.ok()) << s;
  std::vector<absl::Status> with_dead(2);
  OnThreads(2, [&](size_t k) {
    const auto payload = Pattern(Peer(k), 30, 16);
    std::vector<NcclTransport::OutgoingMessage> sends = {{Peer(2), Tag(Peer(k), 2), payload}};
    std::vector<NcclTransport::ExpectedMessage> expect = {{Peer(2), Tag(Peer(2), 2)}};
    with_dead[k] = workers_[k]->Exchange(sends, expect, absl::Now() + timeout).status();
  });
  const absl::Duration took = absl::Now() - start;
  for (const auto& s : with_dead) {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_THAT(s.message(), HasSubstr("counts stage: no completion with peer 30"));
  }
  EXPECT_LT(took, timeout + absl::Seconds(2));
  EXPECT_EQ(hub_.aborts(), 2);
  EXPECT_EQ(hub_.pending_operations(), 0);  // the survivors' posted operations went with the abort
  EXPECT_FALSE(workers_[0]->connected());
  auto again = workers_[0]->Exchange({}, {}, absl::Now() + absl::Seconds(1));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.status().message(), HasSubstr("Rebuild"));
  // Through the seam, a transport that reaches nobody is UNAVAILABLE.
  EXPECT_EQ(workers_[0]->Send(Peer(1), Tag(Peer(0), 3), Pattern(0, 1, 4)).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(workers_[0]->ReceiveTagged(Tag(Peer(1), 3), absl::Now()).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(NcclTransportTest, AnAsynchronousNcclErrorEndsTheWaitEarlyAndAborts) {
  MakeWorkers(2);
  const NcclBootstrap b = Bootstrap(1);
  JoinAll(b);
  absl::StatusOr<std::vector<Message>> got;
  const absl::Time start = absl::Now();
  std::thread waiter([&] {
    std::vector<NcclTransport::ExpectedMessage> expect = {{Peer(0), Tag(Peer(0), 1)}};
    got = workers_[1]->Exchange({}, expect, absl::Now() + absl::Seconds(30));
  });
  absl::SleepFor(absl::Milliseconds(50));
  ASSERT_TRUE(hub_.FailCommunicator(b.unique_id, 1, NcclResult::kRemoteError, "peer connection closed"));
  waiter.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));  // long before the round's 30 s deadline
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(got.status().message(), HasSubstr("counts stage with peer 10 failed: ncclRemoteError"));
  EXPECT_THAT(got.status().message(), HasSubstr("peer connection closed"));
  EXPECT_EQ(hub_.aborts(), 1);
  EXPECT_FALSE(workers_[1]->connected());
}

TEST_F(NcclTransportTest, RebuildAfterAWorkerRestartsKeepsTheSurvivors) {
  MakeWorkers(3);
  JoinAll(Bootstrap(1));
  for (const auto& s : AllToAll({0, 1, 2}, 1, [](size_t, size_t) { return 64; })) ASSERT_TRUE(s.ok()) << s;

  // Worker 2 dies; the survivors' next round with it times out and aborts.
  workers_[2].reset();
  std::vector<absl::Status> failed(2);
  OnThreads(2, [&](size_t k) {
    std::vector<NcclTransport::ExpectedMessage> expect = {{30, Tag(30, 3)}};
    failed[k] = workers_[k]->Exchange({}, expect, absl::Now() + absl::Milliseconds(200)).status();
  });
  for (const auto& s : failed) EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;

  // It restarts as a new process (a new transport, same peer id) and everyone joins generation 2.
  apis_.push_back(std::make_unique<FakeNcclApi>(&hub_));
  workers_[2] = std::make_unique<NcclTransport>(30, apis_.back().get());
  const NcclBootstrap next = Bootstrap(2);
  JoinAll(next);
  EXPECT_EQ(workers_[0]->generation(), 2u);
  for (const auto& s : AllToAll({0, 1, 2}, 4, [](size_t a, size_t b) { return 10 * a + b; })) {
    EXPECT_TRUE(s.ok()) << s;
  }
  // A stale bootstrap (same or older generation) is refused.
  EXPECT_EQ(workers_[0]->Rebuild(next, absl::Now() + absl::Seconds(1)).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(NcclTransportTest, RebuildWithoutEveryPeerIsUnavailableAtTheDeadline) {
  MakeWorkers(3);
  const NcclBootstrap b = Bootstrap(1);
  std::vector<absl::Status> st(2);
  const absl::Time start = absl::Now();
  OnThreads(2, [&](size_t k) { st[k] = workers_[k]->Rebuild(b, absl::Now() + absl::Milliseconds(200)); });
  for (const auto& s : st) {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_THAT(s.message(), HasSubstr("not every peer of 10,20,30 joined"));
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_FALSE(workers_[0]->connected());
  EXPECT_EQ(hub_.aborts(), 2);
  // A new bootstrap with everyone works.
  JoinAll(Bootstrap(2));
  for (const auto& s : AllToAll({0, 1, 2}, 1, [](size_t, size_t) { return 5; })) EXPECT_TRUE(s.ok()) << s;
}

TEST_F(NcclTransportTest, OversizedAnnouncedCountAbortsTheReceiver) {
  NcclTransportOptions big;
  big.max_message_bytes = 1 << 20;
  NcclTransportOptions small;
  small.max_message_bytes = 1 << 10;
  AddWorker(big);
  AddWorker(small);
  JoinAll(Bootstrap(1));
  const auto payload = Pattern(0, 1, 4096);
  absl::Status sent;
  absl::StatusOr<std::vector<Message>> got;
  OnThreads(2, [&](size_t k) {
    if (k == 0) {
      std::vector<NcclTransport::OutgoingMessage> sends = {{Peer(1), Tag(Peer(0), 1), payload}};
      sent = workers_[0]->Exchange(sends, {}, absl::Now() + absl::Milliseconds(300)).status();
    } else {
      std::vector<NcclTransport::ExpectedMessage> expect = {{Peer(0), Tag(Peer(0), 1)}};
      got = workers_[1]->Exchange({}, expect, absl::Now() + absl::Seconds(10));
    }
  });
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(got.status().message(), HasSubstr("peer 10 announced 4096 bytes"));
  EXPECT_THAT(got.status().message(), HasSubstr("max_message_bytes 1024"));
  EXPECT_EQ(workers_[1]->drop_counts()[static_cast<int>(DropReason::kTooLarge)], 1u);
  EXPECT_FALSE(workers_[1]->connected());
  // The sender's payload is never received: it times out and aborts too.
  EXPECT_EQ(sent.code(), absl::StatusCode::kUnavailable) << sent;
  EXPECT_THAT(sent.message(), HasSubstr("payload stage: no completion with peer 20"));
}

TEST_F(NcclTransportTest, DevicePayloadsLandInPrePostedBuffers) {
  MakeWorkers(2);
  JoinAll(Bootstrap(1));
  FakeNcclApi& api0 = *apis_[0];
  FakeNcclApi& api1 = *apis_[1];
  const auto payload = Pattern(0, 1, 200);
  void* src = *api0.AllocBuffer(200);
  ASSERT_TRUE(api0.CopyToBuffer(src, payload.data(), payload.size()).ok());
  void* dst = *api1.AllocBuffer(256);
  absl::Status sent;
  absl::StatusOr<std::vector<size_t>> got;
  OnThreads(2, [&](size_t k) {
    if (k == 0) {
      std::vector<NcclTransport::DeviceSend> sends = {{Peer(1), Tag(Peer(0), 1), src, 200}};
      sent = workers_[0]->ExchangeDevice(sends, {}, absl::Now() + absl::Seconds(10)).status();
    } else {
      std::vector<NcclTransport::DeviceReceive> expect = {{Peer(0), Tag(Peer(0), 1), dst, 256}};
      got = workers_[1]->ExchangeDevice({}, expect, absl::Now() + absl::Seconds(10));
    }
  });
  ASSERT_TRUE(sent.ok()) << sent;
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(*got, std::vector<size_t>{200});
  std::vector<std::byte> back(200);
  ASSERT_TRUE(api1.CopyFromBuffer(back.data(), dst, 200).ok());
  EXPECT_EQ(back, payload);

  // A message larger than the pre-posted receive: RESOURCE_EXHAUSTED, and the receiver aborts.
  OnThreads(2, [&](size_t k) {
    if (k == 0) {
      std::vector<NcclTransport::DeviceSend> sends = {{Peer(1), Tag(Peer(0), 2), src, 200}};
      sent = workers_[0]->ExchangeDevice(sends, {}, absl::Now() + absl::Milliseconds(200)).status();
    } else {
      std::vector<NcclTransport::DeviceReceive> expect = {{Peer(0), Tag(Peer(0), 2), dst, 100}};
      got = workers_[1]->ExchangeDevice({}, expect, absl::Now() + absl::Seconds(10));
    }
  });
  EXPECT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(got.status().message(), HasSubstr("capacity 100"));
  EXPECT_EQ(sent.code(), absl::StatusCode::kUnavailable);
  api0.FreeBuffer(src);
  api1.FreeBuffer(dst);
}

TEST_F(NcclTransportTest, BadInputGetsAClearErrorBeforeAnythingIsPosted) {
  NcclTransportOptions options;
  options.max_message_bytes = 100;
  MakeWorkers(2, options);
  // No communicator yet.
  auto none = workers_[0]->Exchange({}, {}, absl::Now() + absl::Seconds(1));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(none.status().message(), HasSubstr("call Rebuild"));
  // A bootstrap that does not list this worker.
  NcclBootstrap other = Bootstrap(1, {1});
  EXPECT_THAT(workers_[0]->Rebuild(other, absl::Now() + absl::Seconds(1)).message(),
              HasSubstr("bootstrap.peers: does not list this worker's peer id 10"));
  JoinAll(Bootstrap(1));

  const auto big = Pattern(0, 1, 101);
  const auto ok = Pattern(0, 1, 10);
  const absl::Time deadline = absl::Now() + absl::Seconds(1);
  std::vector<NcclTransport::OutgoingMessage> oversized = {{Peer(1), Tag(Peer(0), 1), ok},
                                                           {Peer(1), Tag(Peer(0), 1), big}};
  auto s1 = workers_[0]->Exchange(oversized, {}, deadline);
  EXPECT_EQ(s1.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s1.status().message(),
              HasSubstr("sends[1].payload: 101 bytes, more than max_message_bytes 100"));

  std::vector<NcclTransport::OutgoingMessage> unknown = {{77, Tag(Peer(0), 1), ok}};
  auto s2 = workers_[0]->Exchange(unknown, {}, deadline);
  EXPECT_EQ(s2.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s2.status().message(), HasSubstr("sends[0].peer: peer 77 is not in the NCCL communicator"));

  std::vector<NcclTransport::ExpectedMessage> unknown_from = {{77, Tag(77, 1)}};
  EXPECT_THAT(workers_[0]->Exchange({}, unknown_from, deadline).status().message(),
              HasSubstr("expect[0].peer: peer 77"));

  std::vector<NcclTransport::OutgoingMessage> forged = {{Peer(1), Tag(Peer(1), 1), ok}};
  EXPECT_THAT(workers_[0]->Exchange(forged, {}, deadline).status().message(),
              HasSubstr("sends[0].tag.sender: 20, but this worker is peer 10"));

  std::vector<NcclTransport::ExpectedMessage> wrong_sender = {{Peer(1), Tag(Peer(0), 1)}};
  EXPECT_THAT(workers_[0]->Exchange({}, wrong_sender, deadline).status().message(),
              HasSubstr("expect[0].tag.sender: 10, but the message is expected from peer 20"));

  std::vector<NcclTransport::DeviceReceive> null_buffer = {{Peer(1), Tag(Peer(1), 1), nullptr, 10}};
  EXPECT_THAT(workers_[0]->ExchangeDevice({}, null_buffer, deadline).status().message(),
              HasSubstr("expect[0].data: null with capacity 10"));

  // None of that posted anything or broke the communicator.
  EXPECT_EQ(hub_.pending_operations(), 0);
  EXPECT_TRUE(workers_[0]->connected());
  for (const auto& s : AllToAll({0, 1}, 1, [](size_t, size_t) { return 100; })) EXPECT_TRUE(s.ok()) << s;
}

TEST_F(NcclTransportTest, ShutdownWakesAWaitingRoundWithCancelled) {
  MakeWorkers(2);
  JoinAll(Bootstrap(1));
  absl::StatusOr<std::vector<Message>> got;
  std::thread waiter([&] {
    std::vector<NcclTransport::ExpectedMessage> expect = {{Peer(1), Tag(Peer(1), 1)}};
    got = workers_[0]->Exchange({}, expect, absl::Now() + absl::Seconds(30));
  });
  absl::SleepFor(absl::Milliseconds(50));
  const absl::Time start = absl::Now();
  workers_[0]->Shutdown();
  waiter.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(hub_.aborts(), 1);
  EXPECT_EQ(workers_[0]->Exchange({}, {}, absl::Now()).status().code(), absl::StatusCode::kCancelled);
}

// An expert worker waits for "the next dispatch from this attention worker", whatever its step.
TEST_F(NcclTransportTest, ReceiveFromAcceptsAnyStepOfTheKindAndReturnsTheTag) {
  MakeWorkers(2);
  JoinAll(Bootstrap(1));
  const auto payload = Pattern(0, 1, 48);
  absl::Status sent;
  absl::StatusOr<Message> got;
  OnThreads(2, [&](size_t k) {
    if (k == 0) sent = workers_[0]->Send(Peer(1), Tag(Peer(0), 77, 5), payload);
    if (k == 1)
      got = workers_[1]->ReceiveFrom(Peer(0), MessageKind::kDispatch, absl::Now() + absl::Seconds(10));
  });
  ASSERT_TRUE(sent.ok()) << sent;
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->tag, Tag(Peer(0), 77, 5));
  EXPECT_EQ(got->payload, payload);
  // Another kind is still a mismatch (INTERNAL), and the communicator stays in step.
  OnThreads(2, [&](size_t k) {
    if (k == 0) sent = workers_[0]->Send(Peer(1), Tag(Peer(0), 78, 0, MessageKind::kCombine), payload);
    if (k == 1)
      got = workers_[1]->ReceiveFrom(Peer(0), MessageKind::kDispatch, absl::Now() + absl::Seconds(10));
  });
  EXPECT_TRUE(sent.ok()) << sent;
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInternal) << got.status();
  EXPECT_TRUE(workers_[1]->connected());
  EXPECT_EQ(hub_.pending_operations(), 0);
}

// A receive without a deadline (an idle expert worker) is preempted by Interrupt(next generation),
// which holds for every round and join below that generation; its Rebuild proceeds.
TEST_F(NcclTransportTest, InterruptPreemptsAnIdleReceiveAndOlderJoinsUntilItsGeneration) {
  MakeWorkers(2);
  JoinAll(Bootstrap(1));
  absl::StatusOr<Message> got;
  std::thread waiter(
      [&] { got = workers_[1]->ReceiveFrom(Peer(0), MessageKind::kDispatch, absl::InfiniteFuture()); });
  absl::SleepFor(absl::Milliseconds(50));
  workers_[1]->Interrupt(2);
  waiter.join();
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr("interrupted"));
  EXPECT_FALSE(workers_[1]->connected());
  // Worker 0 was idle: its interrupt holds until it joins generation 2, so a round in between fails.
  workers_[0]->Interrupt(2);
  EXPECT_EQ(workers_[0]->ReceiveFrom(Peer(1), MessageKind::kDispatch, absl::InfiniteFuture()).status().code(),
            absl::StatusCode::kUnavailable);
  // A join of an older bootstrap than the one announced is given up at once.
  workers_[0]->Interrupt(3);
  EXPECT_EQ(workers_[0]->Rebuild(Bootstrap(2), absl::Now() + absl::Seconds(30)).code(),
            absl::StatusCode::kUnavailable);
  JoinAll(Bootstrap(3));
  for (const auto& s : AllToAll({0, 1}, 1, [](size_t, size_t) { return 100; })) EXPECT_TRUE(s.ok()) << s;
}

// Abort(generation, why) (the liveness watch lost a member): a round waiting on that peer with a
// long deadline gives up at once with `why`; an idle transport is aborted on the spot (later rounds
// say why); an Abort of an older generation changes nothing; the next generation joins as usual.
TEST_F(NcclTransportTest, AbortEndsAWaitingRoundAtOnceWithTheReason) {
  MakeWorkers(2);
  JoinAll(Bootstrap(1));
  JoinAll(Bootstrap(2));
  workers_[1]->Abort(1, "an older generation");
  EXPECT_TRUE(workers_[1]->connected());
  absl::StatusOr<std::vector<Message>> got;
  std::thread waiter([&] {
    std::vector<NcclTransport::ExpectedMessage> expect = {{Peer(1), Tag(Peer(1), 1)}};
    got = workers_[0]->Exchange({}, expect, absl::Now() + absl::Seconds(30));
  });
  absl::SleepFor(absl::Milliseconds(50));
  const absl::Time start = absl::Now();
  workers_[0]->Abort(2, "expert worker 7 lost");
  waiter.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr("expert worker 7 lost"));
  EXPECT_FALSE(workers_[0]->connected());
  EXPECT_EQ(hub_.pending_operations(), 0);
  // Idle: aborted at once; the seam's next call is UNAVAILABLE with the reason.
  workers_[1]->Abort(2, "attention worker gone");
  EXPECT_FALSE(workers_[1]->connected());
  const absl::Status next =
      workers_[1]->ReceiveTagged(Tag(Peer(0), 2), absl::Now() + absl::Seconds(30)).status();
  EXPECT_EQ(next.code(), absl::StatusCode::kUnavailable) << next;
  EXPECT_THAT(next.message(), HasSubstr("attention worker gone"));
  JoinAll(Bootstrap(3));
  for (const auto& s : AllToAll({0, 1}, 1, [](size_t, size_t) { return 100; })) EXPECT_TRUE(s.ok()) << s;
}

}  // namespace
}  // namespace moe::transport
