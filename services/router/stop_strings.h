// Stop strings over streamed text: text arrives in pieces (one per token) and a stop string may
// span pieces, so text that could still become the start of a stop string is held back.
#ifndef MOE_SERVICES_ROUTER_STOP_STRINGS_H_
#define MOE_SERVICES_ROUTER_STOP_STRINGS_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moe::router {

// Finds the first stop string in a stream of text pieces.
//
// "First" is the match that ends earliest in the stream (what a character-by-character reader would
// see first); among matches ending at the same byte, the longest. Hence the result never depends
// on how the text is cut into pieces. Stop strings must be non-empty; pieces should be valid UTF-8
// (then the held-back suffix always starts on a character boundary, because it equals the start of
// a stop string).
//
// Not thread-safe (one per stream).
class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stops);

  struct Result {
    // Text that can be emitted now: it precedes any possible match.
    std::string text;
    // Index into the stop list when a stop string matched; `text` then ends just before it.
    std::optional<size_t> matched;
  };

  // Feeds `piece`. After a match, further pieces are ignored (empty results).
  Result Push(std::string_view piece);

  // Returns the held-back text (no match can complete any more) and clears it.
  std::string Flush();

  bool matched() const { return matched_; }
  // Bytes currently held back.
  size_t held_bytes() const { return held_.size(); }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool matched_ = false;
};

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_STOP_STRINGS_H_
