#include "services/router/api_keys.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/logging/logging.h"
#include "common/status/status_macros.h"

namespace moe::router {
namespace {

constexpr size_t kMinKeyBytes = 16;
constexpr size_t kMaxKeyBytes = 256;
constexpr size_t kMaxNameBytes = 64;
constexpr absl::Duration kReloadCheckInterval = absl::Seconds(1);

bool ValidKey(absl::string_view key) {
  if (key.size() < kMinKeyBytes || key.size() > kMaxKeyBytes) return false;
  for (char c : key) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

bool ValidName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxNameBytes) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::vector<ApiKey>> ParseApiKeys(absl::string_view contents) {
  std::vector<ApiKey> keys;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    ApiKey key;
    if (fields.size() == 1) {
      key = {absl::StrCat("key-", line_number), std::string(fields[0])};
    } else if (fields.size() == 2) {
      key = {std::string(fields[0]), std::string(fields[1])};
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "line ", line_number, ": expected `NAME KEY` or `KEY`, got ", fields.size(), " fields"));
    }
    if (!ValidName(key.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, ": the key name must be 1..64 characters of [A-Za-z0-9._-]"));
    }
    if (!ValidKey(key.key)) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_number, ": a key must be ", kMinKeyBytes,
                                                     "..", kMaxKeyBytes,
                                                     " printable characters without spaces"));
    }
    for (const ApiKey& other : keys) {
      if (other.name == key.name) {
        return absl::InvalidArgumentError(
            absl::StrCat("line ", line_number, ": the name ", key.name, " is used twice"));
      }
    }
    keys.push_back(std::move(key));
  }
  if (keys.empty()) return absl::InvalidArgumentError("no keys (every line is blank or a comment)");
  return keys;
}

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  // Walk all of b; fold the length difference in so that a prefix never matches.
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) {
    const unsigned char x = a.empty() ? 0 : static_cast<unsigned char>(a[i % a.size()]);
    diff = diff | (x ^ static_cast<unsigned char>(b[i]));
  }
  return diff == 0;
}

absl::StatusOr<std::unique_ptr<ApiKeyStore>> ApiKeyStore::Load(const std::string& path) {
  std::unique_ptr<ApiKeyStore> store(new ApiKeyStore(path));
  absl::MutexLock lock(&store->mu_);
  RETURN_IF_ERROR(store->ReadLocked());
  store->last_check_ = absl::Now();
  return store;
}

absl::StatusOr<ApiKeyStore::FileStamp> ApiKeyStore::Stamp() const {
  struct stat st {};
  if (stat(path_.c_str(), &st) != 0) {
    const int error = errno;
    const std::string message = absl::StrCat("--api_keys_file ", path_, ": ", std::strerror(error));
    return error == ENOENT ? absl::NotFoundError(message) : absl::PermissionDeniedError(message);
  }
  return FileStamp{static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
                   static_cast<int64_t>(st.st_size), st.st_ino};
}

absl::Status ApiKeyStore::ReadLocked() {
  ASSIGN_OR_RETURN(FileStamp stamp, Stamp());
  std::ifstream in(path_, std::ios::binary);
  if (!in) return absl::PermissionDeniedError(absl::StrCat("--api_keys_file ", path_, ": cannot be read"));
  std::ostringstream contents;
  contents << in.rdbuf();
  auto keys = ParseApiKeys(contents.str());
  if (!keys.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--api_keys_file ", path_, ": ", keys.status().message()));
  }
  keys_ = *std::move(keys);
  stamp_ = stamp;
  return absl::OkStatus();
}

void ApiKeyStore::ReloadIfChanged() {
  absl::MutexLock lock(&mu_);
  last_check_ = absl::Now();
  auto stamp = Stamp();
  if (stamp.ok() && *stamp == stamp_) return;
  const size_t before = keys_.size();
  if (absl::Status s = ReadLocked(); !s.ok()) {
    LOG(WARNING) << "API keys not reloaded, keeping the " << before << " loaded: " << s.message();
    stamp_ = stamp.ok() ? *stamp : FileStamp{};  // warn once per change, not on every check
    return;
  }
  LOG(INFO) << "API keys reloaded from " << path_ << ": " << keys_.size() << " key(s)";
}

size_t ApiKeyStore::num_keys() const {
  absl::MutexLock lock(&mu_);
  return keys_.size();
}

absl::StatusOr<std::string> ApiKeyStore::Authenticate(absl::string_view authorization) {
  bool check = false;
  {
    absl::MutexLock lock(&mu_);
    check = absl::Now() - last_check_ >= kReloadCheckInterval;
  }
  if (check) ReloadIfChanged();

  authorization = absl::StripAsciiWhitespace(authorization);
  if (authorization.empty()) {
    return absl::UnauthenticatedError("missing API key: send the header `authorization: Bearer <key>`");
  }
  constexpr absl::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size() || !absl::StartsWithIgnoreCase(authorization, kScheme)) {
    return absl::UnauthenticatedError("invalid authorization: expected `Bearer <key>`");
  }
  const absl::string_view presented = absl::StripLeadingAsciiWhitespace(authorization.substr(kScheme.size()));
  absl::MutexLock lock(&mu_);
  const ApiKey* match = nullptr;
  for (const ApiKey& key : keys_) {
    // Every key is compared, even after a match.
    if (ConstantTimeEquals(key.key, presented) && match == nullptr) match = &key;
  }
  if (match == nullptr) return absl::UnauthenticatedError("invalid API key");
  return match->name;
}

}  // namespace moe::router
