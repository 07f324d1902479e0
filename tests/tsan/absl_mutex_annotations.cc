// ThreadSanitizer builds only (MOE_SANITIZE=thread): teaches TSan what absl::Mutex and absl::CondVar
// do. Debian's Abseil is a shared library built without -fsanitize=thread, so its lock words are
// atomics TSan never sees: every absl::Mutex-protected access would look like a race. This file
// interposes the public lock and wait entry points (the executable's definitions win over the
// library's, for the library's and gRPC's own calls too, as the TSan build links with -rdynamic),
// calls the real ones (dlsym RTLD_NEXT), and tells TSan about the happens-before edges:
// acquire(mu) after a lock is taken, release(mu) before it is let go. A Condition is evaluated
// under the lock, possibly inside the library before the lock call returns, so it is wrapped to
// acquire before and release after it. Linked first into every executable of the TSan build.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/base/options.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#if !ABSL_OPTION_USE_INLINE_NAMESPACE
#error "absl_mutex_annotations.cc expects Abseil with an inline namespace (mangled names below)"
#endif

#define MOE_TSAN_STR2(x) #x
#define MOE_TSAN_STR(x) MOE_TSAN_STR2(x)

namespace {

// The real function `rest` (mangled, after the absl::<inline namespace>:: prefix) in the next object.
template <typename Fn>
Fn Real(const char* rest) {
  const char* ns = MOE_TSAN_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  const std::string name = "_ZN4absl" + std::to_string(std::strlen(ns)) + ns + rest;
  void* fn = dlsym(RTLD_NEXT, name.c_str());
  if (fn == nullptr) {
    std::fprintf(stderr, "absl_mutex_annotations: no %s in the next object\n", name.c_str());
    std::abort();
  }
  return reinterpret_cast<Fn>(fn);
}

struct AcquiringCondition {
  const absl::Condition* cond;
  absl::Mutex* mu;
};
// The condition runs under the lock, inside the library: what it reads must be ordered after the
// last holder's release (acquire first), and before the next holder's writes, which the library
// lets in through its own unlock path when the condition is false (release after).
bool EvalAcquiring(AcquiringCondition* c) {
  __tsan_acquire(c->mu);
  const bool met = c->cond->Eval();
  __tsan_release(c->mu);
  return met;
}

// Abseil's lock-order (deadlock) detector keeps a graph under locks TSan cannot see; it is a
// debugging aid that the tests do not rely on, and off it costs nothing.
[[maybe_unused]] const bool kDeadlockDetectionOff = [] {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return true;
}();

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex4LockEv");
  real(this);
  __tsan_acquire(this);
}

void Mutex::Unlock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex6UnlockEv");
  __tsan_release(this);
  real(this);
}

bool Mutex::TryLock() {
  static const auto real = Real<bool (*)(Mutex*)>("5Mutex7TryLockEv");
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

void Mutex::ReaderLock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex10ReaderLockEv");
  real(this);
  __tsan_acquire(this);
}

void Mutex::ReaderUnlock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex12ReaderUnlockEv");
  __tsan_release(this);
  real(this);
}

bool Mutex::ReaderTryLock() {
  static const auto real = Real<bool (*)(Mutex*)>("5Mutex13ReaderTryLockEv");
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

void Mutex::LockWhen(const Condition& cond) {
  static const auto real = Real<void (*)(Mutex*, const Condition&)>("5Mutex8LockWhenERKNS0_9ConditionE");
  AcquiringCondition c{&cond, this};
  real(this, Condition(&EvalAcquiring, &c));
  __tsan_acquire(this);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, Duration)>(
      "5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  AcquiringCondition c{&cond, this};
  const bool met = real(this, Condition(&EvalAcquiring, &c), timeout);
  __tsan_acquire(this);
  return met;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, Time)>(
      "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  AcquiringCondition c{&cond, this};
  const bool met = real(this, Condition(&EvalAcquiring, &c), deadline);
  __tsan_acquire(this);
  return met;
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  static const auto real =
      Real<void (*)(Mutex*, const Condition&)>("5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  AcquiringCondition c{&cond, this};
  real(this, Condition(&EvalAcquiring, &c));
  __tsan_acquire(this);
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, Duration)>(
      "5Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  AcquiringCondition c{&cond, this};
  const bool met = real(this, Condition(&EvalAcquiring, &c), timeout);
  __tsan_acquire(this);
  return met;
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, Time)>(
      "5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  AcquiringCondition c{&cond, this};
  const bool met = real(this, Condition(&EvalAcquiring, &c), deadline);
  __tsan_acquire(this);
  return met;
}

void Mutex::Await(const Condition& cond) {
  static const auto real = Real<void (*)(Mutex*, const Condition&)>("5Mutex5AwaitERKNS0_9ConditionE");
  AcquiringCondition c{&cond, this};
  __tsan_release(this);
  real(this, Condition(&EvalAcquiring, &c));
  __tsan_acquire(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, Duration)>(
      "5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  AcquiringCondition c{&cond, this};
  __tsan_release(this);
  const bool met = real(this, Condition(&EvalAcquiring, &c), timeout);
  __tsan_acquire(this);
  return met;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  static const auto real =
      Real<bool (*)(Mutex*, const Condition&, Time)>("5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  AcquiringCondition c{&cond, this};
  __tsan_release(this);
  const bool met = real(this, Condition(&EvalAcquiring, &c), deadline);
  __tsan_acquire(this);
  return met;
}

void CondVar::Wait(Mutex* mu) {
  static const auto real = Real<void (*)(CondVar*, Mutex*)>("7CondVar4WaitEPNS0_5MutexE");
  __tsan_release(mu);
  real(this, mu);
  __tsan_acquire(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  static const auto real =
      Real<bool (*)(CondVar*, Mutex*, Duration)>("7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  __tsan_release(mu);
  const bool timed_out = real(this, mu, timeout);
  __tsan_acquire(mu);
  return timed_out;
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  static const auto real =
      Real<bool (*)(CondVar*, Mutex*, Time)>("7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  __tsan_release(mu);
  const bool timed_out = real(this, mu, deadline);
  __tsan_acquire(mu);
  return timed_out;
}

ABSL_NAMESPACE_END
}  // namespace absl
