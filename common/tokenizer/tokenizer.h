// Qwen3 byte-level BPE tokenizer with the semantics of Hugging Face tokenizers for the Qwen3
// tokenizer.json (docs/numerics.md#tokenizer):
//   1. split on added tokens (literal, leftmost-longest; special or not, e.g. <think>),
//   2. NFC-normalize the text between them,
//   3. split with the pre-tokenizer regex (Isolated),
//   4. map bytes to the GPT-2 byte-level alphabet,
//   5. BPE by merge rank, 6. vocab lookup.
// No BOS/EOS is ever added.
#ifndef MOE_COMMON_TOKENIZER_TOKENIZER_H_
#define MOE_COMMON_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/tokenizer/pre_tokenizer.h"

namespace moe::tokenizer {

// Immutable after construction except for an internal BPE cache; every method is thread-safe.
class Tokenizer {
 public:
  // Parses a Hugging Face tokenizer.json holding a byte-level BPE model ("merges" as "a b" strings
  // or [a, b] pairs). INVALID_ARGUMENT for malformed JSON or an unsupported tokenizer (not BPE, a
  // merge whose parts or result are not in the vocab, a regex that does not compile, ...).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view tokenizer_json);

  // Reads <dir>/tokenizer.json. NOT_FOUND if it is missing; errors of FromJson otherwise.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromModelDir(const std::filesystem::path& dir);

  // Token ids of `text`, no special tokens added; added-token text in the input maps to its id.
  // INVALID_ARGUMENT if `text` is not valid UTF-8.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const;

  // Text of `ids`: token bytes concatenated and decoded as UTF-8 with errors="replace" (each
  // broken sequence becomes U+FFFD). Ids that are not valid (see IsValidId) are skipped, as Hugging
  // Face does; use ValidateIds first to reject them instead. `skip_special_tokens` drops only the
  // tokens marked special (<think>, <tool_call>, ... survive).
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // Appends the raw bytes of token `id` (not necessarily complete UTF-8) to `out`. Appends nothing
  // for an invalid id, or for a special token when `skip_special_tokens`.
  void AppendTokenBytes(int32_t id, bool skip_special_tokens, std::string* out) const;

  // One more than the largest id (vocab and added tokens): 151669 for Qwen3. Smaller than the
  // model's embedding rows (151936), whose extra rows have no token.
  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }

  // Id of a vocab token (byte-level form, e.g. "ĠHello") or of an added token's content.
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The vocab token string (byte-level form) or added token content of `id`; nullopt if invalid.
  std::optional<std::string_view> IdToToken(int32_t id) const;
  // True for added tokens marked "special": true. False for invalid ids.
  bool IsSpecial(int32_t id) const { return IsValidId(id) && special_[id]; }
  // True when `id` names a vocab or added token.
  bool IsValidId(int32_t id) const {
    return id >= 0 && id < vocab_size() && present_[static_cast<size_t>(id)];
  }
  // OK when every id is valid; INVALID_ARGUMENT naming the first bad id and its position otherwise.
  absl::Status ValidateIds(std::span<const int32_t> ids) const;

 private:
  struct AddedToken {
    std::string content;
    int32_t id;
  };
  struct Merge {
    int32_t rank;
    int32_t result_id;
  };

  Tokenizer() = default;
  absl::Status EncodeText(std::string_view text, std::vector<int32_t>* ids) const;
  void EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const;
  void Bpe(std::string_view piece, std::vector<int32_t>* ids) const;
  // Length of the longest added token starting at text[pos] (0 if none); its id in *id.
  size_t MatchAddedToken(std::string_view text, size_t pos, int32_t* id) const;

  static uint64_t PairKey(int32_t a, int32_t b) {
    return (uint64_t{static_cast<uint32_t>(a)} << 32) | static_cast<uint32_t>(b);
  }

  absl::flat_hash_map<std::string, int32_t> vocab_;  // byte-level token string -> id
  std::vector<std::string> tokens_;                  // id -> token string ("" for holes)
  std::vector<std::string> token_bytes_;             // id -> raw bytes the token decodes to
  std::vector<bool> present_;
  std::vector<bool> special_;
  std::vector<AddedToken> added_tokens_;  // longest first
  absl::flat_hash_map<std::string, int32_t> added_by_content_;
  bool added_first_byte_[256] = {};
  absl::flat_hash_map<uint64_t, Merge> merges_;  // PairKey(left id, right id) -> merge
  int32_t byte_token_id_[256] = {};
  bool nfc_ = false;
  std::unique_ptr<RegexSplitter> splitter_;

  // BPE results of pieces seen before: the same words recur constantly in text.
  mutable absl::Mutex cache_mutex_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mutex_);
};

}  // namespace moe::tokenizer

#endif  // MOE_COMMON_TOKENIZER_TOKENIZER_H_
