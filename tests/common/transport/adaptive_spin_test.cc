// AdaptiveSpin's decisions, fed with wait durations by hand: no clock, no threads.
#include "common/transport/adaptive_spin.h"

#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace moe::transport {
namespace {

constexpr absl::Duration kUs = absl::Microseconds(1);

// Feeds `n` waits of `waited` that spun what the policy said, caught when they came within the
// spin (as a receiver would see them).
void Feed(AdaptiveSpin& policy, int n, absl::Duration waited) {
  for (int i = 0; i < n; ++i) {
    const absl::Duration spin = policy.NextSpin();
    policy.Record(spin, waited, spin > absl::ZeroDuration() && waited <= spin);
  }
}

TEST(AdaptiveSpinTest, FirstWaitSpinsTheCapThenSpinsAFewTimesTheRecentShortWaits) {
  const AdaptiveSpinConfig config;
  AdaptiveSpin policy(config);
  EXPECT_EQ(policy.NextSpin(), config.max_spin);
  Feed(policy, 40, 10 * kUs);
  // The estimate has converged on the waits (within the integer average's rounding).
  EXPECT_GE(policy.estimate(), 10 * kUs);
  EXPECT_LT(policy.estimate(), 10 * kUs + absl::Nanoseconds(config.history_weight));
  EXPECT_EQ(policy.NextSpin(), policy.estimate() * config.multiplier);
  EXPECT_GT(policy.NextSpin(), 10 * kUs);  // the next one, as long, is caught
}

TEST(AdaptiveSpinTest, SpinIsCappedAndHasAFloor) {
  const AdaptiveSpinConfig config;
  AdaptiveSpin slowish(config);
  // Waits below spin_below but longer than max_spin / multiplier: the spin is the cap, never more.
  const absl::Duration wait = config.spin_below - 10 * kUs;
  ASSERT_GT(wait * config.multiplier, config.max_spin);
  for (int i = 0; i < 60; ++i) {
    EXPECT_LE(slowish.NextSpin(), config.max_spin);
    slowish.Record(slowish.NextSpin(), wait, false);
    if (slowish.pause_left() > 0) break;
  }
  AdaptiveSpin capped(config);
  for (int i = 0; i < 60; ++i) {
    // Caught at the very end of each spin: never paused, always capped.
    const absl::Duration spin = capped.NextSpin();
    capped.Record(spin, wait, true);
  }
  EXPECT_EQ(capped.NextSpin(), config.max_spin);

  // Instant answers: the spin never drops below min_spin.
  AdaptiveSpin instant(config);
  Feed(instant, 60, absl::ZeroDuration());
  EXPECT_LT(instant.estimate(), absl::Nanoseconds(config.history_weight));
  EXPECT_EQ(instant.NextSpin(), config.min_spin);
}

TEST(AdaptiveSpinTest, LongWaitsStopTheSpinAndShortOnesBringItBack) {
  const AdaptiveSpinConfig config;
  AdaptiveSpin policy(config);
  Feed(policy, 20, 10 * kUs);
  ASSERT_GT(policy.NextSpin(), absl::ZeroDuration());
  // Waits much longer than spin_below (TCP, an expert computing): no spin after a few of them.
  int spun_while_long = 0;
  for (int i = 0; i < 20; ++i) {
    const absl::Duration spin = policy.NextSpin();
    if (spin > absl::ZeroDuration()) ++spun_while_long;
    policy.Record(spin, absl::Milliseconds(5), false);
  }
  EXPECT_LE(spun_while_long, 2);
  EXPECT_EQ(policy.NextSpin(), absl::ZeroDuration());
  EXPECT_GE(policy.estimate(), config.spin_below);

  // However long the waits were (clipped samples), a run of short ones brings the spin back
  // within a bounded number of waits.
  int waits_to_recover = 0;
  while (policy.NextSpin() == absl::ZeroDuration() && waits_to_recover < 100) {
    policy.Record(absl::ZeroDuration(), 10 * kUs, false);
    ++waits_to_recover;
  }
  EXPECT_GT(waits_to_recover, 0);
  EXPECT_LE(waits_to_recover, 20);
  EXPECT_GT(policy.NextSpin(), absl::ZeroDuration());
}

TEST(AdaptiveSpinTest, MissedSpinsPauseItWithAProbeAndADoublingPause) {
  AdaptiveSpinConfig config;
  config.failures_before_pause = 3;
  config.first_pause = 4;
  config.max_pause = 16;
  AdaptiveSpin policy(config);
  Feed(policy, 20, 10 * kUs);
  // Every wait still short (the estimate stays low) but each spin misses (a crowded machine).
  auto miss = [&policy] {
    const absl::Duration spin = policy.NextSpin();
    policy.Record(spin, 10 * kUs, false);
    return spin > absl::ZeroDuration();
  };
  EXPECT_TRUE(miss());
  EXPECT_TRUE(miss());
  EXPECT_TRUE(miss());  // the third miss in a row starts the pause
  ASSERT_EQ(policy.pause_left(), config.first_pause);
  std::vector<bool> spun;
  // Pauses of 4, 8, 16, 16 waits, each followed by one probe that misses.
  for (int i = 0; i < 4 + 1 + 8 + 1 + 16 + 1 + 16 + 1; ++i) spun.push_back(miss());
  std::vector<bool> expected;
  for (int pause : {4, 8, 16, 16}) {
    expected.insert(expected.end(), pause, false);
    expected.push_back(true);
  }
  EXPECT_EQ(spun, expected);

  // A probe that catches its message ends the cycle: spins every wait again, and the next pause
  // (after failures_before_pause misses) is the first one's length again.
  while (policy.NextSpin() == absl::ZeroDuration()) policy.Record(absl::ZeroDuration(), 10 * kUs, false);
  policy.Record(policy.NextSpin(), 10 * kUs, true);
  EXPECT_GT(policy.NextSpin(), absl::ZeroDuration());
  EXPECT_TRUE(miss());
  EXPECT_TRUE(miss());
  EXPECT_TRUE(miss());
  EXPECT_EQ(policy.pause_left(), config.first_pause);
}

TEST(AdaptiveSpinTest, TheSameHistoryGivesTheSameDecisions) {
  AdaptiveSpin a, b;
  const absl::Duration waits[] = {3 * kUs, 80 * kUs, absl::Milliseconds(2), 12 * kUs, 0 * kUs, 40 * kUs};
  for (int round = 0; round < 50; ++round) {
    const absl::Duration wait = waits[round % 6];
    const absl::Duration spin = a.NextSpin();
    ASSERT_EQ(spin, b.NextSpin()) << round;
    a.Record(spin, wait, round % 3 == 0);
    b.Record(spin, wait, round % 3 == 0);
    ASSERT_EQ(a.estimate(), b.estimate());
  }
}

TEST(AdaptiveSpinTest, ValidateNamesTheBadField) {
  EXPECT_TRUE(AdaptiveSpinConfig{}.Validate().ok());
  struct Case {
    const char* field;
    void (*spoil)(AdaptiveSpinConfig&);
  };
  const Case cases[] = {
      {"min_spin", [](AdaptiveSpinConfig& c) { c.min_spin = absl::ZeroDuration(); }},
      {"max_spin", [](AdaptiveSpinConfig& c) { c.max_spin = c.min_spin - kUs; }},
      {"spin_below", [](AdaptiveSpinConfig& c) { c.spin_below = -kUs; }},
      {"multiplier", [](AdaptiveSpinConfig& c) { c.multiplier = 0; }},
      {"history_weight", [](AdaptiveSpinConfig& c) { c.history_weight = 0; }},
      {"failures_before_pause", [](AdaptiveSpinConfig& c) { c.failures_before_pause = 0; }},
      {"first_pause", [](AdaptiveSpinConfig& c) { c.first_pause = 0; }},
      {"max_pause", [](AdaptiveSpinConfig& c) { c.max_pause = c.first_pause - 1; }},
  };
  for (const Case& c : cases) {
    AdaptiveSpinConfig config;
    c.spoil(config);
    const absl::Status status = config.Validate();
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << c.field;
    EXPECT_TRUE(absl::StrContains(status.message(), c.field)) << status;
  }
}

}  // namespace
}  // namespace moe::transport
