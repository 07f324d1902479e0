#include "services/router/stop_strings.h"

#include <algorithm>
#include <utility>

namespace moe::router {

StopStringMatcher::StopStringMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  // An empty stop string would match everywhere; validation rejects it, this keeps the class safe.
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

StopStringMatcher::Result StopStringMatcher::Push(std::string_view piece) {
  Result result;
  if (matched_) return result;
  held_.append(piece);
  if (stops_.empty()) {
    result.text = std::move(held_);
    held_.clear();
    return result;
  }
  // Earliest end, then longest. held_ never contains a complete match before this call, so every
  // match found here ends inside `piece`.
  size_t best_end = std::string::npos;
  size_t best_len = 0;
  size_t best_index = 0;
  for (size_t i = 0; i < stops_.size(); ++i) {
    const size_t pos = held_.find(stops_[i]);
    if (pos == std::string::npos) continue;
    const size_t end = pos + stops_[i].size();
    if (end < best_end || (end == best_end && stops_[i].size() > best_len)) {
      best_end = end;
      best_len = stops_[i].size();
      best_index = i;
    }
  }
  if (best_end != std::string::npos) {
    matched_ = true;
    result.text = held_.substr(0, best_end - best_len);
    result.matched = best_index;
    held_.clear();
    return result;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& stop : stops_) {
    const size_t max_len = std::min(stop.size() - 1, held_.size());
    for (size_t len = max_len; len > hold; --len) {
      if (std::string_view(held_).substr(held_.size() - len) == std::string_view(stop).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  result.text = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return result;
}

std::string StopStringMatcher::Flush() {
  std::string out = std::move(held_);
  held_.clear();
  return out;
}

}  // namespace moe::router
