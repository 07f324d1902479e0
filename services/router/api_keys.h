// API keys for the router's public edge (gRPC Generation and the HTTP API, which forwards its
// Authorization header to the same check).
//
// The keys file has one key per line, `NAME KEY` (NAME labels the key in metrics and logs, never
// the key itself) or just `KEY` (then named key-<line number>); blank lines and lines starting
// with '#' are ignored. Keys are 16..256 printable ASCII characters without spaces; names
// 1..64 characters of [A-Za-z0-9._-]. A malformed file is refused whole, naming the line.
//
// A caller presents `authorization: Bearer KEY` (gRPC metadata, HTTP header). Every configured key
// is compared in constant time (no early exit on the first differing byte, and every key is
// compared), so timing says nothing about how much of a key was right.
//
// Reload: the file is re-read when its modification time, size or inode changes (checked at
// most once a second, on the calling thread of Authenticate — no thread of its own), which is how a
// Kubernetes Secret volume updates it. A reload that fails keeps the previous keys and logs why.
//
// Thread-safe.
#ifndef MOE_SERVICES_ROUTER_API_KEYS_H_
#define MOE_SERVICES_ROUTER_API_KEYS_H_

#include <sys/types.h>
#include <memory>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace moe::router {

struct ApiKey {
  std::string name;
  std::string key;
};

// Parses a keys file's contents (format above). INVALID_ARGUMENT naming the line otherwise; an
// empty key set is an error too (a router with --api_keys_file must not accept everyone).
absl::StatusOr<std::vector<ApiKey>> ParseApiKeys(absl::string_view contents);

// a == b over the whole of both, in time that depends only on the lengths.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

class ApiKeyStore {
 public:
  // Reads `path`. NOT_FOUND / PERMISSION_DENIED / INVALID_ARGUMENT naming the path.
  static absl::StatusOr<std::unique_ptr<ApiKeyStore>> Load(const std::string& path);

  // The name of the key `authorization` carries ("Bearer KEY", the scheme case-insensitive), or
  // UNAUTHENTICATED: "missing API key" / "invalid API key" (never echoing what was sent).
  absl::StatusOr<std::string> Authenticate(absl::string_view authorization);

  // Re-reads the file now if it changed (what Authenticate does at most once a second).
  void ReloadIfChanged();
  size_t num_keys() const;

 private:
  struct FileStamp {
    int64_t mtime_ns = 0;
    int64_t size = 0;
    ino_t inode = 0;
    bool operator==(const FileStamp&) const = default;
  };
  explicit ApiKeyStore(std::string path) : path_(std::move(path)) {}
  absl::StatusOr<FileStamp> Stamp() const;
  absl::Status ReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  mutable absl::Mutex mu_;
  std::vector<ApiKey> keys_ ABSL_GUARDED_BY(mu_);
  FileStamp stamp_ ABSL_GUARDED_BY(mu_);
  absl::Time last_check_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_API_KEYS_H_
