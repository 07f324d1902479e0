// `moectl generate --json` output, split into what the generation decides (each token's id and
// logprob, top logprobs included, and the whole text) and what its delivery decides (which token
// line a piece of text is printed on).
//
// Embedded mode prints each token's own text delta on its line. Through a router a line carries the
// text of the message the token arrived in, on its last token: an attention worker sends a stream's
// tokens that came while its previous message was still being written as one message
// (services/attention_worker/generate_stream.cc), so which lines hold the text depends on timing.
// Comparing whole lines with embedded mode therefore fails now and then although every token and
// the text are the same; compare TokenFacts and Text instead.
#ifndef MOE_TESTS_TOOLS_GENERATE_JSON_H_
#define MOE_TESTS_TOOLS_GENERATE_JSON_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace moe::testing {

struct GenerateJson {
  // One entry per token line (`{"id":...}`), in order: the line as compact JSON without its "text"
  // and "reasoning_text".
  std::vector<std::string> tokens;
  // The "text" of every line that has one (token lines and embedded mode's trailing text line),
  // concatenated; likewise "reasoning_text" (a router's thinking channel).
  std::string text;
  std::string reasoning_text;
};

// Parses the stdout of `moectl generate --json`. Lines that are not JSON objects (none are
// expected) are an INVALID_ARGUMENT naming the line.
absl::StatusOr<GenerateJson> ParseGenerateJson(std::string_view out);

// The index of the first token whose facts differ between `a` and `b` (a missing token counts), or
// -1 when all are the same.
int FirstTokenDifference(const GenerateJson& a, const GenerateJson& b);

}  // namespace moe::testing

#endif  // MOE_TESTS_TOOLS_GENERATE_JSON_H_
